"""benchmarks/reasoning_replication.py's ``--reuse-runs``: Base and PowerFlow of the SmolLM2 comparison
are taken from a finished default run only when that run's config is the suite's PowerFlow config."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gfnlm.training.config import load_config, to_yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DEFAULT_CONFIG = BENCHMARKS.parent / "configs" / "default.yaml"


@pytest.fixture
def replication(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling docs_page
    spec = importlib.util.spec_from_file_location("reasoning_replication", BENCHMARKS / "reasoning_replication.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "out")
    module.SUITE["name"] = "smollm2"
    (tmp_path / "out" / "results").mkdir(parents=True)
    yield module
    sys.modules.pop("reasoning_replication", None)


def evaluation(accuracy: float) -> dict:
    return {"accuracy_t1": accuracy, "pass_at_k": 0.9, "majority_at_k": accuracy + 0.1, "greedy_accuracy": 1.0,
            "mean_length": 12.5, "greedy_mean_length": 10.0, "num_questions": 64, "samples_per_question": 8}


def write_run(run_dir: Path, overrides: list[str], steps: tuple[int, ...] = (0, 24)) -> Path:
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(load_config(DEFAULT_CONFIG, overrides)))
    for step, accuracy in zip(steps, (0.40, 0.70), strict=False):
        (run_dir / "eval" / f"step_{step:06d}.json").write_text(json.dumps(evaluation(accuracy)))
    return run_dir


def test_a_default_run_gives_base_and_powerflow(replication, tmp_path: Path) -> None:
    # Another thread count and output folder are the same run; the seed must match.
    run = write_run(tmp_path / "seed1", ["train.seed=1", "train.threads=2", "train.out_dir=somewhere/else"])
    assert replication.adopt_default_run(1, run) == ["smollm2_Base_s1", "smollm2_PowerFlow_s1"]
    base = json.loads((tmp_path / "out" / "results" / "smollm2_Base_s1.json").read_text())
    powerflow = json.loads((tmp_path / "out" / "results" / "smollm2_PowerFlow_s1.json").read_text())
    assert (base["avg"], base["maj"], powerflow["avg"], powerflow["before_avg"]) == (0.40, 0.50, 0.70, 0.40)
    assert powerflow["source"] == str(run)
    # A second call keeps what is there.
    assert replication.adopt_default_run(1, run) == []


@pytest.mark.parametrize(
    ("overrides", "seed", "steps", "message"),
    [
        (["train.seed=1", "objective.name=tb"], 1, (0, 24), "was not run with configs/default.yaml at train.seed=1"),
        (["train.seed=2"], 1, (0, 24), "was not run with configs/default.yaml at train.seed=1"),
        (["train.seed=1"], 1, (0, 12), "lacks step_000000.json or step_000024.json"),
    ],
)
def test_a_run_of_another_config_or_unfinished_is_refused(replication, tmp_path: Path, overrides, seed, steps,
                                                          message) -> None:
    run = write_run(tmp_path / "run", overrides, steps)
    with pytest.raises(SystemExit, match=message):
        replication.adopt_default_run(seed, run)
    assert not list((tmp_path / "out" / "results").iterdir())
