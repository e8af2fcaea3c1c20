"""Sweep of exact checks: every GFlowNet objective, on-policy and with exploration + replay, over
random enumerable settings; and sequence-level vs per-token sharpening across the same settings.

Settings are drawn at random (``--draw-seed``): ``--groups`` groups, each with its own vocabulary
V ∈ [2, 6], maximum length L ∈ [3, 8] and α ∈ {0.5, 2, 3, 4}, and ``--seeds-per-group`` random
bases (logit scale uniform in [1, 2.5], each its own seed) — a group is one multi-prompt problem
of the exact checker (one prompt per base, a per-prompt ``table`` log Z), so its bases train in one
vectorised run and every setting is still checked on its own. V is drawn first, then L up to the
longest with at most ``--max-responses`` responses for that V (L <= 8 for V = 2, <= 4 for V = 6): a
tabular policy cannot be taught thousands of nearly equal masses from a few hundred thousand
samples.

For each group × objective (``tb``, ``tb_token``, ``la_tb``, ``subtb``, ``db``) × mode
(``on-policy``; ``explore``: ``tempered`` exploration at T = ``--temperature`` plus
``reward_prioritised`` replay) one ``train_exact`` run; every setting's TV to the objective's own
fixed point is read from it. The table gives per objective and mode the worst and median TV over
the settings and the share within ``--goal`` (0.05).

The second table (``--per-token``) compares, per setting, the TV to p^α of token sampling at
T = 1/α (exact), of the trained TB policy (both modes, exact) and of the MH power sampler
(``gfnlm.samplers.power_mh.power_sample`` on the tabular base, the published 16 blocks / 10 MH steps
per block; estimated from ``--mh-samples`` draws, next to the TV of as many exact draws of p^α,
the estimate's noise floor).

Run::

    .venv/bin/python benchmarks/exact_sweep.py                  # the sweep, 2 worker processes
    .venv/bin/python benchmarks/exact_sweep.py --per-token      # ... and the per-token table

Per-run rows go to ``benchmarks/out/exact_sweep_runs.csv``.
"""

import argparse
import itertools
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from exact_matching import write_csv  # the sibling benchmark's (benchmarks/ is on sys.path)
from tqdm import tqdm

from gfnlm.contracts import registry
from gfnlm.evaluation.exact import (
    ExactSetting,
    TabularPolicy,
    exact_distributions,
    per_token_sharpened,
    random_bases,
    total_variation,
    train_exact_policy,
)

OUT_DIR = Path(__file__).resolve().parent / "out"
OBJECTIVES = ("tb", "tb_token", "la_tb", "subtb", "db")
MODES = ("on-policy", "explore")
ALPHAS = (0.5, 2.0, 3.0, 4.0)


@attrs.frozen
class Group:
    """One vocabulary/length/α and the bases (one prompt each) drawn for it."""

    index: int
    vocab: int
    max_len: int
    alpha: float
    scales: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def setting(self) -> ExactSetting:
        return ExactSetting(self.vocab, self.max_len)


def draw_groups(count: int, per_group: int, max_responses: int, seed: int) -> list[Group]:
    """Random groups of settings (see the module docstring), reproducible from ``seed``."""
    rng = random.Random(seed)
    groups = []
    while len(groups) < count:
        vocab = rng.randint(2, 6)
        longest = max(
            L for L in range(3, 9) if ExactSetting(vocab, L).num_responses <= max_responses
        )
        max_len = rng.randint(3, longest)
        alpha = (
            ALPHAS[len(groups) % len(ALPHAS)] if len(groups) < len(ALPHAS) else rng.choice(ALPHAS)
        )
        scales = tuple(round(rng.uniform(1.0, 2.5), 2) for _ in range(per_group))
        seeds = tuple(rng.randrange(10_000) for _ in range(per_group))
        groups.append(Group(len(groups), vocab, max_len, alpha, scales, seeds))
    return groups


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--seeds-per-group", type=int, default=3)
    parser.add_argument("--draw-seed", type=int, default=0)
    parser.add_argument("--max-responses", type=int, default=1600)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64, help="responses per prompt per step")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--objective-lr",
        nargs="*",
        default=["db=0.3"],
        metavar="NAME=LR",
        help="a policy lr for one objective (db: its credit moves one transition per update; "
        "at lr 0.1 it needs ~2000 steps on sharp bases)",
    )
    parser.add_argument("--logz-lr", type=float, default=0.1)
    parser.add_argument(
        "--exploration",
        default="uniform_mix",
        choices=["tempered", "uniform_mix"],
        help="the behaviour policy of the explore mode",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.5, help="the tempered exploration's temperature"
    )
    parser.add_argument(
        "--epsilon", type=float, default=0.5, help="the uniform_mix exploration's ε"
    )
    parser.add_argument("--replay-ratio", type=float, default=0.25)
    parser.add_argument("--goal", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--per-token", action="store_true", help="also the sequence-level vs per-token table"
    )
    parser.add_argument("--mh-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    return parser.parse_args(argv)


def run_one(job: tuple[Group, str, str, argparse.Namespace]) -> list[dict[str, Any]]:
    """Train one group with one objective in one mode; one row per setting (prompt)."""
    group, objective_name, mode, args = job
    base = random_bases(group.setting, list(group.scales), list(group.seeds))
    target = registry.build("target", "alpha_power", alpha=group.alpha)
    objective = registry.build("objective", objective_name)
    logz = None
    if "log_z" in objective.requires:
        logz = registry.build("logz", "table", num_prompts=base.num_prompts)
    exploration = replay = None
    if mode == "explore":
        exploration = registry.build("exploration", args.exploration, **exploration_options(args))
        replay = registry.build("replay", "reward_prioritised", ratio=args.replay_ratio)
    policy, report = train_exact_policy(
        objective,
        target,
        base,
        logz=logz,
        exploration=exploration,
        replay=replay,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=objective_lr(args, objective_name),
        logz_lr=args.logz_lr,
        seed=group.index,
    )
    rows = []
    for prompt in range(base.num_prompts):
        dists = exact_distributions(group.setting, base, target, prompt)
        log_policy = policy.response_log_probs(dists.responses)
        fixed_point = dists.fixed_point(objective)
        rows.append(
            {
                "group": group.index,
                "prompt": prompt,
                "vocab": group.vocab,
                "max_len": group.max_len,
                "alpha": group.alpha,
                "scale": group.scales[prompt],
                "base_seed": group.seeds[prompt],
                "responses": group.setting.num_responses,
                "objective": objective_name,
                "mode": mode,
                "tv_own": total_variation(log_policy, fixed_point.log_probs),
                "tv_target": total_variation(log_policy, dists.log_target),
                "steps": args.steps,
                "cpu_s_group": report.cpu_time_s,
            }
        )
    return rows


def exploration_options(args: argparse.Namespace) -> dict[str, float]:
    """The chosen exploration's one option."""
    return (
        {"temperature": args.temperature}
        if args.exploration == "tempered"
        else {"epsilon": args.epsilon}
    )


def describe_exploration(args: argparse.Namespace) -> str:
    """The chosen exploration and its option, as the report names them (e.g. ``uniform_mix
    ε=0.5``)."""
    (value,) = exploration_options(args).values()
    return f"{args.exploration} {'T' if args.exploration == 'tempered' else 'ε'}={value:g}"


def objective_lr(args: argparse.Namespace, objective: str) -> float:
    """The policy lr of ``objective``: its ``--objective-lr`` entry, else ``--lr``."""
    given = dict(item.split("=", 1) for item in args.objective_lr)
    return float(given.get(objective, args.lr))


def summary_rows(rows: Sequence[dict[str, Any]], goal: float) -> list[dict[str, str]]:
    out = []
    for objective, mode in itertools.product(OBJECTIVES, MODES):
        tvs = [r["tv_own"] for r in rows if r["objective"] == objective and r["mode"] == mode]
        if not tvs:
            continue
        worst = max(
            rows,
            key=lambda r: r["tv_own"] if (r["objective"], r["mode"]) == (objective, mode) else -1,
        )
        out.append(
            {
                "objective": objective,
                "mode": mode,
                "settings": str(len(tvs)),
                "worst TV": f"{max(tvs):.3f}",
                "median TV": f"{statistics.median(tvs):.3f}",
                f"share <= {goal}": f"{sum(t <= goal for t in tvs)}/{len(tvs)}",
                "worst setting": (
                    f"V={worst['vocab']} L={worst['max_len']} a={worst['alpha']:g} "
                    f"scale={worst['scale']} seed={worst['base_seed']}"
                ),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Sequence-level vs per-token


def tabular_mh_functions(base: TabularPolicy, prompt: int, alpha: float):
    """``propose`` and ``base_logp`` of :func:`~gfnlm.samplers.power_mh.power_sample` on one
    prompt of the tabular base: token sampling at T = 1/α, and the base's log-probs."""
    setting = base.setting
    table = base.tables()[prompt].detach().log_softmax(-1).numpy()
    proposal = alpha * table
    proposal = proposal - np.logaddexp.reduce(proposal, axis=-1, keepdims=True)
    offsets = setting.state_offsets().tolist()
    vocab, eos = setting.vocab_size, setting.eos_id
    rng = np.random.default_rng(prompt)

    def state_of(prefix: list[int]) -> int:
        index = 0
        for token in prefix:
            index = index * vocab + token
        return offsets[len(prefix)] + index

    def propose(prefix: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        tokens, logq = [], []
        state_prefix = list(prefix)
        for _ in range(max_tokens):
            row = proposal[state_of(state_prefix)]
            token = int(rng.choice(len(row), p=np.exp(row)))
            tokens.append(token)
            logq.append(float(row[token]))
            if token == eos:
                break
            state_prefix.append(token)
        return tokens, logq

    def base_logp(prefix: list[int], suffix: list[int]) -> list[float]:
        out, state_prefix = [], list(prefix)
        for token in suffix:
            out.append(float(table[state_of(state_prefix), token]))
            state_prefix.append(token)
        return out

    return propose, base_logp


def empirical_log_distribution(
    keys: list[tuple[int, ...]], everything: list[tuple[int, ...]]
) -> torch.Tensor:
    counts = {k: 0 for k in everything}
    for key in keys:
        counts[key] += 1
    freq = torch.tensor([counts[k] for k in everything], dtype=torch.float64) / len(keys)
    return freq.log()


def per_token_rows(
    groups: Sequence[Group], run_rows: Sequence[dict[str, Any]], samples: int
) -> list[dict[str, Any]]:
    """Per setting: TV to p^α of T = 1/α sampling, the trained TB policies and the MH power
    sampler."""
    from gfnlm.samplers.power_mh import power_sample

    rows = []
    for group in tqdm(groups, desc="per-token", file=sys.stderr):
        setting = group.setting
        base = random_bases(setting, list(group.scales), list(group.seeds))
        target = registry.build("target", "alpha_power", alpha=group.alpha)
        sharpened = per_token_sharpened(base, group.alpha)  # every prompt's table at T = 1/α
        for prompt in range(base.num_prompts):
            dists = exact_distributions(setting, base, target, prompt)
            everything = [
                tuple(r[:n].tolist())
                for r, n in zip(dists.responses.response_ids, dists.responses.lengths)
            ]
            propose, base_logp = tabular_mh_functions(base, prompt, group.alpha)
            rng = random.Random(prompt)
            block = max(1, setting.max_len // 16)
            keys = [
                tuple(
                    power_sample(
                        propose,
                        base_logp,
                        setting.eos_id,
                        group.alpha,
                        setting.max_len,
                        block,
                        10,
                        rng,
                    )[0]
                )
                for _ in range(samples)
            ]
            exact_draws = torch.multinomial(
                dists.log_target.exp(),
                samples,
                replacement=True,
                generator=torch.Generator().manual_seed(prompt),
            )
            floor_keys = [everything[i] for i in exact_draws.tolist()]

            def trained(mode: str, group=group, prompt=prompt) -> float:
                return next(
                    r["tv_target"]
                    for r in run_rows
                    if (r["group"], r["prompt"], r["objective"], r["mode"])
                    == (group.index, prompt, "tb", mode)
                )

            rows.append(
                {
                    "V": setting.vocab_size,
                    "L": setting.max_len,
                    "alpha": group.alpha,
                    "scale": group.scales[prompt],
                    "T=1/alpha": total_variation(
                        sharpened.response_log_probs(dists.responses), dists.log_target
                    ),
                    "TB on-policy": trained("on-policy"),
                    "TB explore": trained("explore"),
                    "MH power": total_variation(
                        empirical_log_distribution(keys, everything), dists.log_target
                    ),
                    "MH floor": total_variation(
                        empirical_log_distribution(floor_keys, everything), dists.log_target
                    ),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table (floats to 3 decimals)."""

    def text(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    groups = draw_groups(args.groups, args.seeds_per_group, args.max_responses, args.draw_seed)
    jobs = [(g, o, m, args) for g in groups for o in args.objectives for m in args.modes]
    wall_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for result in tqdm(
            pool.map(run_one, jobs),
            total=len(jobs),
            desc="exact sweep",
            unit="run",
            file=sys.stderr,
        ):
            rows.extend(result)
    wall = time.perf_counter() - wall_start
    cpu = sum(
        _cpu_seconds(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )  # workers joined
    settings = len(groups) * args.seeds_per_group
    print(
        f"exact sweep: {settings} settings ({args.groups} groups x {args.seeds_per_group} bases, "
        f"draw seed {args.draw_seed}, <= {args.max_responses} responses each) x "
        f"{len(args.objectives)} objectives x {len(args.modes)} modes = {len(jobs)} runs; "
        f"{args.steps} Adam steps, batch {args.batch_size} per prompt, lr {args.lr} cosine "
        f"({' '.join(args.objective_lr) or 'every objective'}), table log Z (lr {args.logz_lr}); "
        f"explore = {describe_exploration(args)} + reward_prioritised replay (ratio "
        f"{args.replay_ratio})"
    )
    print(
        f"wall {wall:.0f} s with {args.workers} worker processes; CPU {cpu:.0f} s (this process "
        "and its workers, imports included)"
    )
    print(
        "settings: "
        + "; ".join(
            f"V={g.vocab} L={g.max_len} a={g.alpha:g} scales={list(g.scales)}" for g in groups
        )
    )
    print()
    print(format_table(summary_rows(rows, args.goal)))
    write_csv(args.out / "exact_sweep_runs.csv", rows)
    if args.per_token:
        print()
        token_rows = per_token_rows(groups, rows, args.mh_samples)
        print(format_table(token_rows))
        write_csv(args.out / "exact_sweep_per_token.csv", token_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
