"""Trainer, checkpoints, TensorBoard and the CLI's bad-input errors, on a tiny random Llama with the
real SmolLM2 tokenizer (so the chat template, EOS and vocabulary are the real ones)."""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gfnlm.cli import main
from gfnlm.training import checkpoint
from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer, TrainingError

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(
    model_dir: Path, train: Path, evaluation: Path | str, out_dir: Path, **extra: object
) -> list[str]:
    values = {
        "model.path": str(model_dir),
        "model.lora_targets": "[q_proj,v_proj]",
        "data.train": str(train),
        "data.eval": str(evaluation),
        "sampling.samples_per_prompt": 2,
        "sampling.max_new_tokens": 6,
        "train.prompts_per_step": 2,
        "train.steps": 4,
        "train.device": "cpu",
        "train.out_dir": str(out_dir),
        "train.eval_samples": 2,
        "train.lr": 1e-2,
        "train.updates_per_batch": 2,
        "train.minibatch_size": 2,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.parametrize("log_z_source", ["group_mean", "learned"])
def test_resume_equals_uninterrupted_run(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, log_z_source
) -> None:
    """(``learned``: a scalar log Z with warm start, its optimiser state resumed as well.)"""
    train, evaluation = prompt_files
    source = {"objective.options.log_z_source": log_z_source}
    straight = Trainer(
        load_config(
            REPO / "configs/default.yaml",
            tiny_overrides(tiny_model_dir, train, evaluation, tmp_path / "a", **source),
        ),
        progress=False,
    )
    straight.train()
    first_half = tiny_overrides(
        tiny_model_dir, train, evaluation, tmp_path / "b", **{"train.steps": 2}, **source
    )
    Trainer(load_config(REPO / "configs/default.yaml", first_half), progress=False).train()
    resumed = Trainer(
        load_config(
            REPO / "configs/default.yaml",
            tiny_overrides(tiny_model_dir, train, evaluation, tmp_path / "b", **source),
        ),
        progress=False,
    )
    resumed.train()
    losses_a = [v for _, v in scalars(tmp_path / "a/tb")["train/loss"]]
    losses_b = [v for _, v in scalars(tmp_path / "b/tb")["train/loss"]]
    assert len(losses_a) == 4 and len(losses_b) == 4
    assert losses_a == pytest.approx(losses_b, rel=1e-5, abs=1e-6)
    weights_a, weights_b = (
        straight.policy.trainable_state_dict(),
        resumed.policy.trainable_state_dict(),
    )
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-5, atol=1e-6)
    # The runs really trained: the adapter moved away from its initial zero B matrices.
    assert any(float(w.abs().max()) > 0 for n, w in weights_a.items() if "lora_B" in n)


def test_tensorboard_has_the_step_scalars(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    train, evaluation = prompt_files
    Trainer(
        load_config(
            REPO / "configs/default.yaml",
            tiny_overrides(tiny_model_dir, train, evaluation, tmp_path, **{"train.steps": 2}),
        ),
        progress=False,
    ).train()
    found = scalars(tmp_path / "tb")
    required = [
        "loss",
        "log_z",
        "length/mean",
        "length/min",
        "length/max",
        "truncated_frac",
        "iw_mean",
        "iw_min",
        "iw_max",
        "iw_clip_frac",
        "entropy",
        "target/log_reward_mean",
        "residual_var",
        "time/sample",
        "time/score",
        "time/update",
        "grad_norm",
    ]
    for name in required:
        assert [step for step, _ in found[f"train/{name}"]] == [1, 2], name
    assert {
        "eval/accuracy_t1",
        "eval/greedy_accuracy",
        "eval/pass_at_k",
        "eval/majority_at_k",
    } <= set(found)


def nan_reward_from_step_3(rollouts):
    count = int(os.environ.get("GFNLM_TEST_CALLS", "0")) + 1
    os.environ["GFNLM_TEST_CALLS"] = str(count)
    value = float("nan") if count >= 3 else 0.0
    return torch.full((rollouts.batch_size,), value)


def test_non_finite_loss_stops_with_last_checkpoint_intact(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _ = prompt_files
    monkeypatch.setenv("GFNLM_TEST_CALLS", "0")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config_file = tmp_path / "nan.yaml"
    config_file.write_text(
        "target: {name: reward_tilted, options: {reward: 'test_trainer:nan_reward_from_step_3'}}\n"
        "objective: {name: tb}\n"
    )
    overrides = tiny_overrides(
        tiny_model_dir,
        train,
        "''",
        tmp_path / "run",
        **{"train.save_every": 1, "train.updates_per_batch": 1, "train.minibatch_size": 0},
    )
    trainer = Trainer(load_config(config_file, overrides), progress=False)
    with pytest.raises(
        TrainingError, match=r"non-finite loss \(nan\) at step 3.*step_000002.*intact"
    ):
        trainer.train()
    latest = checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert latest is not None and latest.name == "step_000002"
    weights, state = checkpoint.load_checkpoint(latest)
    assert state["step"] == 2 and all(torch.isfinite(w).all() for w in weights.values())


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be rejected before any model weights are loaded."""
    from gfnlm.training.policy import CausalLMPolicy

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the bad input was rejected")

    monkeypatch.setattr(CausalLMPolicy, "from_config", refuse)


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.path=/nonexistent/model", r"model\.path='/nonexistent/model'"),
        (
            "target.options.alpha=0",
            r"target 'alpha_power': alpha=0\.0: must be a finite number > 0",
        ),
        ("target.options.alpha=-2", r"alpha=-2\.0: must be a finite number > 0"),
        ("objective.name=la_tbb", r"unknown objective 'la_tbb'.*did you mean 'la_tb'"),
        ("train.device=cuda", r"train\.device='cuda': no CUDA device"),
        ("train.stepz=3", r"train\.stepz.*not in 'TrainConfig'"),
        (
            "objective.name=subtb target.options.format_penalty=-0.5",
            r"objective 'subtb' requires 'prefix_rewards'",
        ),
        (
            "exploration.name=tempered exploration.options.temperature=0.5",
            r"exploration 'tempered': temperature=0\.5: must be >= 1",
        ),
        (
            "exploration.name=uniform_mix exploration.options.epsilon=1.5",
            r"epsilon=1\.5: must be in \(0, 1\)",
        ),
        ("exploration.name=tempred", r"unknown exploration 'tempred'.*did you mean 'tempered'"),
        (
            "replay.name=reward_prioritised replay.options.capacity=0",
            r"capacity=0: must be in \[1, 1_000_000\]",
        ),
        (
            "replay.name=reward_prioritised objective.name=grpo",
            (
                r"replay\.name='reward_prioritised': objective 'grpo'.*"
                r"not valid on replayed trajectories"
            ),
        ),
        (
            "exploration.name=tempered objective.name=entropy_min",
            (
                r"exploration\.name='tempered': objective 'entropy_min' "
                r"is valid on its own samples only"
            ),
        ),
        (
            "exploration.name=tempered sampling.sampler_options.engine=generate",
            r"exploration 'tempered' requires 'tempered_sampling'.*engine='generate'",
        ),
        (
            "exploration.name=uniform_mix sampling.sampler_options.engine=generate",
            r"exploration 'uniform_mix' requires 'behaviour_transform'.*engine='generate'",
        ),
    ],
)
def test_bad_config_is_a_one_line_error(
    override: str,
    expected: str,
    tiny_model_dir: Path,
    prompt_files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if override == "train.device=cuda" and torch.cuda.is_available():
        pytest.skip("a GPU exists here")
    train, evaluation = prompt_files
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        *tiny_overrides(tiny_model_dir, train, evaluation, tmp_path),
        *override.split(" ", 2),
    ]
    code, err = run_cli(args, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert re.search(expected, err), err


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", r"empty"),
        ('{"question": "ok"}\n{not json\n', r"bad\.jsonl:2: invalid JSON"),
        ('{"answers": ["x"]}\n', r"bad\.jsonl:1: missing 'question'"),
    ],
)
def test_bad_prompt_file_is_a_one_line_error(
    content: str,
    expected: str,
    tiny_model_dir: Path,
    prompt_files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, evaluation = prompt_files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        *tiny_overrides(tiny_model_dir, bad, evaluation, tmp_path),
    ]
    code, err = run_cli(args, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "bad.jsonl" in err
    assert re.search(expected, err, flags=re.IGNORECASE), err


@pytest.mark.usefixtures("no_model_loading")
def test_prompt_longer_than_context_is_rejected(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, evaluation = prompt_files
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(json.dumps({"question": "word " * 400}) + "\n")
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        *tiny_overrides(tiny_model_dir, long_prompt, evaluation, tmp_path),
        "data.max_prompt_tokens=4096",
    ]
    code, err = run_cli(args, capsys)
    assert code == 2 and "exceeds the model's context of 256" in err, err
    args[-1] = "data.max_prompt_tokens=64"
    code, err = run_cli(args, capsys)
    assert code == 2 and "more than data.max_prompt_tokens=64" in err, err


def test_existing_run_is_never_overwritten_without_resume(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, evaluation = prompt_files
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        *tiny_overrides(tiny_model_dir, train, evaluation, tmp_path, **{"train.steps": 1}),
        "--quiet",
    ]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    code, err = run_cli([*args[:-1], "train.resume=false", "--quiet"], capsys)
    assert code == 2 and "already holds a run" in err
    code, err = run_cli([*args[:-1], "target.options.alpha=2", "--quiet"], capsys)
    assert code == 2 and "target.options" in err and "differs from the run being resumed" in err
    after = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    assert before == after


def test_replacing_a_component_on_the_command_line_drops_the_files_options() -> None:
    """configs/default.yaml gives la_tb an option subtb does not have; naming subtb must not
    inherit it, while options given on the command line still apply."""
    assert load_config(REPO / "configs/default.yaml").objective.options == {
        "log_z_source": "group_mean"
    }
    config = load_config(
        REPO / "configs/default.yaml", ["objective.name=subtb", "objective.options.lamda=0.5"]
    )
    assert config.objective.options == {"lamda": 0.5}
    kept = load_config(REPO / "configs/default.yaml", ["objective.name=la_tb"])
    assert kept.objective.options == {"log_z_source": "group_mean"}


@pytest.mark.parametrize(
    ("target", "reward"),
    [
        (
            ["target.name=reward", "target.options.reward=gfnlm.tasks.rewards:distinct_words"],
            "target",
        ),  # reward fn
        (["target.name=uniform"], "neg_entropy"),  # RENT
        (["target.name=uniform"], "self_certainty"),  # Intuitor
    ],
)
def test_grpo_with_a_reward_target_trains_without_a_base_pass(
    tiny_model_dir: Path,
    prompt_files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target,
    reward,
) -> None:
    from gfnlm.training.policy import CausalLMPolicy

    def refuse(*args, **kwargs):
        raise AssertionError("the reward target needs no base model pass")

    monkeypatch.setattr(CausalLMPolicy, "score_base", refuse)
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        tiny_model_dir,
        train,
        evaluation,
        tmp_path,
        **{"train.steps": 2, "objective.name": "grpo", "sampling.samples_per_prompt": 4},
    )
    overrides += [*target, f"objective.options.reward={reward}"]
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    assert trainer.logz is None
    trainer.train()
    found = scalars(tmp_path / "tb")
    assert [step for step, _ in found["train/reward_mean"]] == [1, 2]
    low, high = {"target": (0.0, 1.0), "neg_entropy": (-20.0, 0.0), "self_certainty": (0.0, 20.0)}[
        reward
    ]
    assert all(low <= value <= high for _, value in found["train/reward_mean"])
    assert all(np.isfinite(value) for _, value in found["train/loss"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_composes(name: str) -> None:
    """Each file in configs/ is a valid config whose components fit together (no model needed)."""
    from gfnlm.training.compose import compose

    # The GPU recipe's config has no default model, data or server: its script gives them.
    required = {
        "powerflow_qwen_math": [
            "model.path=/models/qwen",
            "data.train=/data/train.parquet",
            "sampling.sampler_options.url=http://127.0.0.1:30000",
        ]
    }
    config = load_config(REPO / "configs" / f"{name}.yaml", required.get(name, []))
    compose(config, hidden_size=64, num_train_prompts=10)


@pytest.mark.parametrize(
    ("objective", "needs"), [("la_tb", False), ("tb", False), ("subtb", True), ("db", True)]
)
def test_the_base_pass_returns_prefix_eos_logps_only_for_objectives_that_use_them(
    objective: str, needs: bool
) -> None:
    """The α-power target offers prefix rewards, but only SubTB/DB use them: for TB/LA-TB the base
    pass needs no per-prefix EOS log-prob, so a vLLM server (which cannot return it) may score the
    base model; with SubTB that is refused when the run is composed."""
    from gfnlm.contracts.errors import ConfigError
    from gfnlm.training.compose import compose

    vllm = [
        "sampling.sampler=vllm",
        "sampling.sampler_options.url=http://127.0.0.1:1",
        "sampling.sampler_options.weight_sync=lora",
        "sampling.sampler_options.scores_base=true",
    ]
    config = load_config(REPO / "configs/default.yaml", [f"objective.name={objective}", *vllm])
    if not needs:
        assert not compose(config, hidden_size=64, num_train_prompts=10).base_needs_eos_logp
        return
    with pytest.raises(
        ConfigError,
        match=rf"^sampling.sampler_options.scores_base=true: objective '{objective}' "
        r"uses prefix rewards.*allowed: scores_base=false",
    ):
        compose(config, hidden_size=64, num_train_prompts=10)
    hf = load_config(REPO / "configs/default.yaml", [f"objective.name={objective}"])
    assert compose(hf, hidden_size=64, num_train_prompts=10).base_needs_eos_logp


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], r"MODEL_DIR and TRAIN_DATA are required"),
        (
            ["/nonexistent/qwen", "/nonexistent/train.parquet"],
            r"MODEL_DIR='/nonexistent/qwen': not a model folder",
        ),
        (
            ["MODEL", "/nonexistent/train.parquet"],
            r"TRAIN_DATA='/nonexistent/train\.parquet': no such file",
        ),
    ],
)
def test_gpu_math_recipe_without_weights_or_data_fails_in_one_line(
    args, expected, tiny_model_dir: Path
) -> None:
    args = [str(tiny_model_dir) if a == "MODEL" else a for a in args]
    result = subprocess.run(
        ["bash", str(REPO / "recipes/powerflow_qwen_math.sh"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(expected, result.stderr), result.stderr


def test_the_gpu_math_config_names_what_it_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(
        ["train", str(REPO / "configs/powerflow_qwen_math.yaml"), "--quiet"], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and "Missing mandatory value" in err, err


def test_entropy_minimisation_trains_through_the_policy_entropy(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """EM's loss is the policy's entropy itself: the trainer turns on ``entropy_grad``, the loss
    reported equals the logged entropy, and the update lowers it on a fixed batch."""
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        tiny_model_dir,
        train,
        evaluation,
        tmp_path,
        **{
            "train.steps": 2,
            "objective.name": "entropy_min",
            "target.name": "uniform",
            "train.updates_per_batch": 1,
            "train.minibatch_size": 0,
        },
    )
    trainer = Trainer(load_config(REPO / "configs/em.yaml", overrides), progress=False)
    assert trainer.policy.entropy_grad and trainer.logz is None
    rollouts = trainer.components.sampler.sample(trainer.train_prompts.batch([0, 1]), 2)
    scores = trainer.components.target.score(rollouts, None)
    first = trainer.update(rollouts, scores)
    assert first["loss"] == pytest.approx(first["entropy"], rel=1e-6)
    assert trainer.update(rollouts, scores)["loss"] < first["loss"]


def test_a_moved_run_or_another_server_is_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume identity is what changes the computation: not the run's path, the device, or how a
    server is reached; data given by another path to the same bytes is the same data."""
    from gfnlm.training.resume import config_differences

    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "q"}\n')
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(data.read_bytes())
    base = [
        "sampling.sampler=sglang",
        "sampling.sampler_options.url=http://127.0.0.1:30000",
        f"data.train={data}",
        "train.out_dir=runs/a",
    ]
    saved = load_config(REPO / "configs/default.yaml", base)
    monkeypatch.chdir(tmp_path)
    moved = load_config(
        REPO / "configs/default.yaml",
        [
            "sampling.sampler=sglang",
            "sampling.sampler_options.url=http://127.0.0.1:41234",
            "data.train=copy.jsonl",
            f"train.out_dir={tmp_path / 'b'}",
            "train.device=cpu",
        ],
    )
    assert config_differences(moved, saved) == []
    copy.write_text('{"question": "another"}\n')
    changed = load_config(
        REPO / "configs/default.yaml",
        [*base[:2], "data.train=copy.jsonl", "sampling.sampler_options.sync_every=2"],
    )
    assert [name for name, _, _ in config_differences(changed, saved)] == [
        "sampling.sampler_options",
        "data.train",
    ]


@pytest.mark.parametrize("exploration", ["tempered", "uniform_mix"])
def test_exploration_and_replay_train_a_real_model(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, exploration: str
) -> None:
    """The sampler draws through the exploration component (behaviour_logp is what it drew with),
    replayed responses join each batch, and training runs."""
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        tiny_model_dir,
        train,
        evaluation,
        tmp_path,
        **{
            "train.steps": 3,
            "exploration.name": exploration,
            "replay.name": "reward_prioritised",
            "replay.options.ratio": 1.0,
            "objective.name": "tb",
        },
    )
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    sampler = trainer.components.sampler
    assert sampler._exploration is trainer.components.exploration
    prompts = trainer.train_prompts.batch([0, 1])
    torch.manual_seed(0)
    rollouts = sampler.sample(prompts, 4)
    # The recorded log-probs are the exploration's: recompute them from the policy's own.
    evaluation_ = trainer.policy.evaluate(rollouts)
    with torch.no_grad():
        full = trainer.policy.model(
            input_ids=torch.cat([rollouts.prompt_ids, rollouts.response_ids], 1),
            attention_mask=torch.cat([rollouts.prompt_mask, rollouts.response_mask], 1).long(),
        )
    logits = full.logits[:, rollouts.prompt_ids.shape[1] - 1 : -1].double()
    behaviour = trainer.components.exploration.behaviour_log_probs(logits.log_softmax(-1))
    expected = (
        behaviour.gather(-1, rollouts.response_ids[..., None]).squeeze(-1) * rollouts.response_mask
    )
    torch.testing.assert_close(rollouts.behaviour_logp.double(), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(
        evaluation_.token_logp.double() * rollouts.response_mask, expected, atol=1e-3
    )
    trainer.train()
    found = scalars(tmp_path / "tb")
    shares = [value for _, value in found["train/replay/share"]]
    assert (
        shares[0] == 0.0 and shares[-1] > 0.0
    )  # nothing stored before the first batch, then replay
    assert all(np.isfinite(value) for _, value in found["train/loss"])


def test_a_lora_policy_builds_without_upstream_future_warnings(tiny_model_dir: Path) -> None:
    """peft's read of transformers' deprecated ``is_gradient_checkpointing`` alias printed a
    FutureWarning on every run; building the policy keeps it quiet (and only that warning)."""
    import warnings

    from gfnlm.training.config import ModelConfig
    from gfnlm.training.policy import CausalLMPolicy

    config = ModelConfig(path=str(tiny_model_dir), lora=True, lora_targets=["q_proj", "v_proj"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CausalLMPolicy.from_config(config, tiny_model_dir, torch.device("cpu"))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [
        str(w.message) for w in caught
    ]
