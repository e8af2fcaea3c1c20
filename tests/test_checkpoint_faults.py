"""Checkpoints under faults: a failure or kill at every file-system step of a save (the re-save of
an existing step included), damaged or missing files at resume, a full disk, a malicious pickle,
non-finite weights, SIGTERM. Real files, real processes, a real full (tmpfs) file system."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

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


def is_fallback_note(line: str) -> bool:
    """A line of gfnlm's own on stderr other than the objective's exploration note."""
    return line.startswith("gfnlm:") and not line.startswith("gfnlm: note: objective")


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64,), value), "b": torch.full((3,), -value)}


def save(directory: Path, step: int, value: float) -> Path:
    return save_checkpoint(directory, step, weights(value), {"step": step, "value": value}, "x: 1")


def loaded_value(point: checkpoint.ResumePoint) -> float:
    """The value a checkpoint was written with, checked to be the same in both of its files."""
    value = float(point.policy_state["w"][0])
    assert value == point.state["value"], "policy and state files of one checkpoint disagree"
    return value


def rewrite_manifest(folder: Path) -> None:
    """Make the manifest agree with the files as they are now (what a hand edit could do)."""
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name], manifest["sha256"][name] = (
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
    (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))


def test_a_folder_without_manifest_is_not_a_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    folder = save(tmp_path, 2, 2.0)
    (folder / checkpoint.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing"):
        load_checkpoint(folder)
    assert loaded_value(find_resume_point(tmp_path)) == 1.0


class Killed(BaseException):
    """The injected failure: like SIGKILL, every later file-system step of the process is
    skipped."""


class FileSystemFaults:
    """Counts every file-system step a save takes; at step ``at`` raises :class:`Killed`, after
    which no further step touches the disk (the process is dead as far as files are concerned)."""

    STEPS: ClassVar = [
        (safetensors.torch, "save_file"),
        (torch, "save"),
        (checkpoint.os, "replace"),
        (checkpoint.os, "fsync"),
        (checkpoint.os, "open"),
        (checkpoint.shutil, "rmtree"),
        (checkpoint.tempfile, "mkdtemp"),
        (checkpoint.tempfile, "mkstemp"),
        (Path, "write_text"),
        (Path, "mkdir"),
        (Path, "unlink"),
    ]

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
def test_a_kill_at_every_file_system_step_leaves_a_loadable_latest(
    tmp_path: Path, monkeypatch, resave
) -> None:
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
        assert point is not None and point.note is None, (
            f"kill at step {at}: latest is not loadable ({point})"
        )
        assert loaded_value(point) in ({new_value} if completed else {2.0, new_value}), (
            f"kill at step {at}"
        )
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
        # The one window with a note: killed between the very first save's rename and its first
        # `latest` (the complete folder is found and used all the same).
        first_save = completed == 0 and len(list(tmp_path.glob("step_*"))) == 1
        assert point.note is None or (first_save and "latest is missing" in point.note), point.note
        assert loaded_value(point) in (point.state["step"], point.state["step"] + 0.5)
        completed += 1
    assert completed, "no save ever completed; lengthen the delays"


@pytest.mark.parametrize("damage", ["truncated", "empty", "no-latest", "dangling-latest"])
def test_resume_after_damage_takes_the_newest_complete_checkpoint(
    tiny_model_dir: Path,
    prompt_files,
    tmp_path: Path,
    damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train, _ = prompt_files
    run = tmp_path / "run"
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        "--quiet",
        *tiny_overrides(
            tiny_model_dir, train, "''", run, **{"train.steps": 2, "train.save_every": 1}
        ),
    ]
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
    notes = [line for line in capsys.readouterr().err.splitlines() if is_fallback_note(line)]
    assert len(notes) == 1, notes
    assert (
        why in notes[0]
        and f"using the newest complete checkpoint '{checkpoints / expected}'" in notes[0]
    )
    point = find_resume_point(checkpoints)
    assert point is not None and point.note is None and point.state["step"] == 3


def test_no_loadable_checkpoint_is_an_error_and_nothing_is_overwritten(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    (tmp_path / "step_000001" / checkpoint.POLICY_FILE).write_bytes(b"garbage")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(
        CheckpointError, match=r"no complete checkpoint in .*the run is not restarted"
    ):
        find_resume_point(tmp_path)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    bad = weights(2.0)
    bad["b"][1] = float("nan")
    with pytest.raises(
        CheckpointError,
        match=r"not saving step 2: 1 tensors hold NaN or inf \(e\.g\. 'b'\).*step_000001",
    ):
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
    rewrite_manifest(folder)  # as if the file and its manifest entry had been replaced by hand
    marker = Path(tempfile.gettempdir()) / f"gfnlm-pwned-{os.getpid()}"
    with pytest.raises(CheckpointError, match=r"state\.pt: unreadable"):
        load_checkpoint(folder)
    assert not marker.exists()


@pytest.fixture
def small_file_system(tmp_path: Path):
    """A real 2 MiB tmpfs (needs root, as CI has): the disk fills up during a save."""
    with mounted_tmpfs(tmp_path / "small", "size=2m") as mount_point:
        yield mount_point


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_survives(
    small_file_system: Path,
) -> None:
    directory = small_file_system / "checkpoints"
    save_checkpoint(
        directory, 1, {"w": torch.ones(100_000)}, {"step": 1, "value": 1.0}, "x: 1"
    )  # 400 KB
    with pytest.raises(CheckpointError) as error:  # 4 MB do not fit
        save_checkpoint(
            directory, 2, {"w": torch.ones(1_000_000)}, {"step": 2, "value": 2.0}, "x: 1"
        )
    message = str(error.value)
    assert (
        "\n" not in message and "no space left on device" in message and "step_000001" in message
    ), message
    point = find_resume_point(directory)
    assert point is not None and point.state["step"] == 1 and point.note is None
    assert not list(directory.glob(".tmp-*")), "the failed save left its temporary folder"
    assert shutil.disk_usage(small_file_system).used < 1_000_000


def test_a_finished_run_run_again_writes_no_checkpoint(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    train, _ = prompt_files
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        "--quiet",
        *tiny_overrides(
            tiny_model_dir, train, "''", tmp_path, **{"train.steps": 2, "train.save_every": 2}
        ),
    ]
    assert main(args) == 0
    checkpoints = tmp_path / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}
    assert sorted(p.name for p in checkpoints.glob("step_*")) == [
        "step_000002"
    ]  # saved once, not twice
    assert main(args) == 0
    assert before == {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}


def test_sigterm_stops_training_with_a_message_and_the_checkpoint_intact(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    train, _ = prompt_files
    args = tiny_overrides(
        tiny_model_dir, train, "''", tmp_path, **{"train.steps": 500, "train.save_every": 1}
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gfnlm.cli",
            "train",
            str(REPO / "configs/default.yaml"),
            "--quiet",
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while (
        checkpoint.latest_checkpoint(tmp_path / "checkpoints") is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "gfnlm train: terminated (SIGTERM); the last checkpoint is intact", err[
        -2000:
    ]
    point = find_resume_point(tmp_path / "checkpoints")
    assert point is not None and point.note is None and point.state["step"] >= 1


# ---------------------------------------------------------------------- integrity
def flip_one_bit(file: Path, at: float = 0.5) -> None:
    """Same size, one bit different: what a size check cannot see."""
    data = bytearray(file.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [checkpoint.POLICY_FILE, checkpoint.STATE_FILE])
def test_a_flipped_bit_is_caught_by_the_hash_and_the_previous_checkpoint_used(
    tmp_path: Path, name: str
) -> None:
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    size = (tmp_path / "step_000002" / name).stat().st_size
    flip_one_bit(tmp_path / "step_000002" / name)
    assert (tmp_path / "step_000002" / name).stat().st_size == size
    with pytest.raises(CheckpointError, match=rf"{name}: damaged \(its SHA-256 differs"):
        load_checkpoint(tmp_path / "step_000002")
    point = find_resume_point(tmp_path)
    assert point is not None and loaded_value(point) == 1.0
    assert "names a broken checkpoint" in point.note and "damaged" in point.note
    assert f"using the newest complete checkpoint '{tmp_path / 'step_000001'}'" in point.note


def test_the_manifest_holds_each_files_sha256(tmp_path: Path) -> None:
    folder = save(tmp_path, 3, 3.0)
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    for name in (checkpoint.POLICY_FILE, checkpoint.STATE_FILE, checkpoint.CONFIG_FILE):
        assert manifest["sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_non_finite_weights_on_disk_are_refused_naming_the_step(tmp_path: Path) -> None:
    save(tmp_path, 1, 1.0)
    folder = save(tmp_path, 2, 2.0)
    safetensors.torch.save_file(
        {**weights(2.0), "w": torch.full((64,), float("inf"))}, folder / checkpoint.POLICY_FILE
    )
    rewrite_manifest(folder)  # as if written by hand: only the content can tell
    with pytest.raises(
        CheckpointError,
        match=r"step_000002: the weights of step 2 hold NaN or inf \(1 tensors, e\.g\. 'w'\)",
    ):
        load_checkpoint(folder)
    point = find_resume_point(tmp_path)
    assert point is not None and point.state["step"] == 1 and "NaN or inf" in point.note


def test_latest_naming_another_runs_checkpoint_is_not_followed(tmp_path: Path) -> None:
    other = tmp_path / "other_run" / "checkpoints"
    save(other, 9, 9.0)
    mine = tmp_path / "my_run" / "checkpoints"
    save(mine, 1, 1.0)
    (mine / checkpoint.LATEST).write_text("../../other_run/checkpoints/step_000009")
    assert checkpoint.latest_checkpoint(mine) is None
    point = find_resume_point(mine)
    assert point is not None and loaded_value(point) == 1.0
    assert "which is not a checkpoint of this run" in point.note
    (mine / checkpoint.LATEST).write_text(str(other / "step_000009"))  # an absolute path: the same
    assert loaded_value(find_resume_point(mine)) == 1.0


def test_pruning_counts_only_intact_checkpoints_and_keeps_latest(tmp_path: Path) -> None:
    """A broken newest folder neither pushes the newest loadable one out nor gets deleted; the
    message of a failed save names the checkpoint that loads."""
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    policy = tmp_path / "step_000002" / checkpoint.POLICY_FILE
    policy.write_bytes(policy.read_bytes()[:100])  # damaged after it was written
    point = find_resume_point(tmp_path)
    assert point.path.name == "step_000001"
    checkpoint.point_latest_at(tmp_path, point.path)  # what the trainer does after a fallback
    assert (
        checkpoint.what_is_kept(tmp_path)
        == f"the last checkpoint {str(tmp_path / 'step_000001')!r} is intact"
    )
    save_checkpoint(tmp_path, 2, weights(2.5), {"step": 2, "value": 2.5}, "x: 1", keep=1)
    names = sorted(p.name for p in tmp_path.glob("step_*"))
    assert names == ["step_000002", "step_000002-1"], (
        names
    )  # step 1 pruned; the broken folder kept aside
    assert loaded_value(find_resume_point(tmp_path)) == 2.5
    # keep counts intact folders only: keeping the newest `keep` folders would keep the broken one
    # and delete step_000002-1's predecessor even with keep=2; keep=2 keeps both intact ones.
    save(tmp_path, 3, 3.0)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_000002",
        "step_000002-1",
        "step_000003",
    ]


def test_without_a_checkpoint_no_message_calls_one_intact(tmp_path: Path) -> None:
    bad = weights(1.0)
    bad["w"][0] = float("nan")
    with pytest.raises(CheckpointError, match=r"no checkpoint was written yet$"):
        save_checkpoint(tmp_path, 1, bad, {"step": 1}, "x: 1")


def test_a_bit_flipped_latest_falls_back_and_training_repairs_latest(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, capsys
) -> None:
    train, _ = prompt_files
    run = tmp_path / "run"
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        "--quiet",
        *tiny_overrides(
            tiny_model_dir, train, "''", run, **{"train.steps": 2, "train.save_every": 1}
        ),
    ]
    assert main(args) == 0
    checkpoints = run / "checkpoints"
    flip_one_bit(checkpoints / "step_000002" / checkpoint.POLICY_FILE)
    capsys.readouterr()
    assert main([*args, "train.steps=3"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if is_fallback_note(line)]
    assert len(notes) == 1 and "damaged" in notes[0] and notes[0].endswith("latest now names it"), (
        notes
    )
    point = find_resume_point(checkpoints)
    assert point.note is None and point.state["step"] == 3
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000002-1", "step_000003"]
    # eval and export read the same run: the fallback is one line there too, never a traceback
    flip_one_bit(point.path / checkpoint.STATE_FILE)
    capsys.readouterr()
    assert main(["export", str(run), "--adapter", str(tmp_path / "adapter")]) == 0
    err = capsys.readouterr().err
    assert (
        "damaged" in err
        and "using the newest complete checkpoint" in err
        and "Traceback" not in err
    )


# -------------------------------------------------------------- one trainer per run directory
def train_process(model_dir: Path, train: Path, run: Path, steps: int) -> subprocess.Popen:
    args = tiny_overrides(
        model_dir, train, "''", run, **{"train.steps": steps, "train.save_every": 1}
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gfnlm.cli",
            "train",
            str(REPO / "configs/default.yaml"),
            "--quiet",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_for_checkpoint(run: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while checkpoint.latest_checkpoint(run / "checkpoints") is None:
        assert proc.poll() is None and time.monotonic() < deadline, "the first run never saved"
        time.sleep(0.1)


def test_a_second_train_on_a_busy_run_directory_is_refused(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    train, _ = prompt_files
    run = tmp_path / "run"
    first = train_process(tiny_model_dir, train, run, steps=40)
    try:
        wait_for_checkpoint(run, first)
        # another alpha, as a user who forgot the first run would try
        args = tiny_overrides(tiny_model_dir, train, "''", run, **{"target.options.alpha": 2})
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "gfnlm.cli",
                "train",
                str(REPO / "configs/default.yaml"),
                "--quiet",
                *args,
            ],
            check=False,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert first.poll() is None, "the first run ended before the second tried; lengthen it"
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        expected = (
            f"gfnlm train: error: train.out_dir={str(run)!r}: in use by another gfnlm train "
            f"(pid {first.pid}); wait for it to finish or choose another train.out_dir"
        )
        assert lines == [expected], lines
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
        first.communicate()
    point = find_resume_point(run / "checkpoints")
    assert point.note is None and point.state["step"] == 40
    assert (
        "alpha: 4" in (point.path / checkpoint.CONFIG_FILE).read_text()
    )  # only the first run's config
    assert (
        main(
            [
                "train",
                str(REPO / "configs/default.yaml"),
                "--quiet",
                *tiny_overrides(
                    tiny_model_dir, train, "''", run, **{"train.steps": 41, "train.save_every": 1}
                ),
            ]
        )
        == 0
    )
    assert find_resume_point(run / "checkpoints").state["step"] == 41


def test_a_killed_holder_leaves_no_stale_lock(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    train, _ = prompt_files
    run = tmp_path / "run"
    first = train_process(tiny_model_dir, train, run, steps=500)
    wait_for_checkpoint(run, first)
    first.kill()  # SIGKILL: no finally block runs
    first.communicate()
    lock = checkpoint.RunLock(run)
    with lock:  # the kernel released it
        assert lock.held
        refused = checkpoint.RunLock(run)
        with pytest.raises(
            checkpoint.RunInUseError, match=rf"in use by another gfnlm train \(pid {os.getpid()}\)"
        ):
            refused.acquire()
    assert not lock.held and sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "tb",
    ]


def test_an_io_error_on_the_evaluation_cache_warns_and_the_run_goes_on(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch, capsys
) -> None:
    train, evaluation = prompt_files
    from gfnlm.evaluation import held_out

    real = held_out.write_text_atomic

    def eio_for_eval(path: Path, text: str) -> None:
        if path.parent.name == "eval":
            raise OSError(errno.EIO, "Input/output error")
        real(path, text)

    monkeypatch.setattr(held_out, "write_text_atomic", eio_for_eval)
    args = [
        "train",
        str(REPO / "configs/default.yaml"),
        "--quiet",
        *tiny_overrides(tiny_model_dir, train, evaluation, tmp_path, **{"train.steps": 1}),
    ]
    assert main(args) == 0
    warnings = [
        line
        for line in capsys.readouterr().err.splitlines()
        if "cannot cache the evaluation" in line
    ]
    assert len(warnings) == 2 and "input/output error" in warnings[0], warnings  # before and after
    assert find_resume_point(tmp_path / "checkpoints").state["step"] == 1
