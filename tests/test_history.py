"""What a run records besides checkpoints: ``Trainer.history``, ``metrics.jsonl`` (across resumes,
crashes and torn lines), callbacks, and the per-step KL estimates. On the tiny random Llama of the
trainer tests."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_trainer import REPO, scalars, tiny_overrides

from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.contracts.registry import build
from gfnlm.evaluation.exact import ExactSetting, TabularPolicy, kl_divergence
from gfnlm.exploration import concat_rollouts
from gfnlm.objectives.fixed_points import lambda_star, tilted_log_distribution
from gfnlm.targets.alpha_power import AlphaPowerTarget
from gfnlm.training import checkpoint
from gfnlm.training.callbacks import Callback
from gfnlm.training.config import load_config
from gfnlm.training.kl_estimates import draws_from_policy, kl_metrics, learned_log_z_kind
from gfnlm.training.metrics_log import MetricsLog, read_records
from gfnlm.training.trainer import Trainer


class Recorder(Callback):
    """Counts every event; raises in ``on_step`` at ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.steps: list[int] = []
        self.evals: list[int] = []
        self.saves: list[tuple[int, Path]] = []
        self.fail_at = fail_at

    def on_step(self, trainer, step, metrics):
        assert trainer.history[-1] == {"step": step, **metrics}  # recorded before the callback
        self.steps.append(step)
        if step == self.fail_at:
            raise RuntimeError(f"stop at step {step}")

    def on_eval(self, trainer, step, results):
        self.evals.append(step)

    def on_save(self, trainer, step, path):
        assert (path / checkpoint.STATE_FILE).is_file()  # complete on disk before the call
        self.saves.append((step, path))


def jsonl(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def step_records(out_dir: Path) -> list[dict]:
    return [record for record in jsonl(out_dir) if "eval" not in record]


def same_record(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN (a metric can be NaN; JSON holds it as null)."""
    fix = lambda v: "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return {k: fix(v) for k, v in a.items()} == {k: fix(v) for k, v in b.items()}


def tiny_config(model_dir: Path, prompt_files, out_dir: Path, **extra: object):
    train, evaluation = prompt_files
    overrides = tiny_overrides(model_dir, train, evaluation, out_dir, **extra)
    return load_config(REPO / "configs/default.yaml", overrides)


# ------------------------------------------------------------------ history, JSONL, callbacks
def test_history_jsonl_and_tensorboard_agree_and_callbacks_see_every_event(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    recorder = Recorder()
    config = tiny_config(
        tiny_model_dir,
        prompt_files,
        tmp_path,
        **{"train.steps": 3, "train.eval_every": 2, "train.save_every": 2},
    )
    trainer = Trainer(config, progress=False, callbacks=[recorder])
    results = trainer.train()
    trainer.close()
    history = trainer.history
    assert results["history"] is history and results["after"] is not None
    assert [record["step"] for record in history] == [1, 2, 3]
    # TensorBoard got the same values (it stores float32)
    found = scalars(tmp_path / "tb")
    for key in ("loss", "length/mean", "grad_norm", "log_z"):
        logged = [(step, value) for step, value in found[f"train/{key}"]]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in history]
    # ... and so did the JSONL: every step once, in order, then the evaluations at 0, 2 and 3
    assert all(same_record(a, b) for a, b in zip(step_records(tmp_path), history, strict=True))
    evals = [record for record in jsonl(tmp_path) if "eval" in record]
    assert [record["step"] for record in evals] == [0, 2, 3]
    assert evals[0]["eval"] == pytest.approx(results["before"])
    assert evals[-1]["eval"] == pytest.approx(results["after"])
    assert recorder.steps == [1, 2, 3] and recorder.evals == [0, 2, 3]
    assert [(step, path.name) for step, path in recorder.saves] == [
        (2, "step_000002"),
        (3, "step_000003"),
    ]


def test_a_resumed_run_drops_what_was_logged_after_its_checkpoint(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """A callback's exception stops training at step 3 (the checkpoint of step 2 intact) after
    step 3 was logged; a kill then tears a last line. The resumed run drops both, carries on from
    step 2, and every log holds steps 1–4 once."""
    settings = {"train.steps": 4, "train.save_every": 2}
    config = tiny_config(tiny_model_dir, prompt_files, tmp_path, **settings)
    crashed = Trainer(config, progress=False, callbacks=[Recorder(fail_at=3)])
    with pytest.raises(RuntimeError, match="stop at step 3"):
        crashed.train()
    crashed.close()
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints").name == "step_000002"
    assert [r["step"] for r in step_records(tmp_path)] == [1, 2, 3]
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 4, "loss": 0.1')  # killed in mid-write

    recorder = Recorder()
    resumed = Trainer(config, progress=False, callbacks=[recorder])
    history = resumed.train()["history"]
    resumed.close()
    assert recorder.steps == [3, 4] and recorder.evals == [0, 4]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    # the steps before the checkpoint are read back as they were logged
    assert all(same_record(a, b) for a, b in zip(history[:2], crashed.history[:2], strict=True))
    assert all(same_record(a, b) for a, b in zip(step_records(tmp_path), history, strict=True))
    assert [r["step"] for r in jsonl(tmp_path) if "eval" in r] == [0, 4]
    losses = [value for _, value in scalars(tmp_path / "tb")["train/loss"]]
    assert losses == [pytest.approx(r["loss"], rel=1e-6) for r in history]


def test_bad_callbacks_are_a_one_line_error_before_the_model_loads(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gfnlm.training.policy import CausalLMPolicy

    monkeypatch.setattr(CausalLMPolicy, "from_config", None)  # loading would raise TypeError
    config = tiny_config(tiny_model_dir, prompt_files, tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks\[1\]=<object object at .*>: must be an"):
        Trainer(config, callbacks=[Callback(), object()])
    with pytest.raises(ConfigError, match=r"^callbacks=<.*Recorder.*>: must be a list"):
        Trainer(config, callbacks=Recorder())


# ------------------------------------------------------------------ the JSONL file itself
def test_a_torn_or_damaged_line_is_dropped_and_the_file_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 1.0}\n'
        "not json\n"
        '{"step": 2, "loss": null, "eval_like": 3}\n'
        '{"step": 2, "eval": {"accuracy_t1": 0.5}}\n'
        '{"step": 3, "loss": 0.'
    )
    records, dropped = read_records(path, up_to_step=10)
    assert dropped and [r["step"] for r in records] == [1, 2, 2]
    assert math.isnan(records[1]["loss"])  # null is read back as NaN
    assert "metrics.jsonl: line 2 is not a record; dropped" in capsys.readouterr().err
    log = MetricsLog(tmp_path)
    assert log.restore(up_to_step=1, writable=True) == records[:1]
    log.append({"step": 2, "loss": float("nan"), "length/mean": 4.0})
    log.close()
    assert path.read_text() == (
        '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": null, "length/mean": 4.0}\n'
    )
    assert read_records(path, up_to_step=10)[1] is False  # nothing left to repair


def test_an_intact_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    inode = path.stat().st_ino
    log = MetricsLog(tmp_path)
    assert [r["step"] for r in log.restore(up_to_step=2, writable=True)] == [1, 2]
    log.close()
    assert path.stat().st_ino == inode  # appended to in place, not replaced


def test_an_unwritable_metrics_log_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").mkdir()  # a folder where the file should be
    with pytest.raises(RunError, match=r"metrics\.jsonl: cannot read or write the metrics log \("):
        MetricsLog(tmp_path).restore(up_to_step=0, writable=True)


# ------------------------------------------------------------------ KL estimates
def exact_case(samples: int = 20_000):
    """A tabular policy π and base p_base on every response of length ≤ 4 over 4 tokens (341
    responses), ``samples`` responses drawn from π, and the α = 2 target's scores of them."""
    setting = ExactSetting(vocab_size=4, max_len=4)
    base = TabularPolicy.random(setting, seed=0)
    policy = TabularPolicy.random(setting, seed=1)
    rollouts = policy.sample(samples, generator=torch.Generator().manual_seed(0))
    scores = AlphaPowerTarget(alpha=2.0).score(rollouts, base.sequence_log_probs(rollouts))
    every = setting.enumerate_responses()
    exact = {
        "log_pi": policy.response_log_probs(every),
        "log_base": base.response_log_probs(every),
        "lengths": every.lengths.double(),
    }
    exact["log_r"] = 2.0 * exact["log_base"]
    return rollouts, scores, exact


def within_sampling_error(estimate: float, exact: float, per_sample: torch.Tensor) -> bool:
    """``estimate`` within 4 standard errors of ``exact`` (the per-sample values' spread)."""
    return abs(estimate - exact) < 4 * float(per_sample.std()) / per_sample.numel() ** 0.5


def test_the_estimates_match_the_exact_divergences_of_an_enumerable_model() -> None:
    """Against KL(π‖p_base), log Z − KL(π‖R/Z) and KL(π‖π*) summed over every response."""
    rollouts, scores, exact = exact_case()
    log_pi, log_base, log_r, lengths = (
        exact[k] for k in ("log_pi", "log_base", "log_r", "lengths")
    )
    log_z = float(torch.logsumexp(log_r, 0))
    star = lambda_star(log_r, lengths)
    sampled_pi = rollouts.behaviour_logp.sum(-1)
    sampled_base = scores.ref_token_logp.sum(-1)
    rows = rollouts.batch_size
    sequence = kl_metrics(rollouts, scores, rows, torch.full((rows,), log_z), "sequence")
    per_token = kl_metrics(rollouts, scores, rows, torch.full((rows,), star), "per_token")

    kl_base = kl_divergence(log_pi, log_base)
    assert within_sampling_error(sequence["kl/policy_base"], kl_base, sampled_pi - sampled_base)
    # the test tells the divergence from the reverse one
    assert not within_sampling_error(
        sequence["kl/policy_base"], kl_divergence(log_base, log_pi), sampled_pi - sampled_base
    )
    kl_target = kl_divergence(log_pi, log_r - log_z)
    elbo_terms = scores.log_reward - sampled_pi
    assert within_sampling_error(sequence["elbo"], log_z - kl_target, elbo_terms)
    assert within_sampling_error(sequence["elbo_gap"], kl_target, elbo_terms)
    kl_fixed_point = kl_divergence(log_pi, tilted_log_distribution(log_r, lengths, star))
    tilted_terms = rollouts.lengths * star - elbo_terms
    assert within_sampling_error(per_token["kl/policy_fixed_point"], kl_fixed_point, tilted_terms)
    assert abs(kl_fixed_point - kl_target) > 0.1  # two different divergences
    assert set(sequence) == {"elbo", "kl/policy_base", "elbo_gap"}
    assert set(per_token) == {"elbo", "kl/policy_base", "kl/policy_fixed_point"}


def test_replayed_rows_after_the_fresh_ones_are_left_out() -> None:
    rollouts, scores, _ = exact_case(samples=64)
    log_z = torch.linspace(-1.0, 1.0, 64)
    alone = kl_metrics(rollouts, scores, 64, log_z, "sequence")
    replayed = concat_rollouts([rollouts, rollouts.select(torch.arange(8))])
    mixed_scores = scores.select(torch.cat([torch.arange(64), torch.arange(8)]))
    mixed = kl_metrics(replayed, mixed_scores, 64, torch.cat([log_z, log_z[:8] + 5]), "sequence")
    assert mixed == alone
    assert (
        kl_metrics(replayed, mixed_scores, 72, torch.cat([log_z, log_z[:8]]))["elbo"]
        != (alone["elbo"])
    )


def test_which_runs_get_which_estimates() -> None:
    """A learned log Z means something for tb and la_tb (learned), nothing for la_tb's group
    mean; an exploration policy's or a power sampler's rollouts give no estimate."""
    group_mean = build("objective", "la_tb", {"log_z_source": "group_mean"})
    assert learned_log_z_kind(group_mean) is None
    assert learned_log_z_kind(build("objective", "la_tb", {})) == "per_token"
    assert learned_log_z_kind(build("objective", "tb", {})) == "sequence"
    assert learned_log_z_kind(build("objective", "db", {})) is None
    hf = build("sampler", "hf", {})
    assert draws_from_policy(hf, build("exploration", "none", {}))
    assert not draws_from_policy(hf, build("exploration", "tempered", {}))
    assert not draws_from_policy(build("sampler", "power_mh", {}), None)


def independent_log_probs(trainer: Trainer, rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """``log π(y|q)`` and ``log p_base(y|q)`` of each rollout by a full forward pass of the model
    with and without its adapter (not through the sampler's or the trainer's code)."""
    inputs = {
        "input_ids": torch.cat([rollouts.prompt_ids, rollouts.response_ids], 1),
        "attention_mask": torch.cat([rollouts.prompt_mask, rollouts.response_mask], 1).long(),
    }
    start = rollouts.prompt_ids.shape[1] - 1

    def sequence_logp(model) -> torch.Tensor:
        with torch.no_grad():
            logits = model(**inputs).logits[:, start:-1].double()
        chosen = logits.log_softmax(-1).gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
        return (chosen * rollouts.response_mask).sum(-1)

    log_pi = sequence_logp(trainer.policy.model)
    with trainer.policy.base_model() as base:
        log_base = sequence_logp(base)
    return log_pi, log_base


@pytest.mark.parametrize(("objective", "replay"), [("la_tb", "none"), ("tb", "reward_prioritised")])
def test_the_logged_estimates_equal_a_hand_computation(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, objective: str, replay: str
) -> None:
    """Each step's fresh rollouts are scored independently when drawn; with replay the batch also
    holds replayed rows, which the estimates leave out."""
    config = tiny_config(
        tiny_model_dir,
        prompt_files,
        tmp_path,
        **{
            "train.steps": 2,
            "data.eval": "''",
            "train.minibatch_size": 0,  # one minibatch: the loss's log Z is the pre-update one
            "train.lr": 0.1,
            "objective.name": objective,
            **({"objective.options.log_z_source": "learned"} if objective == "la_tb" else {}),
            "replay.name": replay,
            **({"replay.options.ratio": 1.0} if replay != "none" else {}),
        },
    )
    trainer = Trainer(config, progress=False)
    alpha = trainer.components.target.alpha
    drawn = []
    draw = trainer.rollouts.draw

    def draw_and_score(*args):
        rollouts = draw(*args)
        log_pi, log_base = independent_log_probs(trainer, rollouts)
        log_z = float(trainer.logz(rollouts.prompt_index)[0].detach())
        drawn.append((rollouts, log_pi, log_base, log_z))
        return rollouts

    trainer.rollouts.draw = draw_and_score
    history = trainer.train()["history"]
    trainer.close()
    assert len(drawn) == 2 and len(history) == 2
    if replay != "none":
        assert history[1]["replay/share"] > 0  # the second batch held replayed rows
    for (rollouts, log_pi, log_base, log_z), logged in zip(drawn, history, strict=True):
        log_r = alpha * log_base
        assert logged["kl/policy_base"] == pytest.approx(
            float((log_pi - log_base).mean()), abs=1e-3
        )
        assert logged["elbo"] == pytest.approx(float((log_r - log_pi).mean()), abs=1e-3)
    rollouts, log_pi, log_base, log_z = drawn[1]  # step 1's log Z moves in its warm start
    log_r = alpha * log_base
    if objective == "tb":
        expected = float((log_z + log_pi - log_r).mean())
        assert history[1]["elbo_gap"] == pytest.approx(expected, abs=1e-3)
    else:
        expected = float((rollouts.lengths * log_z + log_pi - log_r).mean())
        assert history[1]["kl/policy_fixed_point"] == pytest.approx(expected, abs=1e-3)
    assert abs(history[1]["kl/policy_base"]) > 1e-3  # the policy moved away from the base


def test_rollouts_of_an_exploration_policy_give_no_estimate(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    settings = {"train.steps": 1, "data.eval": "''", "exploration.name": "tempered"}
    config = tiny_config(tiny_model_dir, prompt_files, tmp_path, **settings)
    trainer = Trainer(config, progress=False)
    (record,) = trainer.train()["history"]
    trainer.close()
    assert "length/mean" in record and not {"elbo", "kl/policy_base"} & set(record)
