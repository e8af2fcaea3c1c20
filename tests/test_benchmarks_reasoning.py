"""benchmarks/reasoning_replication.py's ``--reuse-runs``: Base and PowerFlow of the SmolLM2
comparison are taken from a finished default run only when that run's config is the suite's
PowerFlow config."""

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
    spec = importlib.util.spec_from_file_location(
        "reasoning_replication", BENCHMARKS / "reasoning_replication.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "out")
    module.SUITE["name"] = "smollm2"
    (tmp_path / "out" / "results").mkdir(parents=True)
    yield module
    sys.modules.pop("reasoning_replication", None)


def evaluation(accuracy: float) -> dict:
    return {
        "accuracy_t1": accuracy,
        "pass_at_k": 0.9,
        "majority_at_k": accuracy + 0.1,
        "greedy_accuracy": 1.0,
        "mean_length": 12.5,
        "greedy_mean_length": 10.0,
        "num_questions": 64,
        "samples_per_question": 8,
    }


def write_run(run_dir: Path, overrides: list[str], steps: tuple[int, ...] = (0, 24)) -> Path:
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(load_config(DEFAULT_CONFIG, overrides)))
    for step, accuracy in zip(steps, (0.40, 0.70), strict=False):
        (run_dir / "eval" / f"step_{step:06d}.json").write_text(json.dumps(evaluation(accuracy)))
    return run_dir


def test_a_default_run_gives_base_and_powerflow(replication, tmp_path: Path) -> None:
    # Another thread count and output folder are the same run; the seed must match.
    run = write_run(
        tmp_path / "seed1", ["train.seed=1", "train.threads=2", "train.out_dir=somewhere/else"]
    )
    assert replication.adopt_default_run(1, run) == ["smollm2_Base_s1", "smollm2_PowerFlow_s1"]
    base = json.loads((tmp_path / "out" / "results" / "smollm2_Base_s1.json").read_text())
    powerflow = json.loads((tmp_path / "out" / "results" / "smollm2_PowerFlow_s1.json").read_text())
    assert (base["avg"], base["maj"], powerflow["avg"], powerflow["before_avg"]) == (
        0.40,
        0.50,
        0.70,
        0.40,
    )
    assert powerflow["source"] == str(run)
    # A second call keeps what is there.
    assert replication.adopt_default_run(1, run) == []


@pytest.mark.parametrize(
    ("overrides", "seed", "steps", "message"),
    [
        (
            ["train.seed=1", "objective.name=tb"],
            1,
            (0, 24),
            "was not run with configs/default.yaml at train.seed=1",
        ),
        (["train.seed=2"], 1, (0, 24), "was not run with configs/default.yaml at train.seed=1"),
        (["train.seed=1"], 1, (0, 12), "lacks step_000000.json or step_000024.json"),
    ],
)
def test_a_run_of_another_config_or_unfinished_is_refused(
    replication, tmp_path: Path, overrides, seed, steps, message
) -> None:
    run = write_run(tmp_path / "run", overrides, steps)
    with pytest.raises(SystemExit, match=message):
        replication.adopt_default_run(seed, run)
    assert not list((tmp_path / "out" / "results").iterdir())


# ------------------------------------------------------------------------------ forks pre-training
@pytest.fixture
def forks_replication(replication, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(replication.PRETRAIN, "seed", 1234)
    replication.use_forks_suite()
    return replication


def tiny_tokenizer(tmp_path: Path, replication):
    from gfnlm.models.loading import load_tokenizer
    from gfnlm.tasks import synthetic_reasoning

    return load_tokenizer(
        synthetic_reasoning.save_tokenizer(tmp_path / "tokenizer", replication.forks.ROUTES)
    )


def test_forks_curriculum_teaches_with_correct_work_solutions_first(
    forks_replication, tmp_path: Path
) -> None:
    import random

    from gfnlm.tasks import synthetic_reasoning

    phases = forks_replication.pretraining_phases()
    assert [name for name, _, _ in phases] == ["work", "mixture"]
    assert sum(steps for _, steps, _ in phases) == forks_replication.PRETRAIN["steps"]
    rng = random.Random(0)
    for _ in range(200):
        question = synthetic_reasoning.make_question(rng, *forks_replication.TERMS)
        solution = forks_replication.pretraining_solution(question, rng, "work")
        assert solution.startswith("work ") and synthetic_reasoning.is_correct(solution, question)
        # every running sum is right, not only the answer
        digits, total, sums = synthetic_reasoning.terms(question), 0, []
        for digit in digits:
            total = (total + digit) % 10
            sums.append(str(total))
        words = solution.split()
        assert [words[i + 1] for i, w in enumerate(words) if w == "="] == sums[1:]
    routes = [
        forks_replication.pretraining_solution(
            synthetic_reasoning.make_question(rng, 2, 4), rng, "mixture"
        ).split()[0]
        for _ in range(2000)
    ]
    assert 0.31 < routes.count("work") / len(routes) < 0.39


def test_each_phase_anneals_its_own_learning_rate(forks_replication, tmp_path: Path) -> None:
    # Each phase warms up to its own peak and anneals to ~0 within its own steps: a work phase that
    # is only the first part of one long schedule is never annealed, and at the pre-training seed
    # stays on the copy-digits plateau.
    import random

    import torch
    from transformers import AutoModelForCausalLM

    from gfnlm.models.loading import save_random_llama

    tokenizer = tiny_tokenizer(tmp_path, forks_replication)
    model = AutoModelForCausalLM.from_pretrained(
        save_random_llama(tmp_path / "m", tmp_path / "tokenizer"), dtype=torch.float32
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    lrs = []
    optimiser.register_step_pre_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"])
    )
    losses: list[float] = []
    forks_replication.train_phase(
        model, tokenizer, optimiser, random.Random(0), "work", 40, 3e-3, losses
    )
    forks_replication.train_phase(
        model, tokenizer, optimiser, random.Random(0), "mixture", 40, 1e-3, losses
    )
    work, mixture = lrs[:40], lrs[40:]
    assert max(work) == pytest.approx(3e-3) and work[-1] < 3e-5
    assert max(mixture) == pytest.approx(1e-3) and mixture[-1] < 1e-5
    assert len(losses) == 80


def test_pretraining_stops_when_the_work_phase_did_not_learn_to_add(
    forks_replication, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few steps cannot teach the sums: the check sees chance-level sums and refuses the model
    # after work_cycles work phases, instead of caching a base that cannot add.
    monkeypatch.setitem(forks_replication.PRETRAIN, "clean_steps", 3)
    monkeypatch.setitem(forks_replication.PRETRAIN, "steps", 6)
    monkeypatch.setitem(forks_replication.PRETRAIN, "work_cycles", 2)
    phases = []
    original = forks_replication.train_phase
    monkeypatch.setattr(
        forks_replication, "train_phase", lambda *args: phases.append(args[4]) or original(*args)
    )
    with pytest.raises(
        SystemExit, match=r"after 2 work phases of 3 steps .* has not learnt to add"
    ):
        forks_replication.pretrain(tmp_path / "base")
    assert phases == ["work", "work"]
    assert not (tmp_path / "base").exists()
