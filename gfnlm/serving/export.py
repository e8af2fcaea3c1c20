"""``gfnlm export``: a run's checkpoint as files other tools load.

* ``merged``: a Hugging Face model folder (safetensors weights with the LoRA deltas merged in, or
  the full weights of a full fine-tuning run; ``config.json``, ``generation_config.json`` when the
  base model has one, the tokenizer files and chat template) that ``AutoModelForCausalLM`` /
  ``AutoTokenizer.from_pretrained``, SGLang and vLLM load like any model folder.
* ``adapter``: the PEFT adapter folder alone (``adapter_config.json``, ``adapter_model.safetensors``)
  for ``PeftModel.from_pretrained(base_model, folder)`` (LoRA runs only). Copied from the
  checkpoint's ``adapter/`` when it has one; checkpoints written before adapters were saved get it
  rebuilt from ``policy.safetensors``.

Every input is checked before any model loads: the run and its checkpoint, ``--step``, the output
folder (which must be empty or absent unless ``force``) and whether its parent is writable. The
output is written into a temporary folder next to it and renamed into place, so the output path
holds either the previous contents or the complete export, never a part of it.
"""

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch

from gfnlm.training import checkpoint
from gfnlm.training.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from gfnlm.training.policy import CausalLMPolicy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KINDS = ("merged", "adapter")
# LoRA on these modules cannot be merged into a model whose output layer shares the embedding matrix.
_TIED_MODULES = ("lm_head", "embed_tokens")


@attrs.frozen
class ExportSource:
    """A checkpoint to export: its folder, the run's config and the trainable weights it holds."""

    path: Path
    config: RunConfig
    weights: dict[str, torch.Tensor]


def find_source(run: str, step: int | None = None) -> ExportSource:
    """The run's newest complete checkpoint (or the newest complete one of ``step``), read without
    loading a model. ``run`` is a run directory or one checkpoint folder. A missing run or step is a
    one-line :class:`~gfnlm.training.config.ConfigError`; a broken checkpoint a ``CheckpointError``."""
    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"RUN={run!r}: no such run directory")
    if (run_dir / checkpoint.STATE_FILE).is_file():  # a checkpoint folder given directly
        if step is not None and checkpoint.checkpoint_key(run_dir) and checkpoint.checkpoint_step(run_dir) != step:
            raise ConfigError(f"--step={step}: {run!r} is the checkpoint of step {checkpoint.checkpoint_step(run_dir)}")
        folder, run_config = run_dir, run_dir.parent.parent / "config.yaml"
        weights, _ = checkpoint.load_checkpoint(folder)
    else:
        checkpoints_dir = run_dir / "checkpoints"
        run_config = run_dir / "config.yaml"
        if step is None:
            point = checkpoint.find_resume_point(checkpoints_dir) if checkpoints_dir.is_dir() else None
            if point is None:
                raise ConfigError(f"RUN={run!r}: no checkpoint found (expected RUN/checkpoints/step_*)")
            if point.note:
                print(f"gfnlm: {point.note}", file=sys.stderr, flush=True)
            folder, weights = point.path, point.policy_state
        else:
            folder, weights = _load_step(run, checkpoints_dir, step)
    config_file = folder / checkpoint.CONFIG_FILE
    config_file = config_file if config_file.is_file() else run_config
    if not config_file.is_file():
        raise ConfigError(f"RUN={run!r}: {str(folder)!r} has no {checkpoint.CONFIG_FILE} and the run no config.yaml")
    return ExportSource(folder, load_config(config_file), weights)


def _load_step(run: str, checkpoints_dir: Path, step: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """The newest save of ``step`` that loads (``step_N-k`` is a later save of step N)."""
    found = sorted((p for p in checkpoints_dir.glob("step_*") if p.is_dir() and checkpoint.checkpoint_key(p)),
                   key=checkpoint.checkpoint_key, reverse=True) if checkpoints_dir.is_dir() else []
    matching = [p for p in found if checkpoint.checkpoint_step(p) == step]
    if not matching:
        steps = sorted({checkpoint.checkpoint_step(p) for p in found})
        have = f"its checkpoints are of steps {', '.join(map(str, steps))}" if steps else "it has no checkpoint"
        raise ConfigError(f"--step={step}: run {run!r} has no checkpoint of step {step}; {have}")
    errors = []
    for folder in matching:
        try:
            return folder, checkpoint.load_checkpoint(folder)[0]
        except checkpoint.CheckpointError as error:
            errors.append(str(error))
    raise checkpoint.CheckpointError(f"--step={step}: no complete checkpoint of that step ({'; '.join(errors)})")


def check_output(out: str, flag: str, force: bool) -> Path:
    """``out`` as a path that may be written: absent, an empty folder, or (``force``) a folder to
    replace. Whether its parent is writable is found out by :func:`staging_folder`."""
    path = Path(out).expanduser()
    if path.is_symlink():
        raise ConfigError(f"{flag}={out!r}: is a symbolic link; give the folder it points to")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag}={out!r}: exists and is not a folder; choose another path")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ConfigError(f"{flag}={out!r}: exists and is not empty; add --force to replace it")
    return path


def check_not_inside(out: Path, flag: str, *kept: Path) -> None:
    """``out`` must not be (or contain) the base model folder or the checkpoint being exported."""
    target = out.resolve()
    for path in kept:
        here = path.resolve()
        if target == here or target in here.parents:
            raise ConfigError(f"{flag}={str(out)!r}: would replace {str(path)!r}, which the export reads; "
                              "choose another path")


def staging_folder(out: Path, flag: str) -> Path:
    """A new empty temporary folder next to ``out`` (same file system, so the final rename is
    atomic); its parent is created. A parent that cannot be written is a one-line ConfigError."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        if isinstance(error, FileExistsError | NotADirectoryError):
            reason = "a path above it is a file, not a folder"
        raise ConfigError(f"{flag}={str(out)!r}: cannot write there ({reason})") from None


def publish(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out``. An existing ``out`` (empty, or replaced
    under ``--force``) is first renamed aside and deleted after: ``out`` never names a partial folder."""
    _usual_permissions(staging)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-")) / "contents"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def _usual_permissions(folder: Path) -> None:
    """The permissions a plain ``mkdir`` / file write would give (temporary folders and safetensors
    files are private, 0700 / 0600), so that a server running as another user can read the export."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_atomically(out: Path, flag: str, write: Callable[[Path], None], staging: Path | None = None) -> None:
    """``write(folder)`` into a staging folder (:func:`staging_folder`, unless given), then
    :func:`publish` it; on any failure the staging folder is deleted and ``out`` is untouched."""
    staging = staging_folder(out, flag) if staging is None else staging
    try:
        write(staging)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_policy(source: ExportSource, model_dir: Path) -> "CausalLMPolicy":
    """The run's model on CPU, in float32 (float64 for float64 runs), holding the checkpoint's
    weights: the PEFT model of a LoRA run, the plain model of a full fine-tuning run."""
    from gfnlm.training.policy import CausalLMPolicy

    dtype = "float64" if source.config.model.dtype == "float64" else "float32"
    model_config = attrs.evolve(source.config.model, dtype=dtype, gradient_checkpointing=False)
    policy = CausalLMPolicy.from_config(model_config, model_dir, torch.device("cpu"), keep_base=False)
    policy.load_trainable_state_dict(source.weights)
    return policy


def write_merged(model: torch.nn.Module, model_dir: Path, folder: Path, dtype: torch.dtype) -> None:
    """A Hugging Face model folder: ``model``'s weights with LoRA merged in (as ``dtype``), the base
    model's config (with that dtype) and generation config, and its tokenizer."""
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, AutoTokenizer

    from gfnlm.samplers.sglang import merged_state_dict

    save_torch_state_dict(merged_state_dict(model, dtype), folder, metadata={"format": "pt"})
    config = AutoConfig.from_pretrained(model_dir)
    config.dtype = dtype
    config.save_pretrained(folder)
    if (model_dir / "generation_config.json").is_file():
        shutil.copyfile(model_dir / "generation_config.json", folder / "generation_config.json")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)  # as the base has it (not the policy's padding)


def copy_adapter(adapter: Path, folder: Path, dtype: torch.dtype | None) -> None:
    """The checkpoint's adapter folder, its tensors cast to ``dtype`` when given."""
    from safetensors.torch import load_file, save_file

    for file in sorted(adapter.iterdir()):
        if file.is_file():
            shutil.copyfile(file, folder / file.name)
    weights = folder / "adapter_model.safetensors"
    if dtype is not None and weights.is_file():
        tensors = {k: v.to(dtype).contiguous() for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})


def export_checkpoint(run: str, kind: str, out: str, step: int | None = None, dtype: str | None = None,
                      force: bool = False) -> str:
    """Export ``run``'s newest complete checkpoint (or ``step``'s) as ``kind`` (``merged`` or
    ``adapter``) into the folder ``out``; returns the line that says what was written where.
    ``dtype``: of the written weights (default float32 for ``merged``, as saved for ``adapter``)."""
    from gfnlm.training.models import resolve_model_path

    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}: must be one of {', '.join(KINDS)}")
    flag = f"--{kind}"
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    if step is not None and step < 0:
        raise ConfigError(f"--step={step}: must be >= 0")
    path = check_output(out, flag, force)
    source = find_source(run, step)
    model = source.config.model
    if kind == "adapter" and not model.lora:
        raise ConfigError(f"--adapter: run {run!r} fine-tuned all weights (model.lora=false), so it has no "
                          "adapter; export it with --merged")
    model_dir = resolve_model_path(model.path)
    check_not_inside(path, flag, model_dir, source.path)
    if kind == "merged" and model.lora and _lora_on_tied_weights(model_dir, model.lora_targets):
        raise ConfigError(f"--merged: model.lora_targets={list(model.lora_targets)} adapts the embedding or output "
                          f"layer, which {str(model_dir)!r} ties together: merged weights cannot hold that adapter; "
                          "export it with --adapter")
    adapter = checkpoint.adapter_folder(source.path) if kind == "adapter" else None
    torch_dtype = DTYPES[dtype] if dtype is not None else None
    staging = staging_folder(path, flag)  # the last check: the output's parent can be written
    try:
        if adapter is not None:
            write = functools.partial(copy_adapter, adapter, dtype=torch_dtype)
        else:
            policy = load_policy(source, model_dir)
            if kind == "adapter":
                write = functools.partial(policy.save_adapter, state=source.weights, dtype=torch_dtype)
            else:
                write = functools.partial(write_merged, policy.model, model_dir, dtype=torch_dtype or torch.float32)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_atomically(path, flag, write, staging)
    if kind == "merged":
        what = f"merged model ({f'LoRA merged into {model_dir}' if model.lora else 'all weights'}, {dtype or 'float32'})"
    else:
        what = f"PEFT adapter (base model {model_dir})"
    return f"wrote the {what} of checkpoint {str(source.path)!r} to {str(path)!r}"


def _lora_on_tied_weights(model_dir: Path, targets: list[str]) -> bool:
    from transformers import AutoConfig

    if not getattr(AutoConfig.from_pretrained(model_dir), "tie_word_embeddings", False):
        return False
    return any(target.split(".")[-1] in _TIED_MODULES for target in targets)
