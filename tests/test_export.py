"""Checkpoints carry the LoRA adapter in PEFT's format, and ``gfnlm export`` writes a run as a
Hugging Face model folder (LoRA merged in) or as its PEFT adapter, on real runs of a tiny random
Llama with the real SmolLM2 tokenizer. Every export is checked against the policy gfnlm itself
builds from the checkpoint (what ``gfnlm eval`` / ``sample`` use): same log-probs to 1e-5 in fp32.
The export's own guarantees are checked under faults: a kill at every file-system step of
``export --force`` (with renameat2's exchange, and with the journal used where there is none), a
real full tmpfs, I/O errors, the leftovers of dead exports, and outputs inside a run's checkpoints.

The last test serves a merged folder with a real SGLang CPU server (``make sglang-cpu``); its
start-up alone takes ~40 s on two cores, so it is marked ``slow`` (``pytest -m slow``).
"""

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest
import safetensors.torch
import torch
from conftest import mounted_tmpfs
from peft import PeftModel
from test_checkpoint_faults import FileSystemFaults, Killed
from test_trainer import REPO, tiny_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

import gfnlm.training.export as export_module
from gfnlm.cli import main
from gfnlm.contracts.types import Rollouts
from gfnlm.training import checkpoint
from gfnlm.training.config import load_config, to_yaml
from gfnlm.training.policy import CausalLMPolicy
from gfnlm.training.trainer import Trainer

FP32_TOL = 1e-5
TEXTS = [
    ("What is the capital of France?", " Paris is the capital."),
    ("Who wrote Hamlet?", " It was written by William Shakespeare"),
    ("Name a colour.", " Green"),
]


# ---------------------------------------------------------------------- runs and log-probs
def train_run(model_dir: Path, out: Path, **extra: object) -> Path:
    """2 steps (checkpoints at 1 and 2), lr 0.1 so the weights move far from the base model."""
    prompts = out.parent / f"{out.name}-train.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q, _ in TEXTS))
    overrides = tiny_overrides(
        model_dir,
        prompts,
        "''",
        out,
        **{
            "train.steps": 2,
            "train.save_every": 1,
            "train.lr": 0.1,
            "train.updates_per_batch": 1,
            **extra,
        },
    )
    Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False).train()
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tiny_model_dir, tmp_path_factory.mktemp("export") / "lora")


@pytest.fixture(scope="module")
def full_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(
        tiny_model_dir, tmp_path_factory.mktemp("export") / "full", **{"model.lora": "false"}
    )


def run_policy(run: Path, folder: Path | None = None) -> CausalLMPolicy:
    """The policy as gfnlm builds it from a checkpoint (default: the run's latest)."""
    folder = folder or checkpoint.latest_checkpoint(run / "checkpoints")
    weights, _ = checkpoint.load_checkpoint(folder)
    config = load_config(folder / checkpoint.CONFIG_FILE)
    policy = CausalLMPolicy.from_config(config.model, Path(config.model.path), torch.device("cpu"))
    policy.load_trainable_state_dict(weights)
    return policy


def encoded(tokenizer) -> list[tuple[list[int], list[int]]]:
    return [
        (
            tokenizer(q, add_special_tokens=False)["input_ids"],
            tokenizer(r, add_special_tokens=False)["input_ids"],
        )
        for q, r in TEXTS
    ]


def policy_logps(policy: CausalLMPolicy) -> list[torch.Tensor]:
    """gfnlm's own log-probs of each response (``CausalLMPolicy.evaluate``, the training path)."""
    out = []
    for prompt, response in encoded(policy.tokenizer):
        p, t = len(prompt), len(response)
        rollouts = Rollouts(
            prompt_ids=torch.tensor([prompt]),
            prompt_mask=torch.ones(1, p, dtype=torch.bool),
            response_ids=torch.tensor([response]),
            response_mask=torch.ones(1, t, dtype=torch.bool),
            lengths=torch.tensor([t]),
            ended_with_eos=torch.tensor([False]),
            group=torch.zeros(1, dtype=torch.long),
            prompt_index=torch.zeros(1, dtype=torch.long),
            behaviour_logp=torch.zeros(1, t),
        )
        with policy.decoding():
            out.append(policy.evaluate(rollouts).token_logp[0].detach())
    return out


def plain_logps(model: torch.nn.Module, tokenizer) -> list[torch.Tensor]:
    """The same log-probs from a plain forward pass of a loaded model (no gfnlm code)."""
    out = []
    model.eval()
    for prompt, response in encoded(tokenizer):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[
                0, len(prompt) - 1 : -1
            ]
        out.append(
            logits.float().log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(1)
        )
    return out


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def base_model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def export(*args: str) -> int:
    return main(["export", *map(str, args)])


# ---------------------------------------------------------------------- the adapter in checkpoints
def test_lora_checkpoints_hold_a_peft_adapter_with_the_policys_logprobs(
    lora_run: Path, tiny_model_dir: Path
) -> None:
    latest = checkpoint.latest_checkpoint(lora_run / "checkpoints")
    for folder in sorted((lora_run / "checkpoints").glob("step_*")):
        adapter = checkpoint.adapter_folder(folder)
        assert adapter == folder / "adapter"
        assert sorted(p.name for p in adapter.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        manifest = json.loads((folder / checkpoint.MANIFEST).read_text())["files"]
        assert {
            "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors",
            checkpoint.POLICY_FILE,
        } <= set(manifest)
    weights = safetensors.torch.load_file(latest / "adapter" / "adapter_model.safetensors")
    assert any(
        "lora_B" in name and float(w.abs().max()) > 0 for name, w in weights.items()
    )  # it trained
    policy = run_policy(lora_run)
    expected = policy_logps(policy)
    peft_model = PeftModel.from_pretrained(base_model(tiny_model_dir), latest / "adapter")
    assert max_gap(plain_logps(peft_model, policy.tokenizer), expected) <= FP32_TOL
    # ...and the comparison means something: the trained policy is far from the base model.
    assert max_gap(plain_logps(base_model(tiny_model_dir), policy.tokenizer), expected) > 0.05


def test_full_fine_tuning_checkpoints_have_no_adapter(full_run: Path) -> None:
    latest = checkpoint.latest_checkpoint(full_run / "checkpoints")
    assert not (latest / "adapter").exists() and checkpoint.adapter_folder(latest) is None


def test_a_damaged_adapter_is_a_checkpoint_error_but_resume_still_loads(
    lora_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "step_000002"
    shutil.copytree(checkpoint.latest_checkpoint(lora_run / "checkpoints"), folder)
    weights = folder / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match=r"adapter_model.safetensors: truncated"):
        checkpoint.adapter_folder(folder)
    checkpoint.load_checkpoint(folder)  # resume reads policy.safetensors and state.pt only


def test_a_kill_at_every_step_of_a_save_with_an_adapter_leaves_a_loadable_latest(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """As tests/test_checkpoint_faults.py, with the policy's adapter writer: the adapter's files go
    through the same (instrumented) file-system calls inside the temporary folder."""
    from gfnlm.training.config import ModelConfig

    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(tiny_model_dir), lora_targets=["q_proj", "v_proj"]),
        tiny_model_dir,
        torch.device("cpu"),
    )

    def save(directory: Path, step: int, value: float) -> None:
        with torch.no_grad():
            for name, param in policy.model.named_parameters():
                if "lora_B" in name:
                    param.fill_(value)
        state = policy.trainable_state_dict()
        checkpoint.save_checkpoint(
            directory,
            step,
            state,
            {"step": step, "value": value},
            "x: 1",
            extra_files=policy.adapter_writer(state),
        )

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
        adapter = safetensors.torch.load_file(
            checkpoint.adapter_folder(point.path) / "adapter_model.safetensors"
        )
        assert all(float(w.max()) == value for name, w in adapter.items() if "lora_B" in name), (
            f"kill at step {at}"
        )
        if completed:
            break
        at += 1
    assert at >= 10, f"only {at} file-system steps were instrumented"


# ---------------------------------------------------------------------- gfnlm export
@pytest.mark.parametrize("run_name", ["lora", "full"])
def test_merged_export_loads_with_transformers_and_gives_the_policys_logprobs(
    run_name: str, lora_run: Path, full_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    run = lora_run if run_name == "lora" else full_run
    out = tmp_path / "merged"
    assert export(run, "--merged", out) == 0
    line = capsys.readouterr().out.strip()
    assert (
        "\n" not in line
        and line.startswith("gfnlm export: wrote the merged model")
        and str(out) in line
    )
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not list(tmp_path.glob(".merged*"))  # no staging folder left
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (
        model.dtype == torch.float32
        and json.loads((out / "config.json").read_text())["dtype"] == "float32"
    )
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


def test_adapter_export_round_trips(
    lora_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "adapter"
    assert export(lora_run, "--adapter", out) == 0
    assert "wrote the PEFT adapter" in capsys.readouterr().out
    latest = checkpoint.latest_checkpoint(lora_run / "checkpoints")
    assert (out / "adapter_model.safetensors").read_bytes() == (
        latest / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    # the same adapter config, naming the base model by its folder's name instead of its path
    config, saved = (
        json.loads((f / "adapter_config.json").read_text()) for f in (out, latest / "adapter")
    )
    assert saved["base_model_name_or_path"] == str(tiny_model_dir)
    assert config == {**saved, "base_model_name_or_path": tiny_model_dir.name}
    assert (out / "README.md").is_file()
    policy = run_policy(lora_run)
    peft_model = PeftModel.from_pretrained(base_model(tiny_model_dir), out)
    assert max_gap(plain_logps(peft_model, policy.tokenizer), policy_logps(policy)) <= FP32_TOL
    # --dtype casts the adapter's tensors.
    assert export(lora_run, "--adapter", tmp_path / "half", "--dtype", "float16") == 0
    assert {
        w.dtype
        for w in safetensors.torch.load_file(
            tmp_path / "half" / "adapter_model.safetensors"
        ).values()
    } == {torch.float16}


def test_a_checkpoint_without_adapter_folder_still_exports(
    lora_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint written before adapters were saved: policy.safetensors and a 3-file manifest."""
    old_run = tmp_path / "old"
    shutil.copytree(lora_run, old_run)
    for folder in (old_run / "checkpoints").glob("step_*"):
        shutil.rmtree(folder / "adapter")
        manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
        manifest["files"] = {
            k: v for k, v in manifest["files"].items() if not k.startswith("adapter/")
        }
        (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    assert export(old_run, "--adapter", tmp_path / "adapter") == 0
    assert export(old_run, "--merged", tmp_path / "merged") == 0
    new = checkpoint.latest_checkpoint(lora_run / "checkpoints") / "adapter"
    rebuilt, saved = (
        safetensors.torch.load_file(f / "adapter_model.safetensors")
        for f in (tmp_path / "adapter", new)
    )
    assert rebuilt.keys() == saved.keys() and all(torch.equal(rebuilt[k], saved[k]) for k in saved)
    config, saved_config = (
        json.loads((f / "adapter_config.json").read_text()) for f in (tmp_path / "adapter", new)
    )
    assert config == {**saved_config, "base_model_name_or_path": tiny_model_dir.name}
    policy = run_policy(lora_run)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert max_gap(plain_logps(model, policy.tokenizer), policy_logps(policy)) <= FP32_TOL


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: bad input must be found before one."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_bad_inputs_are_one_line_before_any_model_loads(
    lora_run: Path, full_run: Path, tmp_path: Path, no_model_loads, capsys
) -> None:
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
        (
            [tmp_path / "no-run", "--merged", tmp_path / "o1"],
            r"RUN='.*no-run': no such run directory",
        ),
        (
            [tmp_path, "--merged", tmp_path / "o2"],
            r"RUN='.*': no checkpoint found \(expected RUN/checkpoints/step_\*\)",
        ),
        (
            [lora_run, "--step", 7, "--merged", tmp_path / "o3"],
            r"--step=7: run '.*' has no checkpoint of step 7; its checkpoints are of steps 1, 2",
        ),
        (
            [full_run, "--adapter", tmp_path / "o4"],
            r"--adapter: run '.*' fine-tuned all weights \(model.lora=false\)",
        ),
        (
            [lora_run, "--merged", taken],
            r"--merged='.*taken': exists and is not empty; add --force to replace it",
        ),
        ([lora_run, "--adapter", a_file], r"--adapter='.*file': exists and is not a folder"),
        ([lora_run, "--merged", a_file / "out"], r"--merged='.*file/out': cannot write there"),
        ([lora_run, "--step", -1, "--merged", tmp_path / "o5"], r"--step=-1: must be >= 0"),
        (
            [tied, "--merged", tmp_path / "o6"],
            (
                r"--merged: model.lora_targets=\['q_proj', 'lm_head'\] adapts the "
                r"embedding or output layer, which '.*' ties together"
            ),
        ),
        (
            [lora_run, "--merged", tmp_path / "o7", "--force"],
            None,
        ),  # (the case that works: checked last)
    ]
    import re

    for args, pattern in cases[:-1]:
        assert export(*args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.fullmatch(rf"gfnlm export: error: {pattern}.*", err[0]), (
            args,
            err,
        )
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "file",
        "taken",
        "tied",
    ]  # nothing written, no staging
    with pytest.raises(
        AssertionError, match="a model was loaded"
    ):  # valid input: it gets to the model load
        export(*cases[-1][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "file",
        "taken",
        "tied",
    ]  # the staging folder went too
    with pytest.raises(
        SystemExit
    ) as exit_info:  # neither --merged nor --adapter: argparse's usage error
        export(lora_run)
    assert exit_info.value.code == 2


def test_force_replaces_atomically_and_a_failed_export_leaves_out_untouched(
    lora_run: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_copy = export_module.copy_adapter

    def fails_half_way(adapter, folder, dtype):
        real_copy(adapter, folder, dtype)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "copy_adapter", fails_half_way)
        with pytest.raises(export_module.ExportError) as error:
            export_module.export_checkpoint(str(lora_run), "adapter", str(out), force=True)
    assert str(error.value) == (
        f"cannot write the export to {str(out)!r}: no space left on device; "
        f"{str(out)!r} is unchanged"
    )
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        and (out / "old.txt").read_text() == "old"
    )
    assert export(lora_run, "--adapter", out, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # An empty existing folder needs no --force.
    (tmp_path / "empty").mkdir()
    assert export(lora_run, "--adapter", tmp_path / "empty") == 0


# ---------------------------------------------------------- export's guarantees under faults
# What OUT holds before an export replaces it: a file and a sub-folder, so that an exchange of
# folders (not of single files) is what the tests see.
PREVIOUS = {"old.txt": b"old", "sub/kept.bin": bytes(range(256))}


def tree(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` by its relative path, with its bytes; None when it is missing."""
    if not folder.is_dir():
        return None
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_tree(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def hidden(out: Path) -> list[str]:
    """The hidden names an export to ``out`` makes next to it (staging, set-aside, journal)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def adapter_export(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of an uninterrupted ``export --adapter`` of the run's latest checkpoint to a
    folder named ``out`` (the name its model card gives), as every test below exports to."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert export(lora_run, "--adapter", out) == 0
    return tree(out)


def unsupported(source: Path, target: Path, flags: int) -> None:
    """renameat2 as on a file system without it."""
    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(source), None, str(target))


class ExportFaults(FileSystemFaults):
    """The checkpoint tests' kill injection, with the steps an export adds: plain renames, the
    renameat2 exchange and the copies of the adapter's files."""

    STEPS: ClassVar = [
        *FileSystemFaults.STEPS,
        (os, "rename"),
        (export_module, "renameat2"),
        (shutil, "copyfile"),
    ]


def test_renameat2_exchanges_two_folders_and_noreplace_refuses(tmp_path: Path) -> None:
    write_tree(tmp_path / "a", {"x": b"a"})
    write_tree(tmp_path / "b", {"y": b"b"})
    export_module.renameat2(tmp_path / "a", tmp_path / "b", export_module.RENAME_EXCHANGE)
    assert tree(tmp_path / "a") == {"y": b"b"} and tree(tmp_path / "b") == {"x": b"a"}
    with pytest.raises(FileExistsError):
        export_module.renameat2(tmp_path / "a", tmp_path / "b", export_module.RENAME_NOREPLACE)
    with pytest.raises(FileNotFoundError):
        export_module.renameat2(tmp_path / "a", tmp_path / "c", export_module.RENAME_EXCHANGE)
    export_module.renameat2(tmp_path / "a", tmp_path / "c", export_module.RENAME_NOREPLACE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "journal"])
def test_a_kill_at_every_step_of_export_force_leaves_the_old_or_the_new_export(
    lora_run: Path, adapter_export: dict[str, bytes], tmp_path: Path, monkeypatch, exchange: bool
) -> None:
    """``export --adapter OUT --force`` over an OUT holding other files, killed at its k-th
    file-system step for every k until one completes: OUT then holds exactly its previous files
    or the complete export (after the next export's journal replay, where the file system cannot
    exchange), and the next export succeeds and leaves nothing hidden next to OUT."""
    new, dead = adapter_export, dead_pid()
    if not exchange:
        monkeypatch.setattr(export_module, "renameat2", unsupported)
    at, kills, left_behind, replayed = 1, [], 0, 0
    while True:
        out = tmp_path / f"k{at}" / "out"
        write_tree(out, PREVIOUS)
        with monkeypatch.context() as patch:
            patch.setattr(export_module, "_process_id", lambda: dead)  # the killed process is gone
            faults = ExportFaults(patch, at)
            try:
                export_module.export_checkpoint(str(lora_run), "adapter", str(out), force=True)
                completed = True
            except Killed as killed:
                completed = False
                kills.append(str(killed))
        after = tree(out)
        if after is None:  # killed between the journal's two renames: the next export repairs it
            assert not exchange and (out.parent / ".out.export-journal").is_file(), (
                f"kill at {kills[-1]}"
            )
            export_module.check_output(str(out), "--adapter", True)  # what an export does first
            after, replayed = tree(out), replayed + 1
        assert after == new if completed else after in (PREVIOUS, new), f"kill {at} at {kills[-1]}"
        left_behind += bool(hidden(out))
        assert export(lora_run, "--adapter", out, "--force") == 0, f"kill {at} at {kills[-1]}"
        assert tree(out) == new and hidden(out) == [], (at, kills[-1], hidden(out))
        if completed:
            break
        at += 1
    assert faults.count >= 15, f"only {faults.count} file-system steps were instrumented"
    expected = (
        {"renameat2", "fsync", "rmtree"} if exchange else {"rename", "mkstemp", "replace", "unlink"}
    )
    assert expected <= set(kills), kills
    assert left_behind, "no kill left a hidden folder: the instrumentation missed the writes"
    assert replayed or exchange, "no kill fell between the journal's two renames"


def test_a_dead_exports_leftovers_are_removed_and_a_running_ones_kept(
    lora_run: Path, adapter_export: dict[str, bytes], tmp_path: Path
) -> None:
    out, dead = tmp_path / "out", dead_pid()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        write_tree(tmp_path / f".out.tmp-{dead}-a1b2", {"model.safetensors": b"x" * 1000})
        write_tree(tmp_path / f".out.old-{dead}-c3d4", PREVIOUS)
        (tmp_path / f".out.tmp-{dead}-e5f6.journal").write_text("{}")
        running = f".out.tmp-{sleeper.pid}-g7h8"
        write_tree(tmp_path / running, {"part": b"y"})
        others = f".other.tmp-{dead}-i9j0"  # another output's
        (tmp_path / others).mkdir()
        assert export(lora_run, "--adapter", out) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == [others, running, "out"]
        assert tree(out) == adapter_export and tree(tmp_path / running) == {"part": b"y"}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_output_inside_a_runs_checkpoints_is_refused(
    lora_run: Path, tmp_path: Path, no_model_loads, capsys
) -> None:
    checkpoints = lora_run / "checkpoints"
    copied = tmp_path / "step_copy"  # a checkpoint folder outside any run
    shutil.copytree(checkpoints / "step_000002", copied)
    before = tree(lora_run)
    cases = [
        (
            checkpoints / "x",
            f"is inside the run's checkpoints folder {str(checkpoints.resolve())!r}",
        ),
        (
            checkpoints / "step_000002" / "out",
            f"is inside the run's checkpoints folder {str(checkpoints.resolve())!r}",
        ),
        (checkpoints, f"is the run's checkpoints folder {str(checkpoints.resolve())!r}"),
        (copied / "out", f"is inside the checkpoint {str(copied.resolve())!r}"),
    ]
    for out, where in cases:
        assert export(lora_run, "--merged", out, "--force") == 2, out
        err = capsys.readouterr().err.strip().splitlines()
        expected = (
            f"gfnlm export: error: --merged={str(out)!r}: {where}, whose contents training "
            "prunes and replaces; choose a path outside it"
        )
        assert err == [expected], err
    assert tree(lora_run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["step_copy"]
    assert not (copied / "out").exists()


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the command printed on stderr, less transformers' progress bar of the model load."""
    return [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if not line.startswith("Loading weights")
    ]


def merged_weights_size(lora_run: Path, tmp_path: Path) -> int:
    out = tmp_path / "sized"
    assert export(lora_run, "--merged", out) == 0
    return (out / "model.safetensors").stat().st_size


@pytest.mark.parametrize("room", ["none", "weights-only"])
def test_a_full_disk_is_one_line_naming_out_and_its_previous_contents_survive(
    lora_run: Path, tmp_path: Path, room: str, capsys
) -> None:
    """A real tmpfs too small for the merged export: the weights do not fit (safetensors' error),
    or they fit and the tokenizer and config files after them do not (plain writes and copies)."""
    size = 2 * 2**20 if room == "none" else merged_weights_size(lora_run, tmp_path) + 64 * 2**10
    with mounted_tmpfs(tmp_path / "small", f"size={size}") as disk:
        out = disk / "merged"
        write_tree(out, PREVIOUS)
        capsys.readouterr()
        assert export(lora_run, "--merged", out, "--force") == 1
        err = error_lines(capsys)
        expected = (
            f"gfnlm export: error: cannot write the export to {str(out)!r}: no space left on "
            f"device; {str(out)!r} is unchanged"
        )
        assert err == [expected], err
        assert tree(out) == PREVIOUS and sorted(p.name for p in disk.iterdir()) == ["merged"]
        # Nothing there at all: the output is not created.
        fresh = disk / "fresh"
        assert export(lora_run, "--merged", fresh) == 1
        err = error_lines(capsys)
        assert len(err) == 1 and err[0].endswith(
            f"no space left on device; {str(fresh)!r} was not created"
        ), err
        assert sorted(p.name for p in disk.iterdir()) == ["merged"]


@pytest.mark.parametrize("where", ["exchange", "journal-second-rename"])
def test_an_io_error_while_publishing_is_one_line_naming_out(
    lora_run: Path,
    adapter_export: dict[str, bytes],
    tmp_path: Path,
    monkeypatch,
    where: str,
    capsys,
) -> None:
    out = tmp_path / "out"
    write_tree(out, PREVIOUS)

    def eio(source: Path, target: Path, flags: int = 0) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(source), None, str(target))

    if where == "exchange":
        monkeypatch.setattr(export_module, "renameat2", eio)
    else:  # no exchange: OUT goes aside, then putting the export in its place fails
        real_rename = os.rename
        monkeypatch.setattr(export_module, "renameat2", unsupported)
        monkeypatch.setattr(
            os,
            "rename",
            lambda a, b: eio(a, b) if Path(b) == out and ".tmp-" in str(a) else real_rename(a, b),
        )
    assert export(lora_run, "--adapter", out, "--force") == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        f"gfnlm export: error: cannot write the export to {str(out)!r}: input/output error; "
        f"{str(out)!r} is unchanged"
    )
    assert err == [expected], err
    assert tree(out) == PREVIOUS and hidden(out) == []
    monkeypatch.undo()
    assert export(lora_run, "--adapter", out, "--force") == 0 and tree(out) == adapter_export


# ---------------------------------------------------------------------- served by SGLang
def test_sglang_serves_the_merged_export_with_the_policys_logprobs(
    lora_run: Path, tmp_path: Path
) -> None:
    """A real SGLang CPU server started on the exported folder (``make sglang-cpu``): the probe's
    log-probs and sampled rollouts' log-probs equal the policy's (fp32 both sides)."""
    from test_sglang import LOGP_TOL, cpu_launch, prompt_batch, served_logp_gap

    from gfnlm.samplers.sglang import SGLangSampler
    from gfnlm.serving.serve import LaunchConfig, SGLangServer

    out = tmp_path / "merged"
    assert export(lora_run, "--merged", out) == 0
    policy = run_policy(lora_run)
    with SGLangServer(out, LaunchConfig(**cpu_launch())) as server:
        sampler = SGLangSampler(
            url=server.url, max_new_tokens=8, weight_sync="none", identity_tolerance=1e-3
        )
        sampler.setup(
            policy
        )  # tokenizer probe, then mean |Δ log p| on a probe <= 1e-3, else ServerError
        ids = policy.tokenizer("The capital of France is Paris.", add_special_tokens=False)[
            "input_ids"
        ]
        answer = sampler._client.generate(
            {
                "input_ids": ids,
                "sampling_params": {"max_new_tokens": 0},
                "return_logprob": True,
                "logprob_start_len": 0,
            },
            "probe",
        )[0]
        served = torch.tensor([e[0] for e in answer["meta_info"]["input_token_logprobs"][1:]])
        with torch.no_grad():
            logits = policy.model(input_ids=torch.tensor([ids])).logits[0, :-1]
        local = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        probe_gap = float((served - local).abs().mean())
        rollout_gap = served_logp_gap(policy, sampler.sample(prompt_batch(policy), 2))
        print(
            f"\nSGLang vs policy: probe mean |Δ log p| = {probe_gap:.2e}, "
            f"rollouts max |Δ| = {rollout_gap:.2e}"
        )
        assert probe_gap < 1e-3 and rollout_gap < LOGP_TOL, (probe_gap, rollout_gap)
        sampler.close()
