"""``gfnlm sweep``: a grid of objectives × seeds on a tiny random Llama (the real SmolLM2
tokenizer), its table and plot checked against the runs' own metrics; a rerun skips the finished
cells and resumes a half-finished one; bad grid keys fail in one line before any run."""

import csv
import json
import statistics
from pathlib import Path
from typing import ClassVar

import attrs
import pytest

from gfnlm.cli import main
from gfnlm.contracts.errors import ConfigError
from gfnlm.training import sweep as sweep_module
from gfnlm.training.sweep import plan_sweep, sweep
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ["la_tb", "tb", "grpo"]
SEEDS = [0, 1]
STEPS, LAST_K = 2, 2


def write_spec(tmp_path: Path, model_dir: Path, prompts: tuple[Path, Path], **sections) -> Path:
    """A sweep of the default config shrunk to the tiny model: 2 steps of 2 prompts × 2 samples,
    1 held-out question."""
    train, evaluation = prompts
    spec = {
        "base": str(REPO / "configs/default.yaml"),
        "set": {
            "model.path": str(model_dir),
            "model.lora_targets": ["q_proj", "v_proj"],
            "data.train": str(train),
            "data.eval": str(evaluation),
            "sampling.samples_per_prompt": 2,
            "sampling.max_new_tokens": 6,
            "train.prompts_per_step": 2,
            "train.steps": STEPS,
            "train.device": "cpu",
            "train.eval_samples": 2,
        },
        "grid": {"objective.name": OBJECTIVES},
        "seeds": SEEDS,
        "out": str(tmp_path / "sweep"),
        "last_k": LAST_K,
        **sections,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


class RecordingTrainer(Trainer):
    """The real trainer, remembering each run's folder, resume step and results."""

    runs: ClassVar[list[tuple[str, int]]] = []
    results: ClassVar[dict[str, dict]] = {}

    def train(self):
        RecordingTrainer.runs.append((self.out_dir.name, self.resume_step()))
        results = super().train()
        RecordingTrainer.results[self.out_dir.name] = results
        return results


class RefusingTrainer:
    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("no run may start")


def test_sweep_compares_resumes_and_skips(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path, tiny_model_dir, prompt_files)
    # One cell half-finished beforehand: 1 of its 2 steps.
    half = plan_sweep(spec).cells[1]
    Trainer(
        attrs.evolve(half.config, train=attrs.evolve(half.config.train, steps=1)), progress=False
    ).train()
    plan = plan_sweep(spec)
    assert [c.status for c in plan.cells] == ["new", "resumes at step 1/2"] + ["new"] * 4
    # Seeds vary slowest: the first pass over the grid compares every objective.
    assert [c.name for c in plan.cells[:3]] == [f"objective-{o}__seed-0" for o in OBJECTIVES]

    RecordingTrainer.runs, RecordingTrainer.results = [], {}
    monkeypatch.setattr(sweep_module, "Trainer", RecordingTrainer)
    assert sweep(str(spec), progress=False, echo=lambda _: None) == 0
    assert dict(RecordingTrainer.runs) == {c.name: int(c is plan.cells[1]) for c in plan.cells}

    out = tmp_path / "sweep"
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["objective"] for r in rows] == OBJECTIVES
    for row in rows:
        runs = [RecordingTrainer.results[f"objective-{row['objective']}__seed-{s}"] for s in SEEDS]
        assert row["seeds"] == str(len(SEEDS)) and row["failed"] == "0"
        # training metrics: the mean over seeds of each run's mean of its last LAST_K steps, as
        # train() returned them
        for tag in ("loss", "target/log_reward_mean", "length/mean"):
            per_run = [statistics.fmean(r[tag] for r in run["history"][-LAST_K:]) for run in runs]
            assert float(row[tag]) == pytest.approx(statistics.fmean(per_run), rel=1e-9)
            assert float(row[f"{tag}_std"]) == pytest.approx(statistics.stdev(per_run), rel=1e-9)
        accuracy = [run["after"]["accuracy_t1"] for run in runs]  # the final evaluation
        assert float(row["eval/accuracy_t1"]) == pytest.approx(statistics.fmean(accuracy))
    # every cell has each step once (the resumed one too: its first step from the first run)
    for cell in plan.cells:
        steps = [r["step"] for r in RecordingTrainer.results[cell.name]["history"]]
        assert steps == list(range(1, STEPS + 1))

    markdown = (out / "summary.md").read_text()
    assert markdown.count("\n| ") == len(OBJECTIVES)  # one data row per objective
    assert " ± " in markdown and "| objective | seeds |" in markdown
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    # A rerun: nothing left to train; the same table.
    table = (out / "summary.csv").read_text()
    monkeypatch.setattr(sweep_module, "Trainer", RefusingTrainer)
    assert all(c.finished for c in plan_sweep(spec).cells)
    assert sweep(str(spec), progress=False, echo=lambda _: None) == 0
    assert (out / "summary.csv").read_text() == table


@pytest.mark.parametrize(
    ("grid", "named"),
    [
        ({"objectiv.name": ["tb"]}, ["objectiv", "tb"]),
        ({"objective.name": ["la_tb", "nope"]}, ["objective.name", "nope", "registered"]),
        ({"train.updates_per_batch": [1, "two"]}, ["train.updates_per_batch", "two"]),
        # every key known, every name registered: train.lr=0 is out of its range
        ({"objective.name": ["tb", "subtb"], "train.lr": [1e-3, 0]}, ["train.lr", "0"]),
    ],
)
def test_bad_grid_is_one_line_before_any_run(
    tiny_model_dir: Path,
    prompt_files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    grid,
    named,
) -> None:
    spec = write_spec(tmp_path, tiny_model_dir, prompt_files, grid=grid)
    monkeypatch.setattr(sweep_module, "Trainer", RefusingTrainer)
    with pytest.raises(ConfigError) as caught:
        sweep(str(spec), progress=False, echo=lambda _: None)
    error = str(caught.value)
    assert "\n" not in error and all(word in error for word in named), error
    assert not (tmp_path / "sweep").exists()


def test_spec_mistakes_are_named(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep_module, "Trainer", RefusingTrainer)
    cases = {
        "grd": {"grd": {"train.lr": [1e-3]}},
        "grid.train.lr=[]": {"grid": {"train.lr": []}},
        "seeds": {"seeds": ["zero"]},
        "set.train.lr": {"set": {"train.lr": 1e-3}, "grid": {"train.lr": [1e-3]}},
        "train.out_dir": {"grid": {"train.out_dir": ["x"]}},
        "variants.big.objective.name": {"variants": {"big": {"objective.name": "tb"}}},
    }
    for named, sections in cases.items():
        spec = write_spec(tmp_path, tiny_model_dir, prompt_files, **sections)
        with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
            plan_sweep(spec)


def test_a_started_cell_keeps_its_config(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec edited after a cell started (another learning rate) is refused before the first
    run, not when the sweep reaches that cell."""
    spec = write_spec(tmp_path, tiny_model_dir, prompt_files, seeds=[0])
    no_eval = "data.eval=''"
    cell = plan_sweep(spec, [no_eval]).cells[-1]
    Trainer(
        attrs.evolve(cell.config, train=attrs.evolve(cell.config.train, steps=1)), progress=False
    ).train()
    assert plan_sweep(spec, [no_eval]).cells[-1].status == "resumes at step 1/2"
    monkeypatch.setattr(sweep_module, "Trainer", RefusingTrainer)
    with pytest.raises(ConfigError, match=r"train\.lr=0\.002 differs .* \(0\.0003\)"):
        plan_sweep(spec, [no_eval, "train.lr=2e-3"])


def test_variants_inline_base_and_dry_run(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """Named variants are one axis; an inline base behaves as a base file (a variant naming
    another objective starts from that objective's own options)."""
    spec = write_spec(
        tmp_path,
        tiny_model_dir,
        prompt_files,
        base={"objective": {"name": "la_tb", "options": {"log_z_source": "group_mean"}}},
        grid={"target.options.alpha": [2, 4]},
        variants={
            "powerflow": {"objective.name": "la_tb"},
            "rl_traj": {"objective.name": "grpo", "objective.options": {"kl_beta": 1.0}},
        },
    )
    plan = plan_sweep(spec, out=str(tmp_path / "elsewhere"))
    names = [c.name for c in plan.cells]
    assert names[:4] == [
        "powerflow__alpha-2__seed-0",
        "powerflow__alpha-4__seed-0",
        "rl_traj__alpha-2__seed-0",
        "rl_traj__alpha-4__seed-0",
    ]
    rl = plan.cells[2].config
    assert (rl.objective.name, rl.objective.options, rl.target.options) == (
        "grpo",
        {"kl_beta": 1.0},
        {"alpha": 2},
    )
    assert plan.cells[0].config.objective.options == {"log_z_source": "group_mean"}
    assert {c.config.train.out_dir for c in plan.cells} == {
        str(tmp_path / "elsewhere" / n) for n in names
    }
    shown: list[str] = []
    assert sweep(str(spec), dry_run=True, echo=shown.append) == 0
    assert shown[-1].startswith("8 runs") and shown[-2].startswith(
        "rl_traj__alpha-4__seed-1  [new]"
    )
    assert not (tmp_path / "sweep").exists()


def test_the_shipped_spec_composes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    shown: list[str] = []
    assert sweep("configs/sweeps/objectives.yaml", dry_run=True, echo=shown.append) == 0
    assert len(shown) == 7 and "6 runs in runs/sweeps/objectives, 6 to run" in shown[-1]


def test_cli(
    tiny_model_dir: Path, prompt_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``gfnlm sweep SPEC --dry-run``, and a bad key as the CLI prints it: one line, exit 2."""
    monkeypatch.setattr(sweep_module, "Trainer", RefusingTrainer)
    spec = write_spec(tmp_path, tiny_model_dir, prompt_files)
    assert main(["sweep", str(spec), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    shown = capsys.readouterr().out
    assert "objective-grpo__seed-1  [new]" in shown and str(tmp_path / "o") in shown
    spec = write_spec(tmp_path, tiny_model_dir, prompt_files, grid={"objectiv.name": ["tb"]})
    assert main(["sweep", str(spec), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gfnlm sweep: error: ") and error.count("\n") == 1
