"""The ``sglang`` sampler against a real SGLang server process on CPU.

The server (sglang 0.5.23 in ``.bench-venvs/sglang``, built by ``make sglang-cpu``; the CPU recipe
and its two import-only stubs are in ``tools/sglang_cpu``) is started once by this module through
the library's own launcher and stopped at the end. It serves a 2-layer model saved from
SmolLM2-135M-Instruct (its real embeddings, first two blocks and tokenizer), in float32, so the
server's log-probs can be compared with the local model's to 1e-3.

Adapter-only sync (``weight_sync: lora``) is not tested here: the CPU server cannot serve LoRA
(sglang 0.5.23's LoRA layers allocate pinned memory, which needs an accelerator, so a server
started with ``--enable-lora`` exits at start-up). Full-weight sync is tested instead.
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_trainer import REPO, scalars, tiny_overrides
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from gfnlm.contracts import registry
from gfnlm.contracts.errors import ConfigError
from gfnlm.models.decoding import top_p_filter
from gfnlm.models.loading import ensure_smollm2
from gfnlm.models.weights import merged_state_dict
from gfnlm.samplers.sglang import SGLangSampler
from gfnlm.serving.serve import LaunchConfig, SGLangServer, free_port
from gfnlm.serving.sglang_client import ServerError
from gfnlm.tasks.prompt_files import format_prompt
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig, load_config
from gfnlm.training.policy import CausalLMPolicy
from gfnlm.training.trainer import Trainer

sys.path.insert(0, str(REPO / "tools" / "sglang_cpu"))
from launch import cpu_launch

# float32 on both sides; the gap is the two engines' summation order (measured ≤ 5e-5).
LOGP_TOL = 1e-3
QUESTIONS = ("What is the capital of France?", "Name a colour.", "Who wrote Hamlet?")


@pytest.fixture(scope="module")
def small_smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct cut to its first 2 blocks (real embeddings and tokenizer)."""
    source = ensure_smollm2()
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = 2
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32)
    out = tmp_path_factory.mktemp("smollm2-2layers")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(small_smollm2: Path):
    with SGLangServer(small_smollm2, LaunchConfig(**cpu_launch())) as running:
        yield running


def make_policy(model_dir: Path, lora_seed: int | None = None) -> CausalLMPolicy:
    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir)), model_dir, torch.device("cpu")
    )
    if lora_seed is not None:  # a policy that is not the base model
        generator = torch.Generator().manual_seed(lora_seed)
        with torch.no_grad():
            for name, param in policy.model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return policy


def prompt_batch(policy: CausalLMPolicy):
    texts = tuple(format_prompt(policy.tokenizer, q) for q in QUESTIONS)
    ids = tuple(tuple(policy.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    prompts = PromptSet(
        QUESTIONS, (None,) * len(QUESTIONS), texts, ids, int(policy.tokenizer.pad_token_id)
    )
    return prompts.batch(list(range(len(QUESTIONS))))


def served_logp_gap(policy: CausalLMPolicy, rollouts) -> float:
    evaluation = policy.evaluate(rollouts)
    return float(
        ((evaluation.token_logp.detach() - rollouts.behaviour_logp) * rollouts.response_mask)
        .abs()
        .max()
    )


def processed_logp_gap(policy, rollouts, temperature: float, top_p: float) -> float:
    """Largest |behaviour log-prob - the local policy's log-prob under temperature and top-p|."""
    full = torch.cat([rollouts.prompt_ids, rollouts.response_ids], 1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], 1)
    with torch.no_grad():
        logits = policy.model(input_ids=full, attention_mask=mask.long()).logits.double()
    start = rollouts.prompt_ids.shape[1]
    steps = logits[:, start - 1 : -1]
    logp = top_p_filter(steps / temperature, top_p).log_softmax(-1)
    local = logp.gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
    return float(((local - rollouts.behaviour_logp.double()) * rollouts.response_mask).abs().max())


def live_processes_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies awaiting a reaper do not count)."""
    import psutil

    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def start_serve(
    command: list[str], tmp_path: Path, url_line: str = r"at (http://\S+) \(pid (\d+)\)"
):
    """Start ``gfnlm serve`` (``command``) with its temporary files under ``tmp_path``; return the
    process, the URL and the server's process group from the first line it prints."""
    import re
    import subprocess

    # A suite started in the background (nohup ... &) ignores SIGINT, and a child inherits that, so
    # Ctrl-C would never reach gfnlm serve; with a handler here the child starts with the default.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = process.stdout.readline()
    found = re.search(url_line, line)
    if not found:
        process.kill()
        raise AssertionError((line, process.stderr.read()))
    return process, found.group(1), int(found.group(2))


def stop_serve_with_ctrl_c(process, tmp_path: Path, engine: str) -> None:
    """Ctrl-C ends ``gfnlm serve`` with status 130 and deletes the server's log."""
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert "the server is stopped" in process.stderr.read()
    assert not list(tmp_path.glob(f"gfnlm-{engine}-*.log"))  # deleted with the server


# Tests that need no server, or start their own, run first: the module's shared server starts at
# the first test that asks for it, so two servers never compete for the CPU.
def test_merged_weights_equal_the_adapted_model(small_smollm2: Path) -> None:
    policy = make_policy(small_smollm2, lora_seed=3)
    plain = AutoModelForCausalLM.from_pretrained(small_smollm2, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(
        merged_state_dict(policy.model, torch.float32), strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    ids = torch.tensor([[1, 504, 3575, 282, 4649]])
    with torch.no_grad():
        torch.testing.assert_close(
            plain(ids).logits, policy.model(input_ids=ids).logits, atol=1e-4, rtol=0
        )


def test_bad_options_fail_before_any_connection() -> None:
    with pytest.raises(
        ConfigError, match=r"^sampling.sampler_options.weight_sync='fast': must be one of"
    ):
        SGLangSampler(url="http://127.0.0.1:1", weight_sync="fast")
    with pytest.raises(ConfigError, match=r"scores_base=true with weight_sync=full"):
        SGLangSampler(url="http://127.0.0.1:1", scores_base=True)
    with pytest.raises(ConfigError, match=r"launch.pyhton: unknown"):
        SGLangSampler(launch={"pyhton": "x"})


@pytest.mark.parametrize("how", ["ctrl_c", "kill_9"])
def test_gfnlm_serve_never_leaves_a_server_behind(
    small_smollm2: Path, tmp_path: Path, how: str
) -> None:
    """``gfnlm serve`` prints the URL of a healthy server; Ctrl-C stops it and all its processes,
    and so does a ``kill -9`` of ``gfnlm serve`` itself (the supervisor's parent-death signal).
    ``ctrl_c`` starts it the documented way (``--cpu``: the repository's CPU recipe) and checks
    that the server's log is deleted; ``kill_9`` spells the recipe out as flags."""
    if how == "ctrl_c":
        command = [sys.executable, "-m", "gfnlm.cli", "serve", str(small_smollm2), "--cpu"]
    else:
        launch = cpu_launch()
        command = [
            sys.executable,
            "-m",
            "gfnlm.cli",
            "serve",
            str(small_smollm2),
            "--python",
            launch["python"],
            "--startup-timeout",
            "600",
            *(f"--env={k}={v}" for k, v in launch["env"].items()),
            "--",
            *launch["args"],
        ]
    process, url, pid = start_serve(command, tmp_path)
    from gfnlm.serving.sglang_client import SGLangClient

    assert SGLangClient(url).healthy()
    if how == "ctrl_c":
        stop_serve_with_ctrl_c(process, tmp_path, "sglang")
    else:
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 30  # the supervisor's 10 s of grace, then SIGKILL
        while live_processes_in_group(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not live_processes_in_group(pid) and not SGLangClient(url).healthy()


def test_killing_the_launched_server_mid_run_is_a_clear_error(
    small_smollm2: Path, prompt_files, tmp_path: Path
) -> None:
    """The trainer launches its own server; killing it after the first checkpoint stops the run with
    one line naming the URL and the operation, leaves that checkpoint intact and no process
    behind."""
    train, evaluation = prompt_files
    launch = cpu_launch()
    overrides = tiny_overrides(
        small_smollm2,
        train,
        evaluation,
        tmp_path / "run",
        **{
            "sampling.sampler": "sglang",
            "train.steps": 50,
            "train.save_every": 1,
            "data.eval": "''",
            "sampling.sampler_options.timeout_s": 30,
            "sampling.sampler_options.retries": 1,
        },
    )
    config = load_config(REPO / "configs/default.yaml", overrides)
    config.sampling.sampler_options["launch"] = launch
    trainer = Trainer(config, progress=False)
    server = trainer.components.sampler._server
    pid = server.process.pid

    def kill_after_first_checkpoint() -> None:
        while not (tmp_path / "run" / "checkpoints" / "step_000001").exists():
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)

    threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(ServerError) as error:
        trainer.train()
    message = str(error.value)
    assert server.url in message and ("unreachable" in message or "did not answer" in message)
    assert "\n" not in message and time.monotonic() - started < 300
    # The checkpoints written before the kill load; no server process is left.
    from gfnlm.training import checkpoint

    last = checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last is not None and checkpoint.load_checkpoint(last)[1]["step"] >= 1
    assert trainer.components.sampler._server is None
    deadline = time.monotonic() + 15  # the kernel takes a moment to tear down a 2 GB process
    while live_processes_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_processes_in_group(pid)


def test_rollouts_are_the_servers_tokens_and_logprobs(server, small_smollm2: Path) -> None:
    policy = make_policy(small_smollm2)
    sampler = SGLangSampler(url=server.url, max_new_tokens=12, weight_sync="none")
    sampler.setup(policy)
    rollouts = sampler.sample(prompt_batch(policy), 4)
    assert rollouts.batch_size == 12 and rollouts.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # The same tokens the server reports for the same request, decoded the same way.
    first = rollouts.prompt_ids[0][rollouts.prompt_mask[0]].tolist()
    response = rollouts.response_ids[0][rollouts.response_mask[0]].tolist()
    replay = sampler._client.generate(
        {
            "input_ids": first + response[:-1] if len(response) > 1 else first,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": len(first) - 1,
        }
    )[0]
    replayed_ids = [int(e[1]) for e in replay["meta_info"]["input_token_logprobs"][1:]]
    assert replayed_ids == response[:-1][: len(replayed_ids)]
    texts = policy.tokenizer.batch_decode(
        rollouts.response_ids.masked_fill(~rollouts.response_mask, policy.tokenizer.pad_token_id),
        skip_special_tokens=True,
    )
    assert list(rollouts.response_text) == texts
    # EOS vs truncation: EOS is the last kept token exactly when the row says it ended with EOS.
    last = rollouts.response_ids.gather(1, (rollouts.lengths - 1)[:, None]).squeeze(1)
    assert ((last == policy.eos_token_id) == rollouts.ended_with_eos).all()
    assert (rollouts.lengths[~rollouts.ended_with_eos] == 12).all()
    # Behaviour log-probs: the server's agree with the local model's recomputation.
    assert served_logp_gap(policy, rollouts) < LOGP_TOL
    assert rollouts.weight_version == 0
    sampler.close()  # its (empty) weight folder goes too


def test_a_tempered_exploration_draws_at_the_raised_temperature(
    server, small_smollm2: Path
) -> None:
    """exploration.name=tempered: tokens drawn at temperature × T, and the behaviour log-probs
    (SGLang's, taken after its temperature) are those of that distribution."""
    sampler = SGLangSampler(url=server.url, max_new_tokens=10, weight_sync="none", temperature=0.8)
    check_tempered_exploration(sampler, make_policy(small_smollm2))


def check_tempered_exploration(sampler, policy: CausalLMPolicy) -> None:
    """A server sampler at temperature 0.8 with a tempered exploration (T = 1.5) draws at 1.2 and
    reports that distribution's log-probs, not the policy's at 0.8."""
    sampler.explore_with(registry.build("exploration", "tempered", temperature=1.5))
    sampler.setup(policy)
    rollouts = sampler.sample(prompt_batch(policy), 3)
    assert processed_logp_gap(policy, rollouts, 0.8 * 1.5, 1.0) < LOGP_TOL
    assert processed_logp_gap(policy, rollouts, 0.8, 1.0) > 0.01
    sampler.close()


def test_server_scores_the_base_model_like_the_local_one(server, small_smollm2: Path) -> None:
    policy = make_policy(small_smollm2)
    sampler = SGLangSampler(url=server.url, max_new_tokens=10, weight_sync="none", scores_base=True)
    sampler.setup(policy)
    rollouts = sampler.sample(prompt_batch(policy), 3)
    served, local = (
        sampler.score_base(rollouts, need_eos_logp=True),
        policy.score_base(rollouts, True),
    )
    assert float((served.token_logp - local.token_logp).abs().max()) < LOGP_TOL
    prefixes = torch.arange(served.eos_logp.shape[1])[None, :] <= rollouts.lengths[:, None]
    assert float(((served.eos_logp - local.eos_logp) * prefixes).abs().max()) < LOGP_TOL
    assert float(local.eos_logp[prefixes].abs().min()) > 0.01  # compares real values, not zeros
    sampler.close()


def test_a_launched_base_server_scores_the_base_model(server, small_smollm2: Path) -> None:
    """With full sync the policy's server holds no base model: base_launch starts one (the same
    engine), its scores (and per-prefix EOS log-probs) are the local base model's, and it stops
    with the sampler."""
    policy = make_policy(small_smollm2, lora_seed=2)
    sampler = SGLangSampler(
        url=server.url,
        max_new_tokens=10,
        weight_sync="full",
        scores_base=True,
        base_launch=cpu_launch(),
    )
    sampler.setup(policy)
    base_server = sampler._base_server
    rollouts = sampler.sample(prompt_batch(policy), 2)
    served, local = (
        sampler.score_base(rollouts, need_eos_logp=True),
        policy.score_base(rollouts, True),
    )
    assert (
        float(((served.token_logp - local.token_logp) * rollouts.response_mask).abs().max())
        < LOGP_TOL
    )
    prefixes = torch.arange(served.eos_logp.shape[1])[None, :] <= rollouts.lengths[:, None]
    assert float(((served.eos_logp - local.eos_logp) * prefixes).abs().max()) < LOGP_TOL
    assert (
        served_logp_gap(policy, rollouts) < LOGP_TOL
    )  # the rollouts came from the policy, not the base
    sampler.close()
    assert not base_server.alive() and server.alive()
    restore = SGLangSampler(
        url=server.url, weight_sync="full"
    )  # leave the shared server with the base weights
    restore.setup(make_policy(small_smollm2))
    restore.close()


def check_sync_serves_the_updated_policy(sampler, model_dir: Path) -> None:
    """With ``sync_every=2``: version 1 is not pushed (stale rollouts, visibly), version 2 is (the
    server's log-probs match the updated policy). Closes ``sampler``."""
    policy = make_policy(model_dir)
    sampler.setup(policy)  # pushes version 0 (the base weights: LoRA B starts at 0)
    changed = make_policy(model_dir, lora_seed=1)
    policy.model.load_state_dict(changed.model.state_dict())
    sampler.sync(policy, 1)  # sync_every=2: version 1 is not pushed, the rollouts stay stale
    stale = sampler.sample(prompt_batch(policy), 2)
    assert stale.weight_version == 0 and served_logp_gap(policy, stale) > 0.01
    sampler.sync(policy, 2)
    fresh = sampler.sample(prompt_batch(policy), 2)
    assert fresh.weight_version == 2 and served_logp_gap(policy, fresh) < LOGP_TOL
    sampler.close()


def test_after_a_weight_sync_the_server_matches_the_updated_policy(
    server, small_smollm2: Path
) -> None:
    sampler = SGLangSampler(url=server.url, max_new_tokens=10, weight_sync="full", sync_every=2)
    check_sync_serves_the_updated_policy(sampler, small_smollm2)


def test_wrong_servers_are_one_line_errors(
    server, small_smollm2: Path, tiny_model_dir: Path
) -> None:
    # Other weights (same tokenizer, same architecture family): the identity probe catches it.
    other = make_policy(tiny_model_dir)
    with pytest.raises(ServerError, match=r"does not serve the policy's weights"):
        SGLangSampler(url=server.url, weight_sync="none").setup(other)
    # Other architecture: found before any weights are pushed (a wrong push can kill a server).
    with pytest.raises(
        ServerError,
        match=r"serves another architecture: 'model.layers.0.input_layernorm.weight' "
        r"has 576 values there, 64 here; weights not pushed",
    ) as error:
        SGLangSampler(url=server.url, weight_sync="full", timeout_s=60).setup(other)
    assert "\n" not in str(error.value) and server.alive()
    # Nobody listening: names the URL and the operation, at once.
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerError, match=rf"{dead}/generate unreachable during tokenizer check"):
        SGLangSampler(url=dead, retries=1).setup(other)
    assert time.monotonic() - started < 10


def test_powerflow_trains_through_the_server(
    server, small_smollm2: Path, prompt_files, tmp_path: Path
) -> None:
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        small_smollm2,
        train,
        evaluation,
        tmp_path / "run",
        **{
            "sampling.sampler": "sglang",
            "sampling.sampler_options.url": server.url,
            "train.steps": 3,
            "train.eval_samples": 1,
            "data.eval": "''",
        },
    )
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    before = {
        n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad
    }
    trainer.train()
    logged = scalars(tmp_path / "run" / "tb")
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3]
    assert all(
        value == 0 for _, value in logged["train/sampler/staleness"]
    )  # synced after every step
    moved = [
        n
        for n, p in trainer.policy.model.named_parameters()
        if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert moved
    # The server now serves the trained policy (version 3).
    check = SGLangSampler(url=server.url, max_new_tokens=8, weight_sync="none")
    check.setup(trainer.policy)
    assert served_logp_gap(trainer.policy, check.sample(prompt_batch(trainer.policy), 2)) < LOGP_TOL
    check.close()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_ranks_share_one_server(
    server, small_smollm2: Path, prompt_files, tmp_path: Path, parallel: str
) -> None:
    """torchrun, 2 processes (gloo): both ranks sample from one server, rank 0 pushes the weights
    after each step; at the end the server serves the run's final policy."""
    import subprocess

    from gfnlm.training import checkpoint

    train, evaluation = prompt_files
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_smollm2,
        train,
        evaluation,
        out,
        **{
            "sampling.sampler": "sglang",
            "sampling.sampler_options.url": server.url,
            "train.steps": 2,
            "data.eval": "''",
            "train.parallel": parallel,
            "objective.name": "tb",
        },
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "gfnlm.cli",
        "train",
        str(REPO / "configs/default.yaml"),
        *overrides,
        "--quiet",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GFNLM_DEBUG": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    policy = make_policy(small_smollm2)
    policy_state, _ = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(out / "checkpoints"))
    policy.load_trainable_state_dict(policy_state)
    check = SGLangSampler(url=server.url, max_new_tokens=8, weight_sync="none")
    check.setup(policy)
    assert served_logp_gap(policy, check.sample(prompt_batch(policy), 2)) < LOGP_TOL
    assert served_logp_gap(make_policy(small_smollm2), check.sample(prompt_batch(policy), 2)) > 0.01
    check.close()
