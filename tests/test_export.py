"""Checkpoints carry the LoRA adapter in PEFT's format, and ``gfnlm export`` writes a run as a
Hugging Face model folder (LoRA merged in) or as its PEFT adapter, on real runs of a tiny random
Llama with the real SmolLM2 tokenizer. Every export is checked against the policy gfnlm itself
builds from the checkpoint (what ``gfnlm eval`` / ``sample`` use): same log-probs to 1e-5 in fp32.

The last test serves a merged folder with a real SGLang CPU server (``make sglang-cpu``); its
start-up alone takes ~40 s on two cores, so it is marked ``slow`` (``pytest -m slow``).
"""

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import PeftModel
from test_checkpoint_faults import FileSystemFaults, Killed
from test_trainer import REPO, tiny_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

from gfnlm.cli import main
from gfnlm.contracts.types import Rollouts
from gfnlm.training import checkpoint
from gfnlm.training.config import load_config, to_yaml
from gfnlm.training.policy import CausalLMPolicy
from gfnlm.training.trainer import Trainer

FP32_TOL = 1e-5
TEXTS = [("What is the capital of France?", " Paris is the capital."),
         ("Who wrote Hamlet?", " It was written by William Shakespeare"),
         ("Name a colour.", " Green")]


# ---------------------------------------------------------------------- runs and log-probs
def train_run(model_dir: Path, out: Path, **extra: object) -> Path:
    """2 steps (checkpoints at 1 and 2), lr 0.1 so the weights move far from the base model."""
    prompts = out.parent / f"{out.name}-train.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q, _ in TEXTS))
    overrides = tiny_overrides(model_dir, prompts, "''", out, **{
        "train.steps": 2, "train.save_every": 1, "train.lr": 0.1, "train.updates_per_batch": 1, **extra})
    Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False).train()
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tiny_model_dir, tmp_path_factory.mktemp("export") / "lora")


@pytest.fixture(scope="module")
def full_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tiny_model_dir, tmp_path_factory.mktemp("export") / "full", **{"model.lora": "false"})


def run_policy(run: Path, folder: Path | None = None) -> CausalLMPolicy:
    """The policy as gfnlm builds it from a checkpoint (default: the run's latest)."""
    folder = folder or checkpoint.latest_checkpoint(run / "checkpoints")
    weights, _ = checkpoint.load_checkpoint(folder)
    config = load_config(folder / checkpoint.CONFIG_FILE)
    policy = CausalLMPolicy.from_config(config.model, Path(config.model.path), torch.device("cpu"))
    policy.load_trainable_state_dict(weights)
    return policy


def encoded(tokenizer) -> list[tuple[list[int], list[int]]]:
    return [(tokenizer(q, add_special_tokens=False)["input_ids"], tokenizer(r, add_special_tokens=False)["input_ids"])
            for q, r in TEXTS]


def policy_logps(policy: CausalLMPolicy) -> list[torch.Tensor]:
    """gfnlm's own log-probs of each response (``CausalLMPolicy.evaluate``, the training path)."""
    out = []
    for prompt, response in encoded(policy.tokenizer):
        p, t = len(prompt), len(response)
        rollouts = Rollouts(prompt_ids=torch.tensor([prompt]), prompt_mask=torch.ones(1, p, dtype=torch.bool),
                            response_ids=torch.tensor([response]), response_mask=torch.ones(1, t, dtype=torch.bool),
                            lengths=torch.tensor([t]), ended_with_eos=torch.tensor([False]),
                            group=torch.zeros(1, dtype=torch.long), prompt_index=torch.zeros(1, dtype=torch.long),
                            behaviour_logp=torch.zeros(1, t))
        with policy.decoding():
            out.append(policy.evaluate(rollouts).token_logp[0].detach())
    return out


def plain_logps(model: torch.nn.Module, tokenizer) -> list[torch.Tensor]:
    """The same log-probs from a plain forward pass of a loaded model (no gfnlm code)."""
    out = []
    model.eval()
    for prompt, response in encoded(tokenizer):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1: -1]
        out.append(logits.float().log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(1))
    return out


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def base_model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def export(*args: str) -> int:
    return main(["export", *map(str, args)])


# ---------------------------------------------------------------------- the adapter in checkpoints
def test_lora_checkpoints_hold_a_peft_adapter_with_the_policys_logprobs(lora_run: Path, tiny_model_dir: Path) -> None:
    latest = checkpoint.latest_checkpoint(lora_run / "checkpoints")
    for folder in sorted((lora_run / "checkpoints").glob("step_*")):
        adapter = checkpoint.adapter_folder(folder)
        assert adapter == folder / "adapter"
        assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        manifest = json.loads((folder / checkpoint.MANIFEST).read_text())["files"]
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", checkpoint.POLICY_FILE} <= set(manifest)
    weights = safetensors.torch.load_file(latest / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in name and float(w.abs().max()) > 0 for name, w in weights.items())  # it trained
    policy = run_policy(lora_run)
    expected = policy_logps(policy)
    peft_model = PeftModel.from_pretrained(base_model(tiny_model_dir), latest / "adapter")
    assert max_gap(plain_logps(peft_model, policy.tokenizer), expected) <= FP32_TOL
    # ...and the comparison means something: the trained policy is far from the base model.
    assert max_gap(plain_logps(base_model(tiny_model_dir), policy.tokenizer), expected) > 0.05


def test_full_fine_tuning_checkpoints_have_no_adapter(full_run: Path) -> None:
    latest = checkpoint.latest_checkpoint(full_run / "checkpoints")
    assert not (latest / "adapter").exists() and checkpoint.adapter_folder(latest) is None


def test_a_damaged_adapter_is_a_checkpoint_error_but_resume_still_loads(lora_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "step_000002"
    shutil.copytree(checkpoint.latest_checkpoint(lora_run / "checkpoints"), folder)
    weights = folder / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match=r"adapter_model.safetensors: truncated"):
        checkpoint.adapter_folder(folder)
    checkpoint.load_checkpoint(folder)  # resume reads policy.safetensors and state.pt only


def test_a_kill_at_every_step_of_a_save_with_an_adapter_leaves_a_loadable_latest(tiny_model_dir: Path,
                                                                                 tmp_path: Path, monkeypatch) -> None:
    """As tests/test_checkpoint_faults.py, with the policy's adapter writer: the adapter's files go
    through the same (instrumented) file-system calls inside the temporary folder."""
    from gfnlm.training.config import ModelConfig

    policy = CausalLMPolicy.from_config(ModelConfig(path=str(tiny_model_dir), lora_targets=["q_proj", "v_proj"]),
                                        tiny_model_dir, torch.device("cpu"))

    def save(directory: Path, step: int, value: float) -> None:
        with torch.no_grad():
            for name, param in policy.model.named_parameters():
                if "lora_B" in name:
                    param.fill_(value)
        state = policy.trainable_state_dict()
        checkpoint.save_checkpoint(directory, step, state, {"step": step, "value": value}, "x: 1",
                                   extra_files=policy.adapter_writer(state))

    at = 1
    while True:
        directory = tmp_path / f"k{at}"
        save(directory, 1, 1.0)
        with monkeypatch.context() as patch:
            FileSystemFaults(patch, at)
            try:
                save(directory, 2, 2.0)
                completed = True
            except Killed:
                completed = False
        point = checkpoint.find_resume_point(directory)
        assert point is not None and point.note is None, f"kill at step {at}"
        value = point.state["value"]
        assert value in ({2.0} if completed else {1.0, 2.0}), f"kill at step {at}"
        adapter = safetensors.torch.load_file(checkpoint.adapter_folder(point.path) / "adapter_model.safetensors")
        assert all(float(w.max()) == value for name, w in adapter.items() if "lora_B" in name), f"kill at step {at}"
        if completed:
            break
        at += 1
    assert at >= 10, f"only {at} file-system steps were instrumented"


# ---------------------------------------------------------------------- gfnlm export
@pytest.mark.parametrize("run_name", ["lora", "full"])
def test_merged_export_loads_with_transformers_and_gives_the_policys_logprobs(
        run_name: str, lora_run: Path, full_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    run = lora_run if run_name == "lora" else full_run
    out = tmp_path / "merged"
    assert export(run, "--merged", out) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("gfnlm export: wrote the merged model") and str(out) in line
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert not list(tmp_path.glob(".merged*"))  # no staging folder left
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32 and json.loads((out / "config.json").read_text())["dtype"] == "float32"
    base_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.chat_template and tokenizer.chat_template == base_tokenizer.chat_template
    assert encoded(tokenizer) == encoded(base_tokenizer)
    policy = run_policy(run)
    expected = policy_logps(policy)
    assert max_gap(plain_logps(model, tokenizer), expected) <= FP32_TOL
    assert max_gap(plain_logps(base_model(tiny_model_dir), tokenizer), expected) > 0.05


def test_merged_export_in_bfloat16_and_of_an_earlier_step(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert export(lora_run, "--step", 1, "--merged", out, "--dtype", "bfloat16") == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    policy = run_policy(lora_run, lora_run / "checkpoints" / "step_000001")
    gap = max_gap(plain_logps(model, policy.tokenizer), policy_logps(policy))
    assert gap < 0.1  # bf16 rounding of the weights, nothing more


def test_adapter_export_round_trips(lora_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "adapter"
    assert export(lora_run, "--adapter", out) == 0
    assert "wrote the PEFT adapter" in capsys.readouterr().out
    latest = checkpoint.latest_checkpoint(lora_run / "checkpoints")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (latest / "adapter" / name).read_bytes()
    policy = run_policy(lora_run)
    peft_model = PeftModel.from_pretrained(base_model(tiny_model_dir), out)
    assert max_gap(plain_logps(peft_model, policy.tokenizer), policy_logps(policy)) <= FP32_TOL
    # --dtype casts the adapter's tensors.
    assert export(lora_run, "--adapter", tmp_path / "half", "--dtype", "float16") == 0
    assert {w.dtype for w in safetensors.torch.load_file(tmp_path / "half" / "adapter_model.safetensors").values()} \
        == {torch.float16}


def test_a_checkpoint_without_adapter_folder_still_exports(lora_run: Path, tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    """A checkpoint written before adapters were saved: policy.safetensors and a 3-file manifest."""
    old_run = tmp_path / "old"
    shutil.copytree(lora_run, old_run)
    for folder in (old_run / "checkpoints").glob("step_*"):
        shutil.rmtree(folder / "adapter")
        manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("adapter/")}
        (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    assert export(old_run, "--adapter", tmp_path / "adapter") == 0
    assert export(old_run, "--merged", tmp_path / "merged") == 0
    new = checkpoint.latest_checkpoint(lora_run / "checkpoints") / "adapter"
    rebuilt, saved = (safetensors.torch.load_file(f / "adapter_model.safetensors") for f in (tmp_path / "adapter", new))
    assert rebuilt.keys() == saved.keys() and all(torch.equal(rebuilt[k], saved[k]) for k in saved)
    config, saved_config = (json.loads((f / "adapter_config.json").read_text()) for f in (tmp_path / "adapter", new))
    assert config == saved_config
    policy = run_policy(lora_run)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert max_gap(plain_logps(model, policy.tokenizer), policy_logps(policy)) <= FP32_TOL


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: bad input must be found before one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_bad_inputs_are_one_line_before_any_model_loads(lora_run: Path, full_run: Path, tmp_path: Path,
                                                        no_model_loads, capsys) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    tied = tmp_path / "tied"  # LoRA on the output layer of a model that ties it to the embeddings
    shutil.copytree(lora_run, tied)
    saved = checkpoint.latest_checkpoint(tied / "checkpoints") / checkpoint.CONFIG_FILE
    config = load_config(saved)
    config.model.lora_targets = ["q_proj", "lm_head"]
    saved.write_text(to_yaml(config))
    cases = [
        ([tmp_path / "no-run", "--merged", tmp_path / "o1"], r"RUN='.*no-run': no such run directory"),
        ([tmp_path, "--merged", tmp_path / "o2"], r"RUN='.*': no checkpoint found \(expected RUN/checkpoints/step_\*\)"),
        ([lora_run, "--step", 7, "--merged", tmp_path / "o3"],
         r"--step=7: run '.*' has no checkpoint of step 7; its checkpoints are of steps 1, 2"),
        ([full_run, "--adapter", tmp_path / "o4"], r"--adapter: run '.*' fine-tuned all weights \(model.lora=false\)"),
        ([lora_run, "--merged", taken], r"--merged='.*taken': exists and is not empty; add --force to replace it"),
        ([lora_run, "--adapter", a_file], r"--adapter='.*file': exists and is not a folder"),
        ([lora_run, "--merged", a_file / "out"], r"--merged='.*file/out': cannot write there"),
        ([lora_run, "--step", -1, "--merged", tmp_path / "o5"], r"--step=-1: must be >= 0"),
        ([tied, "--merged", tmp_path / "o6"], (r"--merged: model.lora_targets=\['q_proj', 'lm_head'\] adapts the "
                                              r"embedding or output layer, which '.*' ties together")),
        ([lora_run, "--merged", tmp_path / "o7", "--force"], None),  # (the case that works: checked last)
    ]
    import re

    for args, pattern in cases[:-1]:
        assert export(*args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.fullmatch(rf"gfnlm export: error: {pattern}.*", err[0]), (args, err)
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken", "tied"]  # nothing written, no staging
    with pytest.raises(AssertionError, match="a model was loaded"):  # valid input: it gets to the model load
        export(*cases[-1][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken", "tied"]  # the staging folder went too
    with pytest.raises(SystemExit) as exit_info:  # neither --merged nor --adapter: argparse's usage error
        export(lora_run)
    assert exit_info.value.code == 2


def test_force_replaces_atomically_and_a_failed_export_leaves_out_untouched(lora_run: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    import gfnlm.serving.export as export_module

    real_copy = export_module.copy_adapter

    def fails_half_way(adapter, folder, dtype):
        real_copy(adapter, folder, dtype)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "copy_adapter", fails_half_way)
        with pytest.raises(OSError):
            export_module.export_checkpoint(str(lora_run), "adapter", str(out), force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.txt").read_text() == "old"
    assert export(lora_run, "--adapter", out, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # An empty existing folder needs no --force.
    (tmp_path / "empty").mkdir()
    assert export(lora_run, "--adapter", tmp_path / "empty") == 0


# ---------------------------------------------------------------------- served by SGLang
def test_sglang_serves_the_merged_export_with_the_policys_logprobs(lora_run: Path, tmp_path: Path) -> None:
    """A real SGLang CPU server started on the exported folder (``make sglang-cpu``): the probe's
    log-probs and sampled rollouts' log-probs equal the policy's (fp32 both sides)."""
    from test_sglang import LOGP_TOL, cpu_launch, prompt_batch, served_logp_gap

    from gfnlm.samplers.sglang import SGLangSampler
    from gfnlm.serving.serve import LaunchConfig, SGLangServer

    out = tmp_path / "merged"
    assert export(lora_run, "--merged", out) == 0
    policy = run_policy(lora_run)
    with SGLangServer(out, LaunchConfig(**cpu_launch())) as server:
        sampler = SGLangSampler(url=server.url, max_new_tokens=8, weight_sync="none", identity_tolerance=1e-3)
        sampler.setup(policy)  # tokenizer probe, then mean |Δ log p| on a probe <= 1e-3, else ServerError
        ids = policy.tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
        answer = sampler._client.generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 0},
                                           "return_logprob": True, "logprob_start_len": 0}, "probe")[0]
        served = torch.tensor([e[0] for e in answer["meta_info"]["input_token_logprobs"][1:]])
        with torch.no_grad():
            logits = policy.model(input_ids=torch.tensor([ids])).logits[0, :-1]
        local = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        probe_gap = float((served - local).abs().mean())
        rollout_gap = served_logp_gap(policy, sampler.sample(prompt_batch(policy), 2))
        print(f"\nSGLang vs policy: probe mean |Δ log p| = {probe_gap:.2e}, rollouts max |Δ| = {rollout_gap:.2e}")
        assert probe_gap < 1e-3 and rollout_gap < LOGP_TOL, (probe_gap, rollout_gap)
        sampler.close()
