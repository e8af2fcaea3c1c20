"""Which behaviour each GFlowNet objective recommends: the least off-policy rung of a ladder of
explorations and replays that reaches its own fixed point on every setting of the exact sweep.

The ladder, from the least off-policy rung:

1. on-policy;
2. replay alone (``reward_prioritised``, ratio ``--replay-ratio``);
3. ``tempered`` exploration at T = 1.1, 1.2, 1.5 (each + the replay);
4. ``uniform_mix`` exploration at ε = 0.1, 0.25, 0.5 (each + the replay).

Tempering comes before mixing in uniform draws because it keeps the policy's ranking of tokens,
while a uniform draw over a real vocabulary (49,152 tokens for SmolLM2) is almost never a token
the policy would write. Less off-policy comes first because the sweep cannot show what
exploration costs on a real model, and there it was large (``docs/benchmarks/default-run.md``).

For each objective (``la_tb`` once with a learned log Z' and once with ``log_z_source=group_mean``)
the rungs are run in order on the sweep's settings (``exact_sweep.py``'s groups, steps, lr and
goal) until one has every setting within ``--goal``; that rung is the objective's choice. The
climb is made three times: over every setting, over the sharpening ones (α > 1) and over the
flattening ones (α < 1), because how far a target lies from the policy, which starts at the base
model, decides how much exploring reaching it takes. The script prints each rung it ran and
checks each choice against the objective's declaration (``recommended_choice`` of an instance
with those options, toward no target, an α = 4 and an α = 0.5 target); it exits with 1 if one
differs.

Run::

    .venv/bin/python benchmarks/behaviour_ladder.py      # 2 worker processes

Runs are shared with ``exact_sweep.py`` and ``shipped_configs_exact.py`` through
``benchmarks/out/exact_jobs/``: what one of them already ran is read back.
"""

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from exact_matching import write_csv
from exact_sweep import (  # the sibling benchmark's (benchmarks/ is on sys.path)
    Job,
    add_training_args,
    describe_settings,
    format_table,
    objective_label,
    objective_lr,
    plain_choice,
    run_jobs,
    summary_rows,
    sweep_groups,
)

from gfnlm.contracts import registry
from gfnlm.exploration import Choice, describe_choice, recommended_choice
from gfnlm.objectives.base import ON_POLICY, component_choice

TEMPERATURES = (1.1, 1.2, 1.5)
EPSILONS = (0.1, 0.25, 0.5)
# (objective, options): la_tb's choice depends on where its log Z' comes from
OBJECTIVES: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("tb", {}),
    ("la_tb", {}),
    ("la_tb", {"log_z_source": "group_mean"}),
    ("subtb", {}),
    ("db", {}),
    ("tb_token", {}),
)


def ladder(replay_ratio: float) -> list[Choice]:
    """The rungs, from the least off-policy (see the module docstring)."""
    replay = component_choice("reward_prioritised", ratio=replay_ratio)
    return [
        (ON_POLICY, ON_POLICY),
        (ON_POLICY, replay),
        *[(component_choice("tempered", temperature=t), replay) for t in TEMPERATURES],
        *[(component_choice("uniform_mix", epsilon=e), replay) for e in EPSILONS],
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(parser)
    parser.set_defaults(objective_lr=["db=0.3", "tb_token=0.3"])  # as the shipped configs
    parser.add_argument("--replay-ratio", type=float, default=0.25)
    names = list(dict.fromkeys(name for name, _ in OBJECTIVES))
    parser.add_argument(
        "--objectives", nargs="+", default=names, choices=names, help="la_tb: both log Z' sources"
    )
    return parser.parse_args(argv)


def climb(
    objective: str, options: Mapping[str, Any], groups: Sequence[Any], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Choice | None]:
    """Every rung's rows up to the first that reaches all settings, and that rung (``None``: no
    rung did)."""
    rows: list[dict[str, Any]] = []
    for rung, (exploration, replay) in enumerate(ladder(args.replay_ratio), start=1):
        jobs = [
            Job(
                group,
                objective,
                dict(options),
                str(rung),
                exploration,
                replay,
                args.steps,
                args.batch_size,
                objective_lr(args, objective),
                args.logz_lr,
            )
            for group in reversed(groups)
        ]
        rung_rows = run_jobs(jobs, args.workers, args.out / "exact_jobs")
        rows += rung_rows
        if all(row["tv_own"] <= args.goal for row in rung_rows):
            return rows, (exploration, replay)
    return rows, None


# The targets a choice is for: every setting, or one regime (a sample α-power target of it, whose
# Target.regime the objective's recommended_when reads).
TARGETS = (
    ("all", lambda alpha: True, None),
    ("α > 1", lambda alpha: alpha > 1, 4.0),
    ("α < 1", lambda alpha: alpha < 1, 0.5),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    groups = sweep_groups(args)
    start = time.perf_counter()
    rows, verdicts = [], []
    for objective, options in OBJECTIVES:
        if objective not in args.objectives:
            continue
        built = registry.build("objective", objective, dict(options))
        for targets, holds, alpha in TARGETS:
            chosen_groups = [g for g in groups if holds(g.alpha)]
            if not chosen_groups:
                continue  # no setting of this regime: nothing to choose on
            climbed, chosen = climb(objective, options, chosen_groups, args)
            rows += [row | {"targets": targets} for row in climbed]
            target = None if alpha is None else registry.build("target", "alpha_power", alpha=alpha)
            declared = recommended_choice(built, target)
            agrees = None not in (chosen, declared) and [plain_choice(c) for c in chosen] == [
                plain_choice(c) for c in declared
            ]
            verdicts.append(
                {
                    "objective": objective_label(objective, options),
                    "targets": f"{targets} ({len(chosen_groups) * args.seeds_per_group})",
                    "lr": f"{objective_lr(args, objective):g}",
                    "choice": describe_choice(*chosen) if chosen else "none reaches every setting",
                    "declared": describe_choice(*declared) if declared else "nothing",
                    "agrees": "yes" if agrees else "NO",
                }
            )
    settings = len(groups) * args.seeds_per_group
    print(
        f"behaviour ladder: {settings} settings of the exact sweep (draw seeds "
        f"{' '.join(map(str, args.draw_seeds))}); {args.steps} Adam steps, batch {args.batch_size} "
        f"per prompt, lr {args.lr} cosine ({' '.join(args.objective_lr)}), goal TV <= {args.goal}"
    )
    print(f"wall {time.perf_counter() - start:.0f} s with {args.workers} worker processes")
    print("settings: " + describe_settings(groups))
    print()
    # the rung's number stands for its behaviour, which has its own column
    table = [
        {"objective": r.pop("objective"), "targets": r.pop("targets"), "rung": r.pop("mode")} | r
        for r in summary_rows(rows, args.goal, fields=("objective", "targets", "mode"))
    ]
    print(format_table(table))
    print()
    print(format_table(verdicts))
    write_csv(args.out / "behaviour_ladder_runs.csv", rows)
    return 0 if all(v["agrees"] == "yes" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
