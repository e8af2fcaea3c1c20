"""Checkpoints that survive a kill at any instant, and a resume that finds the newest complete one.

Layout of a run directory::

    out_dir/
      config.yaml              resolved config of the run
      checkpoints/
        step_000010/           one complete checkpoint (written as .tmp-*, then renamed)
          policy.safetensors   trainable weights (the LoRA adapter, or all weights): what resume reads
          state.pt             log Z, optimiser, RNG states, step (tensors and plain types only)
          config.yaml
          adapter/             LoRA runs: the adapter in PEFT's format (adapter_config.json,
                               adapter_model.safetensors), for PeftModel.from_pretrained
          manifest.json        the step and each file's size (adapter/ files included), written last
        step_000010-1/         a second save of step 10 (never over the first one)
        latest                 name of the newest complete checkpoint (replaced atomically)

The guarantees are structural: a save writes a new folder under a name no other checkpoint has,
switches ``latest`` to it, and only then prunes older ones, never the one ``latest`` names; so
whatever instant a save is killed at, ``latest`` names a complete checkpoint (the new one or the
previous one). Files a caller adds (``extra_files``, e.g. the PEFT adapter folder) are written
into the same temporary folder before the manifest, so they share these guarantees; the checkpoint
layer does not know what they are. Loading checks the manifest and reads the state with ``weights_only=True`` (no
pickled code runs). When ``latest`` is missing, dangling or names a broken checkpoint,
:func:`find_resume_point` falls back to the newest checkpoint that loads and says why.
"""

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gfnlm.contracts.errors import RunError

POLICY_FILE = "policy.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST = "manifest.json"
LATEST = "latest"
ADAPTER_DIR = "adapter"  # LoRA runs: the adapter as PeftModel.save_pretrained writes it
_NAME = re.compile(r"^step_(\d+)(?:-(\d+))?$")
# What reading a damaged file raises: safetensors' own error, or (torch.load of a cut or garbled
# zip) EOFError, UnpicklingError, RuntimeError, OSError.
_DAMAGED = (SafetensorError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)
# Checkpoints written before the RNG state was stored as tensors hold numpy's state as an array:
# its reconstruction (data only, no code) is allowed when loading them.
_OLD_NUMPY_STATE = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(RunError):
    """A checkpoint cannot be written or read; the message names the folder or file and why."""


# ---------------------------------------------------------------------- small file-system steps
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename (no temp file is left on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_reason(error: BaseException) -> str:
    """Why a write failed, in words (torch's writer reports a full disk as 'unexpected pos',
    safetensors' as 'os error 28')."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or \
            any(sign in str(error) for sign in ("unexpected pos", "No space left", "os error 28")):
        return "no space left on device"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# ---------------------------------------------------------------------- names
def checkpoint_key(path: Path) -> tuple[int, int] | None:
    """(step, generation) of a checkpoint folder name (``step_000010-1`` → (10, 1)), else None."""
    match = _NAME.match(path.name)
    return None if match is None else (int(match.group(1)), int(match.group(2) or 0))


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder holds."""
    key = checkpoint_key(path)
    if key is None:
        raise CheckpointError(f"{path}: not a checkpoint folder name (expected step_NNNNNN)")
    return key[0]


def _candidates(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first (incomplete ``.tmp-*`` folders are never candidates)."""
    found = [p for p in checkpoints_dir.iterdir() if p.is_dir() and checkpoint_key(p) is not None] \
        if checkpoints_dir.is_dir() else []
    return sorted(found, key=checkpoint_key, reverse=True)


def _fresh_name(checkpoints_dir: Path, step: int) -> Path:
    """``step_NNNNNN``, or ``step_NNNNNN-k`` when that step was saved before: never an existing name."""
    final = checkpoints_dir / f"step_{step:06d}"
    generation = 0
    while final.exists():
        generation += 1
        final = checkpoints_dir / f"step_{step:06d}-{generation}"
    return final


# ---------------------------------------------------------------------- the state as plain types
def portable_rng_state(numpy_state: tuple) -> dict[str, Any]:
    """numpy's RNG state as tensors and plain types (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = numpy_state
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def numpy_rng_state(saved: dict[str, Any]) -> tuple:
    """The inverse of :func:`portable_rng_state`."""
    keys = saved["keys"].numpy().astype(np.uint32)
    return saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached"]


def non_finite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    if torch.is_tensor(tree):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    return [name for key, value in items for name in non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


# ---------------------------------------------------------------------- save
def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    policy_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` under a new name, point ``latest`` at it, then
    prune to the newest ``keep`` (never the one ``latest`` names). Non-finite weights are refused.

    ``extra_files(folder)``, when given, writes more files into the checkpoint's temporary folder
    (e.g. :meth:`~gfnlm.training.policy.CausalLMPolicy.adapter_writer`'s PEFT adapter under ``adapter/``);
    they are listed in the manifest and appear with the rest of the checkpoint, or not at all."""
    bad = non_finite_tensors(policy_state) + non_finite_tensors(state.get("logz") or {}, "logz")
    if bad:
        raise CheckpointError(f"not saving step {step}: {len(bad)} tensors hold NaN or inf (e.g. {bad[0]!r}); "
                              f"the checkpoint {str(latest_checkpoint(checkpoints_dir))!r} is intact")
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(checkpoints_dir)
    final = _fresh_name(checkpoints_dir, step)
    tmp = Path(tempfile.mkdtemp(dir=checkpoints_dir, prefix=f".tmp-{final.name}-"))
    try:
        _write_files(tmp, step, policy_state, state, config_yaml, extra_files)
        os.replace(tmp, final)
        _fsync_dir(checkpoints_dir)
        write_text_atomic(checkpoints_dir / LATEST, final.name)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError | RuntimeError | SafetensorError):
            previous = latest_checkpoint(checkpoints_dir)
            kept = f"{str(previous)!r} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointError(f"cannot write checkpoint {str(final)!r}: {_write_reason(error)}; {kept}") from None
        raise
    prune(checkpoints_dir, keep)
    return final


def _write_files(folder: Path, step: int, policy_state: dict[str, torch.Tensor], state: dict[str, Any],
                 config_yaml: str, extra_files: Callable[[Path], None] | None = None) -> None:
    save_file({k: v.contiguous() for k, v in policy_state.items()}, folder / POLICY_FILE)
    torch.save(state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(config_yaml)
    names = [POLICY_FILE, STATE_FILE, CONFIG_FILE]
    if extra_files is not None:
        extra_files(folder)
        names += sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                        if p.is_file() and p.relative_to(folder).as_posix() not in (*names, MANIFEST))
    manifest = {"step": step, "files": {name: (folder / name).stat().st_size for name in names}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    for name in (*names, MANIFEST):
        _fsync_file(folder / name)
    for sub in sorted({(folder / name).parent for name in names} - {folder}):
        _fsync_dir(sub)  # the entries of the extra files' folders (the checkpoints folder is synced after the rename)


def remove_stale_temporaries(checkpoints_dir: Path) -> None:
    """Delete ``.tmp-*`` folders and files that killed saves left (``latest`` never names one)."""
    for leftover in checkpoints_dir.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in checkpoints_dir.glob(f".{LATEST}.tmp-*"):
        leftover.unlink(missing_ok=True)


def prune(checkpoints_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoint folders and the one ``latest`` names; delete the rest."""
    if keep <= 0:
        return
    protected = _read_latest_name(checkpoints_dir)
    for old in _candidates(checkpoints_dir)[keep:]:
        if old.name != protected:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- load
def _read_latest_name(checkpoints_dir: Path) -> str | None:
    try:
        return (checkpoints_dir / LATEST).read_text().strip() or None
    except OSError:
        return None


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The folder ``latest`` names, if it is there with its files (contents are checked on load)."""
    name = _read_latest_name(checkpoints_dir)
    if name is None:
        return None
    path = checkpoints_dir / name
    return path if (path / STATE_FILE).is_file() and (path / POLICY_FILE).is_file() else None


def _manifest_sizes(path: Path) -> dict[str, int]:
    """{file name: size} from the checkpoint's manifest ({} for checkpoints from before manifests)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        sizes = json.loads(manifest_path.read_text())["files"]
        if not isinstance(sizes, dict):
            raise TypeError("files is not a mapping")
        return sizes
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable ({type(error).__name__})") from None


def check_manifest(path: Path, names: tuple[str, ...] = (POLICY_FILE, STATE_FILE)) -> None:
    """Raise :class:`CheckpointError` when one of ``names`` (default: the two files resume reads)
    is missing, empty or not the size it was written with (a truncated copy, a full disk).
    Checkpoints from before manifests get the first checks."""
    sizes = _manifest_sizes(path)
    for name in names:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size == 0 or (name in sizes and size != sizes[name]):
            raise CheckpointError(f"{file}: truncated ({size} bytes, written with {sizes.get(name, 'more')})")


def adapter_folder(path: Path) -> Path | None:
    """The checkpoint's PEFT adapter folder (``adapter/``, LoRA runs), its files checked against
    the manifest; ``None`` when the checkpoint has none (a full fine-tuning run, or a checkpoint
    written before adapters were saved)."""
    prefix = f"{ADAPTER_DIR}/"
    names = tuple(name for name in _manifest_sizes(path) if name.startswith(prefix))
    if not names:
        return None
    check_manifest(path, names)
    return path / ADAPTER_DIR


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trainable weights and the training state of one checkpoint; a broken one is a one-line
    :class:`CheckpointError` naming the file. The state is read with ``weights_only=True``."""
    check_manifest(path)
    try:
        policy_state = load_file(path / POLICY_FILE)
    except _DAMAGED as error:
        raise CheckpointError(f"{path / POLICY_FILE}: unreadable ({_first_line(error)})") from None
    try:
        with torch.serialization.safe_globals(_OLD_NUMPY_STATE):
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except _DAMAGED as error:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({_first_line(error)})") from None
    return policy_state, state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__


@attrs.frozen
class ResumePoint:
    """A loaded checkpoint to resume from, and the line that says why it is not ``latest`` (if so)."""

    path: Path
    policy_state: dict[str, torch.Tensor]
    state: dict[str, Any]
    note: str | None = None


def find_resume_point(checkpoints_dir: Path) -> ResumePoint | None:
    """The checkpoint ``latest`` names when it loads; otherwise the newest one that loads, with a
    note. ``None`` when there is no checkpoint at all; :class:`CheckpointError` when there are
    checkpoint folders but none loads (a run never silently starts over)."""
    name = _read_latest_name(checkpoints_dir)
    problem = f"{checkpoints_dir / LATEST} is missing"
    if name is not None:
        pointed = checkpoints_dir / name
        if pointed.is_dir():
            try:
                return ResumePoint(pointed, *load_checkpoint(pointed))
            except CheckpointError as error:
                problem = f"{checkpoints_dir / LATEST} names a broken checkpoint ({error})"
        else:
            problem = f"{checkpoints_dir / LATEST} names {name!r}, which does not exist"
    failures = []
    for candidate in _candidates(checkpoints_dir):
        if candidate.name == name:
            continue
        try:
            loaded = load_checkpoint(candidate)
        except CheckpointError as error:
            failures.append(str(error))
            continue
        skipped = f"; skipped broken: {'; '.join(failures)}" if failures else ""
        note = f"{problem}: resuming from the newest complete checkpoint {str(candidate)!r}{skipped}"
        return ResumePoint(candidate, *loaded, note=note)
    if name is None and not failures:
        return None
    raise CheckpointError(f"no complete checkpoint in {str(checkpoints_dir)!r} ({problem}"
                          f"{'; ' + '; '.join(failures) if failures else ''}); the run is not restarted "
                          "over it: delete that folder or choose another train.out_dir")
