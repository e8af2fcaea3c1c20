"""Power-SMC against MH power sampling on enumerable models, at equal decoded tokens.

Every response of a random tabular model (V ordinary tokens + EOS, at most L tokens, logit scale
1.5, one base seed per setting) is enumerated, so p^α is exact; each sampler's output
distribution is estimated from ``--draws`` returned responses, and its TV to p^α is printed as
mean ± standard deviation over ``--seeds`` seeds, next to the noise floor (the TV of as many exact
draws of p^α, the same mean ± sd).

* **Power-SMC**: :func:`gfnlm.samplers.power_smc.power_smc` with its defaults (systematic
  resampling at ESS < N/2, no bridge), N ∈ ``--particles``, the ``--draws`` particle sets in one
  batch; ``tokens`` is the tokens it decoded per returned response (every particle's).
* **MH, 16 blocks**: :func:`gfnlm.samplers.power_mh.power_sample` in its published setting
  (``block = max(1, L // 16)``: one token a block here) with the fewest MH steps per block whose
  decoded tokens per response reach 99% of Power-SMC's (found with pilot runs).
* **MH, 1 block**: the same chain with one block over the whole response (each MH step is then
  the exact p^α kernel of ``tests/test_power_mh.py``), matched in the same way.

The settings are those of ``tests/test_power_smc.py`` (χ²(p^α ‖ q) < 1 for the proposal q, token
sampling at T = 1/α) and one where q is far from p^α (base seed 0 of V=2, L=5, α=4: χ² = 37.5).

Run::

    .venv/bin/python benchmarks/power_smc_exact.py          # about 7 minutes on 2 CPU cores
    .venv/bin/python benchmarks/power_smc_exact.py --draws 5000 --particles 1 4
    .venv/bin/python benchmarks/power_smc_exact.py --report-only --into-docs   # the last run's

The table also goes to ``benchmarks/out/power_smc_exact.csv``.
"""

import argparse
import csv
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from exact_matching import write_csv  # the sibling benchmark's (benchmarks/ is on sys.path)

from gfnlm.evaluation.exact import ExactSetting, TabularPolicy, per_token_sharpened
from gfnlm.samplers.power_mh import MHStats, power_sample, tabular_proposal
from gfnlm.samplers.power_smc import SMCStats, TabularDecoder, power_smc

OUT_DIR = Path(__file__).resolve().parent / "out"


class Setting(NamedTuple):
    vocab: int
    max_len: int
    alpha: float
    base_seed: int


SETTINGS = [
    Setting(3, 3, 2.0, 3),
    Setting(2, 5, 4.0, 5),
    Setting(4, 3, 0.5, 1),
    Setting(2, 5, 4.0, 0),
]


class Enumerable:
    """A random tabular base, p^α over its every response and T = 1/α sampling's distribution."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.exact = ExactSetting(setting.vocab, setting.max_len)
        base = TabularPolicy.random(self.exact, 1.5, setting.base_seed).requires_grad_(False)
        self.log_p = base.logits.detach().log_softmax(-1)
        responses = self.exact.enumerate_responses()
        self.keys = [
            tuple(row[:n].tolist())
            for row, n in zip(responses.response_ids, responses.lengths, strict=True)
        ]
        self.index = {key: i for i, key in enumerate(self.keys)}
        token_logp = base.sequence_log_probs(responses).token_logp
        log_base = (token_logp * responses.response_mask).sum(-1)
        self.target = (setting.alpha * log_base).softmax(0)
        self.proposal = per_token_sharpened(base, setting.alpha).response_log_probs(responses).exp()

    def histogram(self, keys: Sequence[tuple[int, ...]]) -> torch.Tensor:
        counts = torch.zeros(len(self.keys), dtype=torch.float64)
        for key in keys:
            counts[self.index[key]] += 1
        return counts / len(keys)

    def tv(self, distribution: torch.Tensor) -> float:
        return 0.5 * float((distribution - self.target).abs().sum())

    def chi_square(self) -> float:
        """χ²(p^α ‖ q) = E_q[(p^α/q)²] − 1: how many particles importance sampling needs."""
        return float((self.target**2 / self.proposal).sum() - 1)


def smc_run(model: Enumerable, particles: int, draws: int, seed: int) -> tuple[float, float, float]:
    """TV to p^α, tokens decoded per returned response and the share of steps that resampled."""
    stats = SMCStats()
    decoder = TabularDecoder(model.log_p, model.exact.vocab_size, draws * particles)
    generator = torch.Generator().manual_seed(seed)
    result = power_smc(
        decoder,
        draws,
        particles,
        model.setting.alpha,
        model.setting.max_len,
        model.exact.eos_id,
        generator=generator,
        stats=stats,
    )
    lengths = result.lengths.tolist()
    keys = [tuple(row[:n]) for row, n in zip(result.tokens.tolist(), lengths, strict=True)]
    return model.tv(model.histogram(keys)), stats.tokens_generated / draws, stats.resampling_rate


def mh_run(
    model: Enumerable, block: int, mh_steps: int, draws: int, seed: int
) -> tuple[float, float]:
    """TV to p^α and tokens decoded per returned response of block-wise MH."""
    rng = random.Random(seed)
    propose, base_logp = tabular_proposal(
        model.log_p, model.exact.vocab_size, model.exact.eos_id, model.setting.alpha, rng
    )
    stats, setting = MHStats(), model.setting
    keys = [
        tuple(
            power_sample(
                propose,
                base_logp,
                model.exact.eos_id,
                setting.alpha,
                setting.max_len,
                block,
                mh_steps,
                rng,
                stats,
            )[0]
        )
        for _ in range(draws)
    ]
    return model.tv(model.histogram(keys)), stats.tokens_generated / draws


def mh_steps_for(model: Enumerable, block: int, tokens: float) -> int:
    """The fewest MH steps per block whose decoded tokens per response (in a pilot run) reach 99%
    of ``tokens``: a first guess from the line through 0 and 8 steps, then one step at a time."""

    def pilot(steps: int) -> float:
        return mh_run(model, block, steps, 2000, 99)[1]

    goal, low = 0.99 * tokens, pilot(0)
    steps = max(0, math.ceil((goal - low) / ((pilot(8) - low) / 8)))
    while pilot(steps) < goal:
        steps += 1
    while steps > 0 and pilot(steps - 1) >= goal:
        steps -= 1
    return steps


def floor_tv(model: Enumerable, draws: int, seed: int) -> float:
    drawn = torch.multinomial(
        model.target, draws, replacement=True, generator=torch.Generator().manual_seed(1000 + seed)
    )
    return model.tv(torch.bincount(drawn, minlength=len(model.keys)).double() / draws)


def spread(values: Sequence[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {deviation:.4f}"


def setting_rows(setting: Setting, args: argparse.Namespace) -> list[dict[str, Any]]:
    model = Enumerable(setting)
    floor = spread([floor_tv(model, args.draws, seed) for seed in args.seeds])
    rows = []
    for particles in args.particles:
        smc = [smc_run(model, particles, args.draws, seed) for seed in args.seeds]
        tokens = statistics.fmean(run[1] for run in smc)
        row: dict[str, Any] = {
            "V": setting.vocab,
            "L": setting.max_len,
            "alpha": setting.alpha,
            "base seed": setting.base_seed,
            "N": particles,
            "tokens": f"{tokens:.1f}",
            "resampled": f"{statistics.fmean(run[2] for run in smc):.2f}",
            "Power-SMC TV": spread([run[0] for run in smc]),
        }
        blocks = {"MH 16 blocks": max(1, setting.max_len // 16), "MH 1 block": setting.max_len}
        for name, block in blocks.items():
            steps = mh_steps_for(model, block, tokens)
            mh = [mh_run(model, block, steps, args.draws, seed) for seed in args.seeds]
            row[f"{name} steps"] = steps
            row[f"{name} tokens"] = f"{statistics.fmean(run[1] for run in mh):.1f}"
            row[f"{name} TV"] = spread([run[0] for run in mh])
        row["floor"] = floor
        rows.append(row)
        print(
            f"  done V={setting.vocab} L={setting.max_len} a={setting.alpha:g} N={particles}",
            file=sys.stderr,
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=20_000, help="returned responses per estimate")
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--into-docs", action="store_true", help="write the table into docs/benchmarks/"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="print the table of the last run's CSV (its caption names --draws and --seeds as "
        "given here: give the run's)",
    )
    return parser.parse_args(argv)


def caption(args: argparse.Namespace) -> str:
    return (
        f"TV to p^α, mean ± sd over seeds {' '.join(map(str, args.seeds))}, {args.draws:,} "
        "draws each; tokens: decoded per returned response (Power-SMC's; MH's are matched from "
        "above); resampled: share of Power-SMC's ESS checks that resampled; floor: the TV of as "
        "many exact draws of p^α."
    )


def report(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> None:
    text = caption(args) + "\n\n" + format_table(rows)
    print(text)
    if args.into_docs:
        from docs_page import write_between_markers  # sibling (benchmarks/ is on sys.path)

        write_between_markers(text, "power_smc_exact")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    csv_path = args.out / "power_smc_exact.csv"
    if args.report_only:
        with csv_path.open(newline="") as handle:
            report(list(csv.DictReader(handle)), args)
        return 0
    start = time.perf_counter()
    for setting in SETTINGS:
        model = Enumerable(setting)
        print(
            f"V={setting.vocab} L={setting.max_len} alpha={setting.alpha:g} base seed "
            f"{setting.base_seed}: {len(model.keys)} responses, TV(T=1/alpha sampling, p^alpha) "
            f"= {model.tv(model.proposal):.3f}, chi2(p^alpha || q) = {model.chi_square():.2f}"
        )
    rows = [row for setting in SETTINGS for row in setting_rows(setting, args)]
    print()
    report(rows, args)
    write_csv(csv_path, rows)
    print(f"\nwrote {csv_path} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
