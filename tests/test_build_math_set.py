"""The bundled math prompt set (gfnlm/data/math_*.jsonl) is exactly what
benchmarks/build_math_set.py generates, its gold answers parse, and train and eval are disjoint."""

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gfnlm.tasks.math_answers import is_equivalent, parse_gold
from gfnlm.tasks.prompt_files import DATA_DIR, load_prompt_file

pytest.importorskip("reasoning_gym", reason="reasoning-gym (the `bench` extra) builds the set")

REPO = Path(__file__).resolve().parents[1]
FILES = ("math_train.jsonl", "math_eval.jsonl")


@functools.cache
def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_math_set", REPO / "benchmarks" / "build_math_set.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines()]


def test_script_reproduces_the_bundled_files_byte_for_byte(tmp_path):
    _builder().main(["--seed", "0", "--out-dir", str(tmp_path)])
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


def test_another_seed_gives_another_set(tmp_path):
    _builder().main(["--seed", "1", "--out-dir", str(tmp_path)])
    assert (tmp_path / FILES[1]).read_bytes() != (DATA_DIR / FILES[1]).read_bytes()


@pytest.mark.parametrize("name", FILES)
def test_every_gold_answer_parses_and_matches_itself_boxed(name):
    for i, row in enumerate(_rows(name), start=1):
        assert row["answers"], f"{name} row {i}"
        for answer in row["answers"]:
            parse_gold(answer, f"{name} row {i}")
            assert is_equivalent(rf"The answer is \boxed{{{answer}}}.", [answer]), (name, i)


def test_sizes_sources_and_lengths():
    builder = _builder()
    train, held_out = _rows(FILES[0]), _rows(FILES[1])
    assert len(train) == sum(s.n_train for s in builder.SOURCES) == 200
    assert len(held_out) == sum(s.n_eval for s in builder.SOURCES) == 60
    for row in train + held_out:
        assert set(row) == {"answers", "question", "source"}
        assert row["source"] in {s.name for s in builder.SOURCES}
        assert len(row["question"].split()) <= builder.MAX_WORDS
        assert not row["question"].endswith(builder.GSM_SUFFIX)


def test_train_and_eval_questions_are_disjoint_and_unique():
    train = [row["question"] for row in _rows(FILES[0])]
    held_out = [row["question"] for row in _rows(FILES[1])]
    assert len(set(train)) == len(train)
    assert len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)


@pytest.mark.parametrize("name", FILES)
def test_files_load_as_prompt_files(name):
    records = load_prompt_file(DATA_DIR / name)
    assert len(records) == len(_rows(name))


def test_exact_value_of_arithmetic():
    builder = _builder()
    assert builder.exact_value("( 56 + -33 ) - 84") == -61
    assert builder.exact_value("-(7 - 1) / 4") == builder.Fraction(-3, 2)
    with pytest.raises(ValueError, match="unsupported"):
        builder.exact_value("2 ** 3")
