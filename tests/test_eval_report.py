"""``gfnlm eval`` reports the response length it used: a task's own default (math: 1024 new
tokens) when the run does not set one for it, the share of T=1 samples cut off without EOS, a
warning when most are, and a table that still renders evaluations cached without these metrics."""

import argparse
import json
from pathlib import Path

import pytest
from test_input_checks import run_main

from gfnlm import cli
from gfnlm.contracts.registry import build
from gfnlm.evaluation import held_out
from gfnlm.evaluation.held_out import EvalResult
from gfnlm.models import loading
from gfnlm.training.config import RunConfig


def _math_file(tmp_path: Path) -> Path:
    path = tmp_path / "math.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "3 * 3?", "answer": "9"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _factual_file(tmp_path: Path) -> Path:
    path = tmp_path / "factual.jsonl"
    rows = [
        {"question": "What is the capital of France?", "answers": ["Paris"]},
        {"question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _args(**overrides) -> argparse.Namespace:
    return argparse.Namespace(**{"max_new_tokens": 0, "run": None, **overrides})


def test_new_tokens_follow_flag_then_task_default_then_run() -> None:
    config = RunConfig()  # factual, sampling.max_new_tokens=24
    math, factual = build("task", "math", {}), build("task", "factual", {})
    assert cli._new_tokens(_args(), config, math)[0] == 1024
    assert cli._new_tokens(_args(max_new_tokens=64), config, math)[0] == 64
    assert cli._new_tokens(_args(), config, factual)[0] == 24
    # a math run's own length wins over the task's default; another task's run does not
    config.task.name = "math"
    config.sampling.max_new_tokens = 512
    assert cli._new_tokens(_args(run="runs/math"), config, math)[0] == 512
    config.task.name = "factual"
    assert cli._new_tokens(_args(run="runs/factual"), config, math)[0] == 1024


def _fake_evaluate(used: dict, truncated_rate: float):
    def fake(policy, prompts, samples, max_new_tokens, **kwargs) -> EvalResult:
        used["max_new_tokens"] = max_new_tokens
        return EvalResult(
            0.0, 0.0, 0.0, 0.0, 3.0, 3.0, len(prompts), samples, samples, 0.5, truncated_rate
        )

    return fake


def test_math_eval_defaults_to_1024_new_tokens_and_reports_them(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # the tiny model's context (256) cannot hold 1024 new tokens: pretend it is SmolLM2's, and
    # skip the (slow) decoding, checking what the evaluation was asked for
    monkeypatch.setattr(loading, "context_length", lambda model_dir: 8192)
    used: dict = {}
    monkeypatch.setattr(held_out, "evaluate", _fake_evaluate(used, 0.25))
    out = tmp_path / "out.json"
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "math", "--samples", "2"]
    code, err = run_main(
        [*argv, "--prompts", str(_math_file(tmp_path)), "--json", str(out), "--device", "cpu"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert used["max_new_tokens"] == 1024
    report = json.loads(out.read_text())
    assert report["max_new_tokens"] == 1024
    assert report["metrics"]["truncated_rate"] == 0.25
    assert "warning" not in err  # a quarter truncated: no warning


def test_math_default_is_checked_against_the_context(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    code, err = run_main(
        ["eval", "--model", str(tiny_model_dir), "--task", "math", "--samples", "2"]
        + ["--prompts", str(_math_file(tmp_path)), "--device", "cpu"],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert "default max_new_tokens=1024" in err and "context of 256" in err, err


def test_eval_reports_length_used_truncation_and_warns(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "math.json"
    code, err = run_main(
        ["eval", "--model", str(tiny_model_dir), "--task", "math", "--samples", "2"]
        + ["--prompts", str(_math_file(tmp_path)), "--max-new-tokens", "1", "--device", "cpu"]
        + ["--json", str(out)],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["max_new_tokens"] == 1
    assert report["metrics"]["truncated_rate"] > 0.5
    assert "format_ok_rate" in report["metrics"]
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert "hit --max-new-tokens=1 without EOS" in warnings[0]


def test_factual_eval_uses_the_default_config_length(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "factual.json"
    monkeypatch.setattr(cli, "raise_on_sigterm", lambda: None)
    capsys.readouterr()
    code = cli.main(
        ["eval", "--model", str(tiny_model_dir), "--task", "factual", "--samples", "2"]
        + ["--prompts", str(_factual_file(tmp_path)), "--device", "cpu", "--json", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "max_new_tokens=24" in captured.out
    assert "truncated at T=1 (no EOS)" in captured.out
    assert "format ok at T=1" in captured.out
    report = json.loads(out.read_text())
    assert report["max_new_tokens"] == 24
    assert 0.0 <= report["metrics"]["truncated_rate"] <= 1.0


def test_table_renders_a_cached_evaluation_without_the_new_metrics() -> None:
    old = {
        "accuracy_t1": 0.5,
        "greedy_accuracy": 0.25,
        "pass_at_k": 0.75,
        "majority_at_k": 0.5,
        "mean_length": 12.0,
        "greedy_mean_length": 10.0,
    }
    new = {**old, "truncated_rate": 0.125, "format_ok_rate": 1.0}
    table = cli.format_eval_table({"before": old, "after": new})
    truncated = next(line for line in table.splitlines() if "truncated at T=1" in line)
    assert truncated.split()[-2:] == ["–", "12.5%"]
    format_ok = next(line for line in table.splitlines() if "format ok at T=1" in line)
    assert format_ok.split()[-2:] == ["–", "100.0%"]


@pytest.mark.parametrize("name", ["eval", "sample"])
def test_help_shows_defaults(name: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0)" in text and "(default: smollm2)" in text
    assert "(default: hf)" in text  # --sampler


def test_every_option_of_every_command_states_its_default(capsys) -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        required = {
            action
            for group in command._mutually_exclusive_groups
            if group.required
            for action in group._group_actions
        }
        for action in command._actions:
            flag_only = isinstance(action, argparse._StoreTrueAction | argparse._HelpAction)
            if not action.option_strings or flag_only or action.required or action in required:
                continue
            # the text --help prints for the option, before argparse wraps it
            shown = command._get_formatter()._expand_help(action) if action.help else ""
            assert "default" in shown, (name, action.option_strings)
            assert action.option_strings[-1] in text


# ---------------------------------------------------------------- several k, per-question records
def test_several_k_from_one_set_of_samples_with_per_question_records(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "k.json"
    monkeypatch.setattr(cli, "raise_on_sigterm", lambda: None)
    capsys.readouterr()
    code = cli.main(
        ["eval", "--model", str(tiny_model_dir), "--prompts", str(_factual_file(tmp_path))]
        + ["--k", "4", "1", "2", "--max-new-tokens", "3", "--device", "cpu", "--json", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(out.read_text())
    assert report["samples"] == 4 and report["k"] == [1, 2, 4]  # n = the largest k
    labels = [line.split("  ")[0] for line in captured.out.splitlines()]
    for k in (1, 2, 4):
        assert f"pass@{k}" in labels and f"majority@{k}" in labels
    questions, metrics = report["questions"], report["metrics"]
    assert [q["question"] for q in questions] == [
        "What is the capital of France?",
        "Who wrote Hamlet?",
    ]
    assert questions[0]["answers"] == ["Paris"] and "capital of France" in questions[0]["prompt"]
    for q in questions:
        assert len(q["samples"]) == 4
        for s in [*q["samples"], q["greedy"]]:
            assert set(s) == {"response", "answer", "correct", "format_ok", "length", "truncated"}
            assert 1 <= s["length"] <= 3 and (s["length"] == 3 or not s["truncated"])
    # the aggregates are those of the records
    correct = [[s["correct"] for s in q["samples"]] for q in questions]
    assert metrics["accuracy_t1"] == pytest.approx(sum(map(sum, correct)) / 8)
    for k in (1, 2, 4):
        expected = sum(held_out.pass_at_k(4, sum(c), k) for c in correct) / 2
        assert metrics[f"pass_at_{k}"] == pytest.approx(expected)
    assert metrics["majority_at_1"] == pytest.approx(metrics["accuracy_t1"])
    assert (metrics["pass_at_k"], metrics["majority_at_k"], metrics["k"]) == (
        metrics["pass_at_4"],
        metrics["majority_at_4"],
        4,
    )
    truncated = [s["truncated"] for q in questions for s in q["samples"]]
    assert metrics["truncated_rate"] == pytest.approx(sum(truncated) / 8)
    assert metrics["greedy_mean_length"] == pytest.approx(
        sum(q["greedy"]["length"] for q in questions) / 2
    )


def test_a_single_k_below_the_samples_still_works(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "k2.json"
    code, err = run_main(
        ["eval", "--model", str(tiny_model_dir), "--prompts", str(_factual_file(tmp_path))]
        + ["--k", "2", "--samples", "3", "--max-new-tokens", "2", "--device", "cpu"]
        + ["--json", str(out)],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["samples"] == 3 and report["k"] == [2] and report["metrics"]["k"] == 2
    assert len(report["questions"][0]["samples"]) == 3


def test_majority_at_k_averages_disjoint_groups_and_is_unbiased() -> None:
    from itertools import combinations, permutations

    keys = ["a", "b", "a", "c", "b"]
    correct = [True, False, True, False, False]
    assert held_out.majority_at_k(keys, correct, 1) == pytest.approx(2 / 5)
    # groups [a, b] -> a (tie: the first seen), [a, c] -> a; the fifth sample is left over
    assert held_out.majority_at_k(keys, correct, 2) == 1.0
    assert held_out.majority_at_k(keys, correct, 5) == 1.0  # a: 2 votes, b: 2, a first
    # over every order of the samples, the estimate averages to maj@k of k random samples
    rows = list(zip(keys, correct, strict=True))
    for k in (2, 3):
        by_order = [
            held_out.majority_at_k([r[0] for r in p], [r[1] for r in p], k)
            for p in permutations(rows)
        ]
        by_draw = [
            held_out.majority_at_k([r[0] for r in d], [r[1] for r in d], k)
            for s in combinations(rows, k)
            for d in permutations(s)
        ]
        assert sum(by_order) / len(by_order) == pytest.approx(sum(by_draw) / len(by_draw))


def test_progress_counts_sequences_as_they_finish(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One decoding call for all questions; the bar still moves within it, as rows emit EOS."""
    from test_samplers import make_policy

    from gfnlm.tasks.prompts import PromptSet

    policy = make_policy(tiny_model_dir, eos_bias=10.0)  # EOS about as likely as the rest
    prompts = PromptSet.load(str(_factual_file(tmp_path)), "--prompts", policy.tokenizer, 256)
    updates: list[int] = []
    real_bar = held_out.sequence_bar

    def recording_bar(description: str, total: int, progress: bool):
        bar = real_bar(description, total, False)
        update = bar.update
        bar.update = lambda n=1: (updates.append(n), update(n))[1]
        return bar

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(held_out, "sequence_bar", recording_bar)
        sampler = held_out.HFSampler(max_new_tokens=16)
        real_sample = sampler.sample
        patch.setattr(sampler, "sample", lambda *a: (calls.append(a), real_sample(*a))[1])
        result = held_out.evaluate(policy, prompts, 8, 16, sampler=sampler)
    assert len(calls) == 1 and sum(updates) == 16 and result.num_questions == 2
    assert len([n for n in updates if n]) > 2  # not one step for the whole call
