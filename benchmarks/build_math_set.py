"""Build the bundled offline math prompt set (``gfnlm/data/math_train.jsonl``, ``math_eval.jsonl``).

What: short math questions with their gold answers, generated procedurally by reasoning-gym
(pinned ``reasoning-gym==0.1.25``, the ``bench`` extra) so the set needs no download and no
licence beyond reasoning-gym's:

* ``gsm_symbolic`` — GSM8K-style word problems (templates of GSM8K problems with new numbers);
* ``basic_arithmetic`` — integer expressions of 2–4 terms with 1–2 digit numbers;
* ``simple_equations`` — one linear equation in one variable, small coefficients.

The sizes are chosen for a 135M-parameter model: arithmetic with at most two-digit numbers, and
questions of at most :data:`MAX_WORDS` words. A generated item is skipped when its question is too
long, carries a float artefact of the generator (``0.6666666666666666 water``), repeats an earlier
question, has a gold answer :func:`gfnlm.tasks.math_answers.parse_gold` rejects, or (arithmetic)
has a gold answer that is not the exact value of the expression (the generator evaluates ``/`` as
floor division). gsm_symbolic's appended instruction "Give the result as your final answer. Do
not include units." is removed: how to answer (``\\boxed{}``) is the task's prompt template's
business, and units are ignored when grading.

Each line is ``{"answers": [gold], "question": ..., "source": <generator>}`` (sorted keys,
``ensure_ascii=False``). Items are taken in each generator's index order; per generator, a seeded
shuffle picks the held-out eval items, so train and eval never share a question; both files are
then shuffled with the same seeded generator. Same seed, same reasoning-gym version → the same
bytes (the test ``tests/test_build_math_set.py`` checks this). The seed is ``--seed`` (default 0),
used for every generator and for the split.

Usage (CPU, about a second)::

    .venv/bin/python benchmarks/build_math_set.py                 # rewrite gfnlm/data/math_*.jsonl
    .venv/bin/python benchmarks/build_math_set.py --seed 1 --out-dir /tmp/math   # another draw
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import random
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gfnlm.contracts.errors import InputError
from gfnlm.tasks.math_answers import parse_gold

MAX_WORDS = 120
TRAIN_FILE, EVAL_FILE = "math_train.jsonl", "math_eval.jsonl"
# gsm_symbolic appends this to every question (reasoning_gym/arithmetic/gsm_symbolic).
GSM_SUFFIX = " Give the result as your final answer. Do not include units."
# A number with 5+ decimals in a question is a float artefact (2/3 printed as 0.6666666666666666).
FLOAT_ARTEFACT = re.compile(r"\d\.\d{5,}")
# Generators are lazy (item i is built from seed + i); stop if this many items gave too few.
MAX_TRIES = 20_000


@dataclass(frozen=True)
class Source:
    """One reasoning-gym generator: its config and how many train / eval questions it gives."""

    name: str
    n_train: int
    n_eval: int
    config: dict = field(default_factory=dict)


SOURCES = (
    Source("gsm_symbolic", n_train=100, n_eval=30),
    Source(
        "basic_arithmetic",
        n_train=50,
        n_eval=15,
        config={"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2},
    ),
    Source(
        "simple_equations",
        n_train=50,
        n_eval=15,
        config={"min_terms": 2, "max_terms": 3, "min_value": 1, "max_value": 20},
    ),
)

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed of every generator and of the split")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "gfnlm" / "data",
        help=f"where {TRAIN_FILE} and {EVAL_FILE} are written",
    )
    return p.parse_args(argv)


def exact_value(expression: str) -> Fraction:
    """The exact rational value of an arithmetic expression of integers, + - * / and parentheses."""

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = ev(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported arithmetic: {ast.dump(node)}")

    return ev(ast.parse(expression, mode="eval").body)


def clean_question(name: str, question: str) -> str:
    """The question without gsm_symbolic's answer-format instruction, whitespace-trimmed."""
    if name == "gsm_symbolic" and question.endswith(GSM_SUFFIX):
        question = question[: -len(GSM_SUFFIX)]
    return question.strip()


def accept(name: str, item: dict, question: str, seen: set[str]) -> bool:
    """Whether a generated item (question already cleaned) goes into the set."""
    if question in seen or len(question.split()) > MAX_WORDS or FLOAT_ARTEFACT.search(question):
        return False
    answer = item["answer"]
    try:
        parse_gold(answer, f"{name} item {item['metadata']['source_index']}")
    except InputError:
        return False
    if name == "basic_arithmetic":
        # The generator computes with floor division; keep only items where that is exact.
        try:
            return exact_value(item["metadata"]["expression"]) == Fraction(answer)
        except ZeroDivisionError:
            return False
    return True


def generate(source: Source, seed: int, seen: set[str]) -> list[dict]:
    """The first ``n_train + n_eval`` accepted items of one generator, as output records."""
    import reasoning_gym  # the `bench` extra; imported here so --help works without it

    need = source.n_train + source.n_eval
    dataset = reasoning_gym.create_dataset(source.name, size=MAX_TRIES, seed=seed, **source.config)
    records: list[dict] = []
    for index in range(MAX_TRIES):
        item = dataset[index]
        question = clean_question(source.name, item["question"])
        if accept(source.name, item, question, seen):
            seen.add(question)
            records.append(
                {"answers": [item["answer"]], "question": question, "source": source.name}
            )
            if len(records) == need:
                return records
    raise SystemExit(
        f"{source.name}: only {len(records)} of {need} items accepted in {MAX_TRIES} tries"
    )


def build(seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval) records: every source split by a seeded shuffle, then both shuffled."""
    rng = random.Random(seed)
    seen: set[str] = set()  # questions taken so far, across sources
    train: list[dict] = []
    held_out: list[dict] = []
    for source in SOURCES:
        records = generate(source, seed, seen)
        rng.shuffle(records)
        held_out += records[: source.n_eval]
        train += records[source.n_eval :]
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def to_jsonl(records: list[dict]) -> str:
    """One JSON object per line, sorted keys, non-ASCII kept, a final newline."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def main(argv: list[str] | None = None) -> None:
    """Generate the set and write the two files."""
    args = parse_args(argv)
    train, held_out = build(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in ((TRAIN_FILE, train), (EVAL_FILE, held_out)):
        path = args.out_dir / name
        path.write_text(to_jsonl(records), encoding="utf-8", newline="\n")
        counts = {s.name: sum(r["source"] == s.name for r in records) for s in SOURCES}
        print(f"{path}: {len(records)} questions {counts}")


if __name__ == "__main__":
    main()
