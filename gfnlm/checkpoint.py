"""Atomic checkpoints: a crash mid-save never leaves a broken or half-written checkpoint.

Layout of a run directory::

    out_dir/
      config.yaml              resolved config of the run
      checkpoints/
        step_000010/           one complete checkpoint (written as .tmp-*, then renamed)
          policy.safetensors   trainable weights (the LoRA adapter, or all weights)
          state.pt             log Z, optimiser, RNG states, step, metrics
          config.yaml
        latest                 name of the newest complete checkpoint (replaced atomically)

A checkpoint directory only ever appears under its final name after every file in it was written
and fsynced, and ``latest`` is switched with ``os.replace`` after that; so whatever instant a save
is killed at, ``latest`` names a complete checkpoint.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

POLICY_FILE = "policy.safetensors"
STATE_FILE = "state.pt"
LATEST = "latest"


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
    """Write ``text`` to ``path`` through a temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    policy_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint for ``step`` and point ``latest`` at it; keep the newest ``keep``."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=checkpoints_dir, prefix=f".tmp-step_{step:06d}-"))
    try:
        save_file({k: v.contiguous() for k, v in policy_state.items()}, tmp / POLICY_FILE)
        torch.save(state, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(config_yaml)
        for name in (POLICY_FILE, STATE_FILE, "config.yaml"):
            _fsync_file(tmp / name)
        if final.exists():  # a re-save of the same step (e.g. after resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(checkpoints_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(checkpoints_dir / LATEST, final.name)
    _prune(checkpoints_dir, keep, protect=final.name)
    return final


def _prune(checkpoints_dir: Path, keep: int, protect: str) -> None:
    complete = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    for old in complete[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or ``None`` when there is none."""
    pointer = checkpoints_dir / LATEST
    if not pointer.is_file():
        return None
    path = checkpoints_dir / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() and (path / POLICY_FILE).is_file() else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trainable weights and the training state of one checkpoint."""
    policy_state = load_file(path / POLICY_FILE)
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    return policy_state, state
