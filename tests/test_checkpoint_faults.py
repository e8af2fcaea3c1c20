"""Checkpoints under faults: a failure or kill at every file-system step of a save (the re-save of
an existing step included), damaged or missing files at resume, a full disk, a malicious pickle,
non-finite weights, SIGTERM. Real files, real processes, a real full (tmpfs) file system."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import mounted_tmpfs
from test_trainer import REPO, tiny_overrides

from gfnlm.cli import main
from gfnlm.training import checkpoint
from gfnlm.training.checkpoint import (
    CheckpointError,
    find_resume_point,
    load_checkpoint,
    save_checkpoint,
)


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64,), value), "b": torch.full((3,), -value)}


def save(directory: Path, step: int, value: float) -> Path:
    return save_checkpoint(directory, step, weights(value), {"step": step, "value": value}, "x: 1")


def loaded_value(point: checkpoint.ResumePoint) -> float:
    """The value a checkpoint was written with, checked to be the same in both of its files."""
    value = float(point.policy_state["w"][0])
    assert value == point.state["value"], "policy and state files of one checkpoint disagree"
    return value


class Killed(BaseException):
    """The injected failure: like SIGKILL, every later file-system step of the process is skipped."""


class FileSystemFaults:
    """Counts every file-system step a save takes; at step ``at`` raises :class:`Killed`, after
    which no further step touches the disk (the process is dead as far as files are concerned)."""

    STEPS: ClassVar = [(safetensors.torch, "save_file"), (torch, "save"), (checkpoint.os, "replace"),
             (checkpoint.os, "fsync"), (checkpoint.os, "open"), (checkpoint.shutil, "rmtree"),
             (checkpoint.tempfile, "mkdtemp"), (checkpoint.tempfile, "mkstemp"), (Path, "write_text"),
             (Path, "mkdir"), (Path, "unlink")]

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
        self.at, self.count, self.dead = at, 0, False
        for owner, name in self.STEPS:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), f"{name}"))
        monkeypatch.setattr(checkpoint, "save_file", safetensors.torch.save_file)

    def _wrap(self, real, name):
        def step(*args, **kwargs):
            if self.dead:
                if name in ("mkdtemp", "mkstemp"):  # cleanup paths never reach these
                    raise Killed(name)
                return None
            self.count += 1
            if self.count == self.at:
                self.dead = True
                raise Killed(name)
            return real(*args, **kwargs)

        return step


@pytest.mark.parametrize("resave", [False, True], ids=["new-step", "re-save-of-a-step"])
def test_a_kill_at_every_file_system_step_leaves_a_loadable_latest(tmp_path: Path, monkeypatch, resave) -> None:
    """Steps 1 and 2 are saved; then step 3 (or step 2 again, with other contents) is saved with a
    kill injected at its k-th file-system step, for every k until a save completes untouched.
    ``latest`` must always load, and hold either the new save or the one before it."""
    at, steps_seen, left_behind = 1, 0, []
    while True:
        directory = tmp_path / f"k{at}"
        save(directory, 1, 1.0)
        save(directory, 2, 2.0)
        new_step, new_value = (2, 2.5) if resave else (3, 3.0)
        with monkeypatch.context() as patch:
            faults = FileSystemFaults(patch, at)
            try:
                save(directory, new_step, new_value)
                completed = True
            except Killed:
                completed = False
        point = find_resume_point(directory)
        assert point is not None and point.note is None, f"kill at step {at}: latest is not loadable ({point})"
        assert loaded_value(point) in ({new_value} if completed else {2.0, new_value}), f"kill at step {at}"
        assert checkpoint.latest_checkpoint(directory) == point.path
        if list(directory.glob(".tmp-*")):
            left_behind.append(directory)
        if completed:
            steps_seen = faults.count
            break
        at += 1
    assert steps_seen >= 10, f"only {steps_seen} file-system steps were instrumented"
    # The next save after a killed one removes what the kill left behind.
    assert left_behind, "no kill left a temporary folder: the instrumentation missed the writes"
    for directory in left_behind:
        save(directory, 4, 4.0)
        assert not list(directory.glob(".tmp-*")), directory


def test_sigkill_at_random_moments_of_saves_and_re_saves(tmp_path: Path) -> None:
    """A real process keeps saving (each step twice, the second time with other contents) and is
    SIGKILLed at many moments; ``latest`` always loads and its two files agree."""
    script = f"""
import torch
from pathlib import Path
from gfnlm.training.checkpoint import save_checkpoint
print("ready", flush=True)
for step in range(1, 10_000):
    for value in (float(step), step + 0.5):
        save_checkpoint(Path({str(tmp_path)!r}), step, {{"w": torch.full((1_000_000,), value)}},
                        {{"step": step, "value": value, "blob": torch.zeros(500_000)}}, "x: 1")
"""
    completed = 0
    for delay in (0.0, 0.01, 0.03, 0.07, 0.15, 0.3, 0.5, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        point = find_resume_point(tmp_path)
        if point is None:  # killed before the first save finished: nothing claims to be complete
            assert not (tmp_path / checkpoint.LATEST).exists()
            continue
        assert point.note is None
        assert loaded_value(point) in (point.state["step"], point.state["step"] + 0.5)
        completed += 1
    assert completed, "no save ever completed; lengthen the delays"


@pytest.mark.parametrize("damage", ["truncated", "empty", "no-latest", "dangling-latest"])
def test_resume_after_damage_takes_the_newest_complete_checkpoint(tiny_model_dir: Path, prompt_files,
                                                                  tmp_path: Path, damage: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    train, _ = prompt_files
    run = tmp_path / "run"
    args = ["train", str(REPO / "configs/default.yaml"), "--quiet",
            *tiny_overrides(tiny_model_dir, train, "''", run, **{"train.steps": 2, "train.save_every": 1})]
    assert main(args) == 0
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000001", "step_000002"]
    if damage == "truncated":
        policy = checkpoints / "step_000002" / checkpoint.POLICY_FILE
        policy.write_bytes(policy.read_bytes()[: policy.stat().st_size // 2])
        expected, why = "step_000001", "names a broken checkpoint"
    elif damage == "empty":
        (checkpoints / "step_000002" / checkpoint.STATE_FILE).write_bytes(b"")
        expected, why = "step_000001", "names a broken checkpoint"
    elif damage == "no-latest":
        (checkpoints / checkpoint.LATEST).unlink()
        expected, why = "step_000002", "is missing"
    else:
        (checkpoints / checkpoint.LATEST).write_text("step_000007")
        expected, why = "step_000002", "'step_000007', which does not exist"
    capsys.readouterr()
    assert main([*args, "train.steps=3"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gfnlm:")]
    assert len(notes) == 1, notes
    assert why in notes[0] and f"resuming from the newest complete checkpoint '{checkpoints / expected}'" in notes[0]
    point = find_resume_point(checkpoints)
    assert point is not None and point.note is None and point.state["step"] == 3


def test_no_loadable_checkpoint_is_an_error_and_nothing_is_overwritten(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    (tmp_path / "step_000001" / checkpoint.POLICY_FILE).write_bytes(b"garbage")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*the run is not restarted"):
        find_resume_point(tmp_path)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    bad = weights(2.0)
    bad["b"][1] = float("nan")
    with pytest.raises(CheckpointError, match=r"not saving step 2: 1 tensors hold NaN or inf \(e\.g\. 'b'\).*step_000001"):
        save_checkpoint(tmp_path, 2, bad, {"step": 2, "value": 2.0}, "x: 1")
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000001"
    assert not (tmp_path / "step_000002").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {tempfile.gettempdir()}/gfnlm-pwned-{os.getpid()}",))


def test_a_pickle_with_code_is_refused_not_run(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    folder = tmp_path / "step_000001"
    torch.save({"step": 1, "value": _Payload()}, folder / checkpoint.STATE_FILE)
    (folder / checkpoint.MANIFEST).unlink()  # as if the file had been replaced by hand
    marker = Path(tempfile.gettempdir()) / f"gfnlm-pwned-{os.getpid()}"
    with pytest.raises(CheckpointError, match=r"state\.pt: unreadable"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_a_checkpoint_written_before_manifests_and_tensor_rng_states_loads(tmp_path: Path) -> None:
    folder = tmp_path / "step_000005"
    folder.mkdir()
    safetensors.torch.save_file(weights(5.0), folder / checkpoint.POLICY_FILE)
    torch.save({"step": 5, "value": 5.0, "rng": {"numpy": np.random.get_state()}}, folder / checkpoint.STATE_FILE)
    (tmp_path / checkpoint.LATEST).write_text(folder.name)
    point = find_resume_point(tmp_path)
    assert point is not None and loaded_value(point) == 5.0
    assert isinstance(point.state["rng"]["numpy"][1], np.ndarray)


@pytest.fixture
def small_file_system(tmp_path: Path):
    """A real 2 MiB tmpfs (needs root, as CI has): the disk fills up during a save."""
    with mounted_tmpfs(tmp_path / "small", "size=2m") as mount_point:
        yield mount_point


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_survives(small_file_system: Path) -> None:
    directory = small_file_system / "checkpoints"
    save_checkpoint(directory, 1, {"w": torch.ones(100_000)}, {"step": 1, "value": 1.0}, "x: 1")  # 400 KB
    with pytest.raises(CheckpointError) as error:  # 4 MB do not fit
        save_checkpoint(directory, 2, {"w": torch.ones(1_000_000)}, {"step": 2, "value": 2.0}, "x: 1")
    message = str(error.value)
    assert "\n" not in message and "no space left on device" in message and "step_000001" in message, message
    point = find_resume_point(directory)
    assert point is not None and point.state["step"] == 1 and point.note is None
    assert not list(directory.glob(".tmp-*")), "the failed save left its temporary folder"
    assert shutil.disk_usage(small_file_system).used < 1_000_000


def test_a_finished_run_run_again_writes_no_checkpoint(tiny_model_dir: Path, prompt_files, tmp_path: Path) -> None:
    train, _ = prompt_files
    args = ["train", str(REPO / "configs/default.yaml"), "--quiet",
            *tiny_overrides(tiny_model_dir, train, "''", tmp_path, **{"train.steps": 2, "train.save_every": 2})]
    assert main(args) == 0
    checkpoints = tmp_path / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000002"]  # saved once, not twice
    assert main(args) == 0
    assert before == {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}


def test_sigterm_stops_training_with_a_message_and_the_checkpoint_intact(tiny_model_dir: Path, prompt_files,
                                                                         tmp_path: Path) -> None:
    train, _ = prompt_files
    args = tiny_overrides(tiny_model_dir, train, "''", tmp_path, **{"train.steps": 500, "train.save_every": 1})
    proc = subprocess.Popen([sys.executable, "-m", "gfnlm.cli", "train", str(REPO / "configs/default.yaml"),
                             "--quiet", *args], stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while checkpoint.latest_checkpoint(tmp_path / "checkpoints") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "gfnlm train: terminated (SIGTERM); the last checkpoint is intact", err[-2000:]
    point = find_resume_point(tmp_path / "checkpoints")
    assert point is not None and point.note is None and point.state["step"] >= 1
