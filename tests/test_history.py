"""What a run records besides checkpoints: ``Trainer.history``, ``metrics.jsonl`` (across resumes,
crashes and torn lines), callbacks, and the per-step KL estimates. On the tiny random Llama of the
trainer tests."""

import json
import math
from pathlib import Path

import pytest
from test_trainer import REPO, scalars, tiny_overrides

from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.training import checkpoint
from gfnlm.training.callbacks import Callback
from gfnlm.training.config import load_config
from gfnlm.training.metrics_log import MetricsLog, read_records
from gfnlm.training.trainer import Trainer


class Recorder(Callback):
    """Counts every event; raises in ``on_step`` at ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.steps: list[int] = []
        self.evals: list[int] = []
        self.saves: list[tuple[int, Path]] = []
        self.fail_at = fail_at

    def on_step(self, trainer, step, metrics):
        assert trainer.history[-1] == {"step": step, **metrics}  # recorded before the callback
        self.steps.append(step)
        if step == self.fail_at:
            raise RuntimeError(f"stop at step {step}")

    def on_eval(self, trainer, step, results):
        self.evals.append(step)

    def on_save(self, trainer, step, path):
        assert (path / checkpoint.STATE_FILE).is_file()  # complete on disk before the call
        self.saves.append((step, path))


def jsonl(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def step_records(out_dir: Path) -> list[dict]:
    return [record for record in jsonl(out_dir) if "eval" not in record]


def same_record(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN (a metric can be NaN; JSON holds it as null)."""
    fix = lambda v: "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return {k: fix(v) for k, v in a.items()} == {k: fix(v) for k, v in b.items()}


def tiny_config(model_dir: Path, prompt_files, out_dir: Path, **extra: object):
    train, evaluation = prompt_files
    overrides = tiny_overrides(model_dir, train, evaluation, out_dir, **extra)
    return load_config(REPO / "configs/default.yaml", overrides)


# ------------------------------------------------------------------ history, JSONL, callbacks
def test_history_jsonl_and_tensorboard_agree_and_callbacks_see_every_event(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    recorder = Recorder()
    config = tiny_config(
        tiny_model_dir,
        prompt_files,
        tmp_path,
        **{"train.steps": 3, "train.eval_every": 2, "train.save_every": 2},
    )
    trainer = Trainer(config, progress=False, callbacks=[recorder])
    results = trainer.train()
    trainer.close()
    history = trainer.history
    assert results["history"] is history and results["after"] is not None
    assert [record["step"] for record in history] == [1, 2, 3]
    # TensorBoard got the same values (it stores float32)
    found = scalars(tmp_path / "tb")
    for key in ("loss", "length/mean", "grad_norm", "log_z"):
        logged = [(step, value) for step, value in found[f"train/{key}"]]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in history]
    # ... and so did the JSONL: every step once, in order, then the evaluations at 0, 2 and 3
    assert all(same_record(a, b) for a, b in zip(step_records(tmp_path), history, strict=True))
    evals = [record for record in jsonl(tmp_path) if "eval" in record]
    assert [record["step"] for record in evals] == [0, 2, 3]
    assert evals[0]["eval"] == pytest.approx(results["before"])
    assert evals[-1]["eval"] == pytest.approx(results["after"])
    assert recorder.steps == [1, 2, 3] and recorder.evals == [0, 2, 3]
    assert [(step, path.name) for step, path in recorder.saves] == [
        (2, "step_000002"),
        (3, "step_000003"),
    ]


def test_a_resumed_run_drops_what_was_logged_after_its_checkpoint(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """A callback's exception stops training at step 3 (the checkpoint of step 2 intact) after
    step 3 was logged; a kill then tears a last line. The resumed run drops both, carries on from
    step 2, and every log holds steps 1–4 once."""
    settings = {"train.steps": 4, "train.save_every": 2}
    config = tiny_config(tiny_model_dir, prompt_files, tmp_path, **settings)
    crashed = Trainer(config, progress=False, callbacks=[Recorder(fail_at=3)])
    with pytest.raises(RuntimeError, match="stop at step 3"):
        crashed.train()
    crashed.close()
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints").name == "step_000002"
    assert [r["step"] for r in step_records(tmp_path)] == [1, 2, 3]
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 4, "loss": 0.1')  # killed in mid-write

    recorder = Recorder()
    resumed = Trainer(config, progress=False, callbacks=[recorder])
    history = resumed.train()["history"]
    resumed.close()
    assert recorder.steps == [3, 4] and recorder.evals == [0, 4]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    # the steps before the checkpoint are read back as they were logged
    assert all(same_record(a, b) for a, b in zip(history[:2], crashed.history[:2], strict=True))
    assert all(same_record(a, b) for a, b in zip(step_records(tmp_path), history, strict=True))
    assert [r["step"] for r in jsonl(tmp_path) if "eval" in r] == [0, 4]
    losses = [value for _, value in scalars(tmp_path / "tb")["train/loss"]]
    assert losses == [pytest.approx(r["loss"], rel=1e-6) for r in history]


def test_bad_callbacks_are_a_one_line_error_before_the_model_loads(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gfnlm.training.policy import CausalLMPolicy

    monkeypatch.setattr(CausalLMPolicy, "from_config", None)  # loading would raise TypeError
    config = tiny_config(tiny_model_dir, prompt_files, tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks\[1\]=<object object at .*>: must be an"):
        Trainer(config, callbacks=[Callback(), object()])
    with pytest.raises(ConfigError, match=r"^callbacks=<.*Recorder.*>: must be a list"):
        Trainer(config, callbacks=Recorder())


# ------------------------------------------------------------------ the JSONL file itself
def test_a_torn_or_damaged_line_is_dropped_and_the_file_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 1.0}\n'
        "not json\n"
        '{"step": 2, "loss": null, "eval_like": 3}\n'
        '{"step": 2, "eval": {"accuracy_t1": 0.5}}\n'
        '{"step": 3, "loss": 0.'
    )
    records, dropped = read_records(path, up_to_step=10)
    assert dropped and [r["step"] for r in records] == [1, 2, 2]
    assert math.isnan(records[1]["loss"])  # null is read back as NaN
    assert "metrics.jsonl: line 2 is not a record; dropped" in capsys.readouterr().err
    log = MetricsLog(tmp_path)
    assert log.restore(up_to_step=1, writable=True) == records[:1]
    log.append({"step": 2, "loss": float("nan"), "length/mean": 4.0})
    log.close()
    assert path.read_text() == (
        '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": null, "length/mean": 4.0}\n'
    )
    assert read_records(path, up_to_step=10)[1] is False  # nothing left to repair


def test_an_intact_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    inode = path.stat().st_ino
    log = MetricsLog(tmp_path)
    assert [r["step"] for r in log.restore(up_to_step=2, writable=True)] == [1, 2]
    log.close()
    assert path.stat().st_ino == inode  # appended to in place, not replaced


def test_an_unwritable_metrics_log_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").mkdir()  # a folder where the file should be
    with pytest.raises(RunError, match=r"metrics\.jsonl: cannot read or write the metrics log \("):
        MetricsLog(tmp_path).restore(up_to_step=0, writable=True)
