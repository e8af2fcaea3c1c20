"""Checkpoints that survive a kill at any instant, and a resume that finds the newest complete one.

Layout of a run directory::

    out_dir/
      config.yaml              resolved config of the run
      checkpoints/
        step_000010/           one complete checkpoint (written as .tmp-*, then renamed)
          policy.safetensors   trainable weights (the LoRA adapter, or all weights): what resume
                               reads
          state.pt             log Z, optimiser, RNG states, step (tensors and plain types only)
          config.yaml
          adapter/             LoRA runs: the adapter in PEFT's format (adapter_config.json,
                               adapter_model.safetensors), for PeftModel.from_pretrained
          manifest.json        the step, each file's size and SHA-256 (adapter/ files included),
                               written last
        step_000010-1/         a second save of step 10 (never over the first one)
        latest                 name of the newest complete checkpoint (replaced atomically)

The guarantees are structural: a save writes a new folder under a name no other checkpoint has,
switches ``latest`` to it, and only then prunes older ones, never the one ``latest`` names; so
whatever instant a save is killed at, ``latest`` names a complete checkpoint (the new one or the
previous one). Files a caller adds (``extra_files``, e.g. the PEFT adapter folder) are written
into the same temporary folder before the manifest, so they share these guarantees; the checkpoint
layer does not know what they are. Loading checks every file's size and SHA-256 against the
manifest (a flipped bit is caught, not just a truncation), refuses non-finite weights, and reads
the state with ``weights_only=True`` (no pickled code runs). ``latest`` may only name a checkpoint
folder of its own ``checkpoints/``. When it is missing, dangling, names something else or a broken
checkpoint, :func:`find_resume_point` falls back to the newest checkpoint that loads and says why;
pruning counts only intact checkpoints, so it never removes the newest one that loads.

One process trains in a run directory at a time: :class:`RunLock` holds an OS lock on the folder
that the kernel releases on any exit (``kill -9`` included). Reading a run (eval, sample, export)
takes no lock.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import attrs
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gfnlm.contracts.errors import InputError, RunError
from gfnlm.contracts.paths import write_text_atomic

POLICY_FILE = "policy.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST = "manifest.json"
LATEST = "latest"
ADAPTER_DIR = "adapter"  # LoRA runs: the adapter as PeftModel.save_pretrained writes it
_HASH_BLOCK = 1 << 20
_NAME = re.compile(r"^step_(\d+)(?:-(\d+))?$")
# What reading a damaged file raises: safetensors' own error, or (torch.load of a cut or garbled
# zip) EOFError, UnpicklingError, RuntimeError, OSError.
_DAMAGED = (SafetensorError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)


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


def _sha256_and_fsync(path: Path) -> str:
    """The file's SHA-256, computed in the same pass that flushes it to disk (it is still in the
    page cache, so this reads memory, not the disk)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
        os.fsync(handle.fileno())
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_reason(error: BaseException) -> str:
    """Why a write failed, in words (torch's writer reports a full disk as 'unexpected pos',
    safetensors' as 'os error 28')."""
    if (
        isinstance(error, OSError)
        and error.errno == errno.ENOSPC
        or any(sign in str(error) for sign in ("unexpected pos", "No space left", "os error 28"))
    ):
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
    found = (
        [p for p in checkpoints_dir.iterdir() if p.is_dir() and checkpoint_key(p) is not None]
        if checkpoints_dir.is_dir()
        else []
    )
    return sorted(found, key=checkpoint_key, reverse=True)


def _fresh_name(checkpoints_dir: Path, step: int) -> Path:
    """``step_NNNNNN``, or ``step_NNNNNN-k`` when that step was saved before: never an existing
    name."""
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
    return {
        "kind": kind,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def numpy_rng_state(saved: dict[str, Any]) -> tuple:
    """The inverse of :func:`portable_rng_state`."""
    keys = saved["keys"].numpy().astype(np.uint32)
    return saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached"]


def non_finite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    if torch.is_tensor(tree):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list | tuple)
        else ()
    )
    return [
        name
        for key, value in items
        for name in non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    ]


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
    (e.g. :meth:`~gfnlm.training.policy.CausalLMPolicy.adapter_writer`'s PEFT adapter under
    ``adapter/``); they are listed in the manifest and appear with the rest of the checkpoint, or
    not at all."""
    bad = non_finite_tensors(policy_state) + non_finite_tensors(state.get("logz") or {}, "logz")
    if bad:
        raise CheckpointError(
            f"not saving step {step}: {len(bad)} tensors hold NaN or inf (e.g. {bad[0]!r}); "
            f"{what_is_kept(checkpoints_dir)}"
        )
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
            raise CheckpointError(
                f"cannot write checkpoint {str(final)!r}: {_write_reason(error)}; "
                f"{what_is_kept(checkpoints_dir)}"
            ) from None
        raise
    prune(checkpoints_dir, keep)
    return final


def _write_files(
    folder: Path,
    step: int,
    policy_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_yaml: str,
    extra_files: Callable[[Path], None] | None = None,
) -> None:
    save_file({k: v.contiguous() for k, v in policy_state.items()}, folder / POLICY_FILE)
    torch.save(state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(config_yaml)
    names = [POLICY_FILE, STATE_FILE, CONFIG_FILE]
    if extra_files is not None:
        extra_files(folder)
        names += sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).as_posix() not in (*names, MANIFEST)
        )
    digests = {name: _sha256_and_fsync(folder / name) for name in names}
    manifest = {
        "step": step,
        "files": {name: (folder / name).stat().st_size for name in names},
        "sha256": digests,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    _fsync_file(folder / MANIFEST)
    for sub in sorted({(folder / name).parent for name in names} - {folder}):
        # the entries of the extra files' folders (the checkpoints folder is synced after the
        # rename)
        _fsync_dir(sub)


def remove_stale_temporaries(checkpoints_dir: Path) -> None:
    """Delete ``.tmp-*`` folders and files that killed saves left (``latest`` never names one)."""
    for leftover in checkpoints_dir.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in checkpoints_dir.glob(f".{LATEST}.tmp-*"):
        leftover.unlink(missing_ok=True)


def prune(checkpoints_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` intact checkpoint folders and the one ``latest`` names; delete the
    older intact ones. A broken folder (damaged after it was written) neither counts toward
    ``keep`` nor is deleted: it cannot push the newest loadable checkpoint out, and it stays for
    inspection (resume skips it and says so)."""
    if keep <= 0:
        return
    protected = _read_latest_name(checkpoints_dir)
    intact = [path for path in _candidates(checkpoints_dir) if _sizes_match(path)]
    for old in intact[keep:]:
        if old.name != protected:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- load
def _read_latest_name(checkpoints_dir: Path) -> str | None:
    """What ``latest`` says, when it says anything (see :func:`_foreign_latest` for its form)."""
    try:
        return (checkpoints_dir / LATEST).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _foreign_latest(name: str) -> bool:
    """Whether ``latest`` names something other than a checkpoint folder of its own directory
    (``../../other_run/checkpoints/step_N``, an absolute path): such a name is never followed."""
    return _NAME.match(name) is None


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The folder ``latest`` names, if it is a checkpoint of this directory whose files are all
    there at their written sizes (hashes are checked on load)."""
    name = _read_latest_name(checkpoints_dir)
    if name is None or _foreign_latest(name):
        return None
    path = checkpoints_dir / name
    return path if _sizes_match(path) else None


def what_is_kept(checkpoints_dir: Path) -> str:
    """The end of a failure message: which checkpoint the run can resume from, if any."""
    last = latest_checkpoint(checkpoints_dir)
    return (
        f"the last checkpoint {str(last)!r} is intact" if last else "no checkpoint was written yet"
    )


def point_latest_at(checkpoints_dir: Path, folder: Path) -> None:
    """Make ``latest`` name ``folder`` (after a resume fell back to it), atomically."""
    write_text_atomic(checkpoints_dir / LATEST, folder.name)


def _manifest(path: Path) -> dict[str, Any]:
    """The checkpoint's manifest: a folder without one was never completed by a save."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest.get("files"), dict) or not isinstance(
            manifest.get("sha256"), dict
        ):
            raise TypeError("files or sha256 is not a mapping")
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable ({type(error).__name__})") from None


def _sizes_match(path: Path) -> bool:
    """A cheap look (no hashing): the folder's resume files are there, at their written sizes."""
    try:
        check_manifest(path, hashes=False)
    except CheckpointError:
        return False
    return True


def check_manifest(
    path: Path, names: tuple[str, ...] = (POLICY_FILE, STATE_FILE), hashes: bool = True
) -> None:
    """Raise :class:`CheckpointError` when one of ``names`` (default: the two files resume reads)
    is missing, empty, not the size it was written with (a truncated copy, a full disk) or, with
    ``hashes``, not the bytes (SHA-256) it was written with (a flipped bit)."""
    manifest = _manifest(path)
    sizes, digests = manifest["files"], manifest["sha256"]
    for name in names:
        file = path / name
        if not file.is_file() or name not in sizes or name not in digests:
            raise CheckpointError(
                f"{file}: missing" if not file.is_file() else f"{file}: not in {MANIFEST}"
            )
        size = file.stat().st_size
        if size != sizes[name]:
            raise CheckpointError(f"{file}: truncated ({size} bytes, written with {sizes[name]})")
        if hashes and sha256_file(file) != digests[name]:
            raise CheckpointError(
                f"{file}: damaged (its SHA-256 differs from the one written in {MANIFEST})"
            )


def adapter_folder(path: Path) -> Path | None:
    """The checkpoint's PEFT adapter folder (``adapter/``, LoRA runs), its files checked against
    the manifest; ``None`` when the checkpoint has none (a full fine-tuning run, or a LoRA
    checkpoint saved without ``adapter/``)."""
    prefix = f"{ADAPTER_DIR}/"
    names = tuple(name for name in _manifest(path)["files"] if name.startswith(prefix))
    if not names:
        return None
    check_manifest(path, names)
    return path / ADAPTER_DIR


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trainable weights and the training state of one checkpoint; a broken one (a file
    missing, truncated or not the bytes written, weights that are not finite) is a one-line
    :class:`CheckpointError` naming the file. The state is read with ``weights_only=True``."""
    check_manifest(path)
    try:
        policy_state = load_file(path / POLICY_FILE)
    except _DAMAGED as error:
        raise CheckpointError(f"{path / POLICY_FILE}: unreadable ({_first_line(error)})") from None
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except _DAMAGED as error:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({_first_line(error)})") from None
    logz = state.get("logz") if isinstance(state, dict) else None
    bad = non_finite_tensors(policy_state) + non_finite_tensors(logz or {}, "logz")
    if bad:
        step = state.get("step", "?") if isinstance(state, dict) else "?"
        raise CheckpointError(
            f"{path}: the weights of step {step} hold NaN or inf ({len(bad)} tensors, "
            f"e.g. {bad[0]!r})"
        )
    return policy_state, state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__


@attrs.frozen
class ResumePoint:
    """A loaded checkpoint to resume from, and the line that says why it is not ``latest`` (if
    so)."""

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
    if name is not None and _foreign_latest(name):
        problem = (
            f"{checkpoints_dir / LATEST} names {name[:200]!r}, "
            "which is not a checkpoint of this run"
        )
        name = None
    elif name is not None:
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
        note = f"{problem}: using the newest complete checkpoint {str(candidate)!r}{skipped}"
        return ResumePoint(candidate, *loaded, note=note)
    if name is None and not failures:
        return None
    raise CheckpointError(
        f"no complete checkpoint in {str(checkpoints_dir)!r} ({problem}"
        f"{'; ' + '; '.join(failures) if failures else ''}); the run is not restarted "
        "over it: delete that folder or choose another train.out_dir"
    )


# ---------------------------------------------------------------------- reading a run
@attrs.frozen
class OpenedRun:
    """A checkpoint opened for reading (eval, sample, export): its folder, weights, state, the
    config file that describes it, and the line saying why it is not what ``latest`` names."""

    path: Path
    policy_state: dict[str, torch.Tensor]
    state: dict[str, Any]
    config_file: Path
    note: str | None = None


def open_run(run: str, step: int | None = None, field: str = "--run") -> OpenedRun:
    """The checkpoint a reader of ``run`` uses, found and checked without loading a model: ``run``
    is a run directory (its newest complete checkpoint, or the newest complete save of ``step``)
    or one checkpoint folder. A missing run, checkpoint, step or config is a one-line
    :class:`~gfnlm.contracts.errors.InputError` naming ``field``; a broken checkpoint a
    :class:`CheckpointError`. Takes no lock: reading never changes the run."""
    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise InputError(f"{field}={run!r}: no such run directory")
    if (run_dir / STATE_FILE).is_file():  # a checkpoint folder given directly
        key = checkpoint_key(run_dir)
        if step is not None and key is not None and key[0] != step:
            raise InputError(f"--step={step}: {run!r} is the checkpoint of step {key[0]}")
        point = ResumePoint(run_dir, *load_checkpoint(run_dir))
        run_config = run_dir.parent.parent / CONFIG_FILE
    else:
        point = (
            _newest_of_step(run, run_dir / "checkpoints", step)
            if step is not None
            else find_resume_point(run_dir / "checkpoints")
            if (run_dir / "checkpoints").is_dir()
            else None
        )
        if point is None:
            raise InputError(
                f"{field}={run!r}: no checkpoint found (expected {field.lstrip('-').upper()}"
                "/checkpoints/step_*)"
            )
        run_config = run_dir / CONFIG_FILE
    config_file = point.path / CONFIG_FILE if (point.path / CONFIG_FILE).is_file() else run_config
    if not config_file.is_file():
        raise InputError(
            f"{field}={run!r}: {str(point.path)!r} has no {CONFIG_FILE} "
            f"and the run no {CONFIG_FILE}"
        )
    return OpenedRun(point.path, point.policy_state, point.state, config_file, point.note)


def _newest_of_step(run: str, checkpoints_dir: Path, step: int) -> ResumePoint:
    """The newest save of ``step`` that loads (``step_N-k`` is a later save of step N)."""
    found = _candidates(checkpoints_dir)
    matching = [path for path in found if checkpoint_step(path) == step]
    if not matching:
        steps = sorted({checkpoint_step(path) for path in found})
        have = (
            f"its checkpoints are of steps {', '.join(map(str, steps))}"
            if steps
            else "it has no checkpoint"
        )
        raise InputError(f"--step={step}: run {run!r} has no checkpoint of step {step}; {have}")
    errors = []
    for folder in matching:
        try:
            return ResumePoint(folder, *load_checkpoint(folder))
        except CheckpointError as error:
            errors.append(str(error))
    raise CheckpointError(
        f"--step={step}: no complete checkpoint of that step ({'; '.join(errors)})"
    )


# ---------------------------------------------------------------------- one trainer per run
class RunLock:
    """An exclusive OS lock (``flock``) on a run directory, held while one process trains in it.

    The kernel releases it when the process exits in any way (``kill -9`` included), so no lock is
    ever left stale and there is no lock file to clean up: the lock is on the folder itself. A
    second trainer gets a one-line error naming the holder's PID (read from ``/proc/locks``)."""

    def __init__(self, run_dir: Path, field: str = "train.out_dir") -> None:
        self.run_dir, self.field = run_dir, field
        self.created = False  # whether acquire() made the folder (a failed set-up removes it again)
        self._fd: int | None = None

    def acquire(self) -> Self:
        """Take the lock (creating the folder); raise :class:`RunInUseError` when another process
        has it."""
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            self.run_dir, os.O_RDONLY | os.O_DIRECTORY
        )  # close-on-exec: servers never inherit it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise RunInUseError(
                f"{self.field}={str(self.run_dir)!r}: in use by another gfnlm train ({who}); "
                f"wait for it to finish or choose another {self.field}"
            ) from None
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock back (idempotent); exiting the process, or dropping this object, does the
        same."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def abandon(self) -> None:
        """Release, and remove the folder again when acquire() made it and nothing was written."""
        self.release()
        if self.created:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # fails (and is left) when anything was written into it

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunInUseError(InputError):
    """Another process trains in the run directory (exit 2: the user chose a busy directory)."""


def _lock_holder(fd: int) -> int | None:
    """The PID holding a ``flock`` on ``fd``'s file, from ``/proc/locks`` (Linux), else ``None``."""
    info = os.fstat(fd)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and inode in fields and "->" not in fields:
            return int(fields[fields.index(inode) - 1])
    return None
