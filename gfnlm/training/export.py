"""``gfnlm export``: a run's checkpoint as files other tools load.

* ``merged``: a Hugging Face model folder (safetensors weights with the LoRA deltas merged in, or
  the full weights of a full fine-tuning run; ``config.json``, a ``generation_config.json`` with
  which ``generate()`` samples as the policy was trained to, the tokenizer files and chat
  template) that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``, SGLang and vLLM load
  like any model folder.
* ``adapter``: the PEFT adapter folder (``adapter_config.json``, naming the base model by its hub
  id, not by a path of this machine, and ``adapter_model.safetensors``) for
  ``PeftModel.from_pretrained(base_model, folder)`` (LoRA runs only). Copied from the checkpoint's
  ``adapter/`` when it has one; a checkpoint without one gets it rebuilt from
  ``policy.safetensors``.

Both get a model card, ``README.md``: the run's target and its options, objective, steps trained,
data, base model, gfnlm version, how to load the folder and the resolved config
(``gfnlm.training.model_card``).

Every input is checked before any model loads: the run and its checkpoint, ``--step``, the output
folder (which must be empty or absent unless ``force``, and outside every run's checkpoints folder,
whose contents training prunes and replaces) and whether its parent is writable.

The guarantees are those of a checkpoint save: whatever instant an export is killed at, the output
path holds either the previous contents or the complete export, never a part of it and never
nothing. The export is written into a staging folder next to the output (``.OUT.tmp-<pid>-*``),
synced to disk, and swapped with the output in one ``renameat2(RENAME_EXCHANGE)`` (Linux). Where
the file system cannot exchange, the two renames that take its place are recorded first in a
journal (``.OUT.export-journal``): a kill between them leaves the output missing until the next
export to that path replays the journal, which puts the previous contents back. Each export
starts by removing what killed exports to its path left behind (the hidden folders of processes
that no longer run). A full disk or an I/O error is one line naming the output path
(:class:`ExportError`), the output as it was.
"""

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch
from safetensors import SafetensorError

from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.training import checkpoint
from gfnlm.training.config import RunConfig, SamplingConfig, load_config
from gfnlm.training.model_card import (
    Provenance,
    model_card,
    portable_base_name,
    sampling_generation_config,
    set_adapter_base,
)

if TYPE_CHECKING:
    from gfnlm.training.policy import CausalLMPolicy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KINDS = ("merged", "adapter")
# LoRA on these modules cannot be merged into a model whose output layer shares the embedding
# matrix.
_TIED_MODULES = ("lm_head", "embed_tokens")
# renameat2(2): <fcntl.h> and <linux/fs.h>.
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# What renameat2 answers where the kernel, the C library or the file system cannot do the flag.
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
# How errors of the Rust writers (safetensors, tokenizers) carry the OS error.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class ExportError(RunError):
    """The export cannot be written (a full disk, an I/O error); the message names the output path
    and says what it holds."""


@attrs.frozen
class ExportSource:
    """A checkpoint to export: its folder, the run's config and the trainable weights it holds."""

    path: Path
    config: RunConfig
    weights: dict[str, torch.Tensor]
    step: int = 0  # the optimiser steps the checkpoint has taken


def find_source(run: str, step: int | None = None) -> ExportSource:
    """The run's newest complete checkpoint (or the newest complete one of ``step``), read without
    loading a model (:func:`~gfnlm.training.checkpoint.open_run`)."""
    opened = checkpoint.open_run(run, step, field="RUN")
    if opened.note:
        print(f"gfnlm: {opened.note}", file=sys.stderr, flush=True)
    step = opened.state.get("step")
    if not isinstance(step, int):
        step = checkpoint.checkpoint_step(opened.path)
    return ExportSource(opened.path, load_config(opened.config_file), opened.policy_state, step)


# ---------------------------------------------------------------------- the output path
def check_output(out: str, flag: str, force: bool) -> Path:
    """``out`` as a path that may be written: absent, an empty folder, or (``force``) a folder to
    replace, outside every run's checkpoints. What killed exports to it left is settled first
    (:func:`settle_output`), so that ``out`` is checked as the last export left it. Whether its
    parent is writable is found out by :func:`staging_folder`."""
    path = Path(out).expanduser()
    if path.is_symlink():
        raise ConfigError(f"{flag}={out!r}: is a symbolic link; give the folder it points to")
    check_outside_checkpoints(path, flag)
    settle_output(path, flag)
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
            raise ConfigError(
                f"{flag}={str(out)!r}: would replace {str(path)!r}, which the export reads; "
                "choose another path"
            )


def check_outside_checkpoints(out: Path, flag: str) -> None:
    """``out`` must not be, nor lie inside, a run's ``checkpoints`` folder or a checkpoint folder:
    training prunes old checkpoints and replaces ``latest``, and would delete an export there
    with the checkpoint holding it (or take an export named ``step_*`` for a broken checkpoint)."""
    target = out.resolve()
    for folder in reversed((target, *target.parents)):  # outermost first: name the run's folder
        if folder.name == "checkpoints" and _holds_checkpoints(folder):
            where = f"the run's checkpoints folder {str(folder)!r}"
        elif _is_file(folder / checkpoint.MANIFEST) or _is_file(folder / checkpoint.STATE_FILE):
            where = f"the checkpoint {str(folder)!r}"
        else:
            continue
        relation = "is" if folder == target else "is inside"
        raise ConfigError(
            f"{flag}={str(out)!r}: {relation} {where}, whose contents training prunes "
            "and replaces; choose a path outside it"
        )


def _holds_checkpoints(folder: Path) -> bool:
    """A run's ``checkpoints`` folder: beside the run's ``config.yaml``, or holding ``latest`` or
    ``step_*`` checkpoint folders."""
    if _is_file(folder.parent / "config.yaml") or _is_file(folder / checkpoint.LATEST):
        return True
    try:
        return any(checkpoint.checkpoint_key(p) and p.is_dir() for p in folder.glob("step_*"))
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where it cannot be looked at (a folder without permission)."""
    try:
        return path.is_file()
    except OSError:
        return False


# ---------------------------------------------------------------------- what killed exports left
def _process_id() -> int:
    """The id written into this process's staging names and journal, so that a later export can
    tell the leftovers of a dead process from the folders of one still writing."""
    return os.getpid()


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one of another user counts: it cannot be signalled)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def settle_output(out: Path, flag: str) -> None:
    """Before an export to ``out``: replay the journal of one killed between its two renames
    (:func:`replay_journal`), then delete the staging and set-aside folders of dead exports to it
    (:func:`remove_dead_leftovers`): model-sized folders that nothing else removes."""
    replay_journal(out, flag)
    remove_dead_leftovers(out)


def _journal_path(out: Path) -> Path:
    return out.parent / f".{out.name}.export-journal"


def _sibling(out: Path, name: object) -> Path | None:
    """``out.parent / name`` for a name an export gives (``.OUT.*``), else None: a journal names
    nothing outside the output's own hidden folders."""
    if not isinstance(name, str) or Path(name).name != name or not name.startswith(f".{out.name}."):
        return None
    return out.parent / name


def replay_journal(out: Path, flag: str) -> None:
    """Finish an export killed between the two renames of :func:`_replace_with_journal`: when
    ``out`` is missing, its previous contents go back from where the journal says they were set
    aside; then the journal and the folders it names are deleted. A journal of an export still
    running is a one-line ConfigError (two exports to one path at once)."""
    journal = _journal_path(out)
    try:
        entry = json.loads(journal.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return
    except (OSError, ValueError):
        entry = {}
    entry = entry if isinstance(entry, dict) else {}
    pid = entry.get("pid")
    if isinstance(pid, int) and _process_alive(pid) and pid != os.getpid():
        raise ConfigError(
            f"{flag}={str(out)!r}: another export (process {pid}) is replacing it now; "
            "wait for it to end"
        )
    old, new = _sibling(out, entry.get("old")), _sibling(out, entry.get("new"))
    try:
        if not out.exists():
            if old is None or not old.is_dir():
                raise ExportError(
                    f"{str(out)!r} is missing and {str(journal)!r} does not say where its "
                    f"previous contents are; look for them in .{out.name}.old-* beside it"
                )
            os.rename(old, out)
            checkpoint._fsync_dir(out.parent)
        journal.unlink()
    except OSError as error:
        raise ExportError(
            f"cannot put back the previous contents of {str(out)!r} from "
            f"{str(old)!r}: {_write_reason(error)}"
        ) from None
    for leftover in (old, new):
        if leftover is not None:
            shutil.rmtree(leftover, ignore_errors=True)


def remove_dead_leftovers(out: Path) -> None:
    """Delete the ``.OUT.tmp-<pid>-*`` and ``.OUT.old-<pid>-*`` folders and files next to ``out``
    whose process is dead (killed exports' staging folders, journal drafts, set-aside previous
    contents); those of a live process, an export running now, are kept."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)-")
    try:
        entries = list(out.parent.iterdir())
    except OSError:  # no parent yet, or not a folder: nothing to remove
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink(missing_ok=True)
            except OSError:
                # as rmtree's ignore_errors: a leftover that cannot go does not stop the export
                pass


# ---------------------------------------------------------------------- writing and publishing
def staging_folder(out: Path, flag: str) -> Path:
    """A new empty folder ``.OUT.tmp-<pid>-*`` next to ``out`` (same file system, so the exchange
    is atomic); its parent is created. A parent that cannot be written is a one-line
    ConfigError; a full disk or an I/O error an :class:`ExportError`."""
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{_process_id()}-"))
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):  # not the user's input
            raise _write_error(out, existed, error) from None
        reason = (error.strerror or str(error)).lower()
        if isinstance(error, FileExistsError | NotADirectoryError):
            reason = "a path above it is a file, not a folder"
        raise ConfigError(f"{flag}={str(out)!r}: cannot write there ({reason})") from None


@functools.cache
def _renameat2_function() -> Callable[..., int] | None:
    """libc's ``renameat2`` (glibc >= 2.28), or None where there is none (not Linux, older libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def renameat2(source: Path, target: Path, flags: int) -> None:
    """``renameat2(2)`` with ``flags`` (:data:`RENAME_EXCHANGE`: swap two existing paths in one
    step; :data:`RENAME_NOREPLACE`: fail with EEXIST rather than replace). An OSError as
    ``os.rename`` raises; ENOSYS where the C library has no such call."""
    function = _renameat2_function()
    if function is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(source), None, str(target))
    if function(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(source), None, str(target))


def publish(staging: Path, out: Path) -> None:
    """Put the finished ``staging`` folder at ``out`` so that ``out`` never names a partial folder,
    nor nothing: an existing ``out`` (empty, or replaced under ``--force``) is swapped with it in
    one exchange and its previous contents, now at ``staging``, deleted after; an absent one is a
    rename. The staged files and the folder holding both are synced before and after, so that
    a power cut cannot reorder the steps."""
    _usual_permissions(staging)
    _fsync_tree(staging)
    checkpoint._fsync_dir(out.parent)  # the staging folder's own entry
    if not out.exists():
        _move_into_place(staging, out)
    elif not _exchange(staging, out):
        _replace_with_journal(staging, out)
        return
    _sync_published(out)
    shutil.rmtree(staging, ignore_errors=True)  # after an exchange: the previous contents


def _fsync_tree(folder: Path) -> None:
    """Sync every file under ``folder``, then every folder (deepest first, ``folder`` last): the
    export's bytes reach the disk before the name that makes them the output does."""
    paths = sorted(folder.rglob("*"), reverse=True)
    for path in paths:
        if path.is_file():
            checkpoint._fsync_file(path)
    for path in [*paths, folder]:
        if path.is_dir():
            checkpoint._fsync_dir(path)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to the absent ``out``; one created meanwhile by another process is not
    replaced (RENAME_NOREPLACE where the file system has it)."""
    try:
        renameat2(staging, out, RENAME_NOREPLACE)
    except OSError as error:
        if error.errno == errno.EEXIST:
            raise FileExistsError(
                errno.EEXIST, "another process created it during the export", str(out)
            ) from None
        if error.errno not in _UNSUPPORTED:
            raise
        os.rename(staging, out)


def _exchange(staging: Path, out: Path) -> bool:
    """Swap ``staging`` and ``out`` atomically; False where the file system cannot."""
    try:
        renameat2(staging, out, RENAME_EXCHANGE)
    except OSError as error:
        if error.errno in _UNSUPPORTED:
            return False
        raise
    return True


def _replace_with_journal(staging: Path, out: Path) -> None:
    """The exchange in two renames, where the file system has none: ``out`` to a fresh
    ``.OUT.old-<pid>-*`` folder, then ``staging`` to ``out``. A journal naming both is on disk
    before the first, so a kill between them, when ``out`` is missing, is repaired by the next
    export (:func:`replay_journal`); a failure here puts ``out`` back at once."""
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{_process_id()}-"))
    try:
        journal = _write_journal(out, old, staging)
    except BaseException:
        shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        os.rename(out, old)  # onto the empty folder just made: no other export has that name
        os.rename(staging, out)
    except BaseException:
        _undo_replace(out, old, journal)
        raise
    _sync_published(out)
    journal.unlink()
    shutil.rmtree(old, ignore_errors=True)


def _write_journal(out: Path, old: Path, staging: Path) -> Path:
    """``.OUT.export-journal``: this process's id and the names of the set-aside and staging
    folders, written whole (a draft ``.OUT.tmp-<pid>-*.journal`` renamed) and synced."""
    journal = _journal_path(out)
    text = json.dumps({"pid": _process_id(), "old": old.name, "new": staging.name})
    fd, draft = tempfile.mkstemp(
        dir=out.parent, prefix=f".{out.name}.tmp-{_process_id()}-", suffix=".journal"
    )
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(draft, journal)
    except BaseException:
        Path(draft).unlink(missing_ok=True)
        raise
    checkpoint._fsync_dir(out.parent)
    return journal


def _undo_replace(out: Path, old: Path, journal: Path) -> None:
    """After a failed journalled rename: ``out`` back from ``old`` when it is missing, then the
    journal and ``old`` deleted. Where that fails too, the journal stays for the next export."""
    try:
        if not out.exists():
            os.rename(old, out)
        journal.unlink()
    except OSError:
        return
    shutil.rmtree(old, ignore_errors=True)


def _sync_published(out: Path) -> None:
    """Sync the folder holding ``out`` after the exchange or rename that published it."""
    try:
        checkpoint._fsync_dir(out.parent)
    except OSError as error:
        raise ExportError(
            f"wrote the export to {str(out)!r} but could not sync it to disk "
            f"({_write_reason(error)}); a crash now may leave the previous "
            "contents there"
        ) from None


def _usual_permissions(folder: Path) -> None:
    """The permissions a plain ``mkdir`` / file write would give (temporary folders and safetensors
    files are private, 0700 / 0600), so that a server running as another user can read the
    export."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_atomically(
    out: Path, flag: str, write: Callable[[Path], None], staging: Path | None = None
) -> None:
    """``write(folder)`` into a staging folder (:func:`staging_folder`, unless given; then the
    leftovers of killed exports to ``out`` are settled first), then :func:`publish` it. On a
    failure the staging folder is deleted and ``out`` holds what it held (or, when only the last
    sync failed, the export); a full disk or an I/O error is an :class:`ExportError` naming
    ``out``."""
    if staging is None:
        settle_output(out, flag)
        staging = staging_folder(out, flag)
    existed = out.exists()
    try:
        write(staging)
        publish(staging, out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if _is_write_failure(error):
            raise _write_error(out, existed, error) from None
        raise


def _is_write_failure(error: BaseException) -> bool:
    """A failure of the disk, not of gfnlm: an OSError, safetensors' write error, or an error of
    another writer that says the disk is full or carries an OS error number (the tokenizers
    library raises a plain ``Exception("No space left on device (os error 28)")``)."""
    if isinstance(error, ExportError) or not isinstance(error, Exception):
        return False
    if isinstance(error, OSError | SafetensorError) or _OS_ERROR.search(str(error)):
        return True
    return checkpoint._write_reason(error) == "no space left on device"


def _write_reason(error: BaseException) -> str:
    """Why a write failed, in words: the checkpoint's wording, and for the Rust writers' "(os error
    N)" the system's words for N rather than their whole message."""
    reason = checkpoint._write_reason(error)
    match = _OS_ERROR.search(str(error)) if not isinstance(error, OSError) else None
    if match is None or reason == "no space left on device":
        return reason
    return os.strerror(int(match.group(1))).lower()


def _write_error(out: Path, existed: bool, error: BaseException) -> ExportError:
    """The one line for a failed write: the output path, why, and what it holds now."""
    if out.exists() == existed:
        kept = f"{str(out)!r} is unchanged" if existed else f"{str(out)!r} was not created"
    elif existed:
        kept = f"the next export to {str(out)!r} puts its previous contents back"
    else:
        kept = f"{str(out)!r} holds what another process put there"
    return ExportError(f"cannot write the export to {str(out)!r}: {_write_reason(error)}; {kept}")


def load_policy(source: ExportSource, model_dir: Path) -> "CausalLMPolicy":
    """The run's model on CPU, in float32 (float64 for float64 runs), holding the checkpoint's
    weights: the PEFT model of a LoRA run, the plain model of a full fine-tuning run."""
    from gfnlm.training.policy import CausalLMPolicy

    dtype = "float64" if source.config.model.dtype == "float64" else "float32"
    model_config = attrs.evolve(source.config.model, dtype=dtype, gradient_checkpointing=False)
    policy = CausalLMPolicy.from_config(
        model_config, model_dir, torch.device("cpu"), keep_base=False
    )
    policy.load_trainable_state_dict(source.weights)
    return policy


def write_merged(
    model: torch.nn.Module,
    model_dir: Path,
    folder: Path,
    dtype: torch.dtype,
    sampling: SamplingConfig | None = None,
) -> None:
    """A Hugging Face model folder: ``model``'s weights with LoRA merged in (as ``dtype``), the base
    model's config (with that dtype) and its tokenizer; the generation config set to sample with
    ``sampling`` (``model_card.sampling_generation_config``), or without it
    the base model's as it is."""
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, AutoTokenizer

    from gfnlm.models.weights import merged_state_dict

    save_torch_state_dict(merged_state_dict(model, dtype), folder, metadata={"format": "pt"})
    config = AutoConfig.from_pretrained(model_dir)
    config.dtype = dtype
    config.save_pretrained(folder)
    if sampling is not None:
        sampling_generation_config(model_dir, sampling).save_pretrained(folder)
    elif (model_dir / "generation_config.json").is_file():
        shutil.copyfile(model_dir / "generation_config.json", folder / "generation_config.json")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(
        folder
    )  # as the base has it (not the policy's padding)


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


def export_checkpoint(
    run: str,
    kind: str,
    out: str,
    step: int | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> str:
    """Export ``run``'s newest complete checkpoint (or ``step``'s) as ``kind`` (``merged`` or
    ``adapter``) into the folder ``out``; returns the line that says what was written where.
    ``dtype``: of the written weights (default float32 for ``merged``, as saved for ``adapter``)."""
    from gfnlm.models.loading import resolve_model_path

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
        raise ConfigError(
            f"--adapter: run {run!r} fine-tuned all weights (model.lora=false), so it has no "
            "adapter; export it with --merged"
        )
    model_dir = resolve_model_path(model.path)
    check_not_inside(path, flag, model_dir, source.path)
    if kind == "merged" and model.lora and _lora_on_tied_weights(model_dir, model.lora_targets):
        raise ConfigError(
            f"--merged: model.lora_targets={list(model.lora_targets)} adapts the embedding or "
            f"output layer, which {str(model_dir)!r} ties together: merged weights cannot hold "
            "that adapter; export it with --adapter"
        )
    adapter = checkpoint.adapter_folder(source.path) if kind == "adapter" else None
    torch_dtype = DTYPES[dtype] if dtype is not None else None
    provenance = Provenance(
        source.config,
        source.path,
        source.step,
        model_dir,
        portable_base_name(model.path, model_dir),
    )
    written = dtype or ("float32" if kind == "merged" else "as saved in the checkpoint")
    card = model_card(provenance, kind, out, written)
    staging = staging_folder(path, flag)  # the last check: the output's parent can be written
    try:
        if adapter is not None:
            write = functools.partial(copy_adapter, adapter, dtype=torch_dtype)
        else:
            policy = load_policy(source, model_dir)
            if kind == "adapter":
                write = functools.partial(
                    policy.save_adapter, state=source.weights, dtype=torch_dtype
                )
            else:
                write = functools.partial(
                    write_merged,
                    policy.model,
                    model_dir,
                    dtype=torch_dtype or torch.float32,
                    sampling=source.config.sampling,
                )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    base_name = provenance.base_name if kind == "adapter" else None
    write_atomically(path, flag, functools.partial(_write_export, write, card, base_name), staging)
    if kind == "merged":
        what = (
            "merged model ("
            f"{f'LoRA merged into {model_dir}' if model.lora else 'all weights'}, "
            f"{dtype or 'float32'})"
        )
    else:
        what = f"PEFT adapter (base model {model_dir})"
    return f"wrote the {what} of checkpoint {str(source.path)!r} to {str(path)!r}"


def _write_export(
    write: Callable[[Path], None], card: str, adapter_base: str | None, folder: Path
) -> None:
    """``write(folder)``, then the adapter's base model name made portable (``adapter_base``,
    adapter exports) and the model card."""
    write(folder)
    if adapter_base is not None:
        set_adapter_base(folder, adapter_base)
    (folder / "README.md").write_text(card)


def _lora_on_tied_weights(model_dir: Path, targets: list[str]) -> bool:
    from transformers import AutoConfig

    if not getattr(AutoConfig.from_pretrained(model_dir), "tie_word_embeddings", False):
        return False
    return any(target.split(".")[-1] in _TIED_MODULES for target in targets)
