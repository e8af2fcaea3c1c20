"""Every shipped config of a GFlowNet objective, checked exactly on the exact sweep's settings.

Each ``configs/*.yaml`` whose objective declares a fixed point is loaded as a run loads it
(:func:`gfnlm.training.config.load_config`); its objective (with the file's options), exploration
and replay (``auto``: the objective's choice toward each setting's α-power target, as a run
resolves it) are then trained by the exact checker (:func:`gfnlm.evaluation.exact.train_exact`) on
the settings of ``benchmarks/exact_sweep.py`` (the same groups, draw seeds, steps, batch and lrs),
and every setting's TV to the objective's own fixed point is read. What the file says about the
model, the data or the target's α is not used: the setting gives the tabular base and α, and log Z
is the sweep's per-prompt ``table`` where the objective learns one. Configs that train the same
objective, options and behaviour share their runs.

Run::

    .venv/bin/python benchmarks/shipped_configs_exact.py      # every shipped config, 2 workers

Per-setting rows go to ``benchmarks/out/shipped_configs_exact_runs.csv``.
"""

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from exact_matching import write_csv  # siblings (benchmarks/ is on sys.path)
from exact_sweep import (
    Job,
    add_training_args,
    cpu_seconds_so_far,
    describe_settings,
    format_table,
    objective_lr,
    run_jobs,
    summary_rows,
    sweep_groups,
)

from gfnlm.contracts import registry
from gfnlm.exploration import AUTO, recommended_section
from gfnlm.training.config import RunConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Values a config leaves for its recipe script to give (no default model, data or server).
REQUIRED = {
    "powerflow_qwen_math": [
        "model.path=/models/qwen",
        "data.train=/data/train.parquet",
        "sampling.sampler_options.url=http://127.0.0.1:30000",
    ]
}


def shipped_config(path: Path) -> RunConfig:
    """A shipped config as a run loads it, with the values its recipe would give."""
    return load_config(path, REQUIRED.get(path.stem, []))


def has_fixed_point(config: RunConfig) -> bool:
    """Whether the config's objective declares the distribution it converges to (asked on two
    responses of equal reward)."""
    objective = registry.build("objective", config.objective.name, config.objective.options)
    return objective.fixed_point(torch.zeros(2), torch.ones(2)) is not None


def gflownet_configs(directory: Path = CONFIGS) -> dict[str, RunConfig]:
    """Every config in ``directory`` whose objective has a fixed point, by file stem."""
    configs = {path.stem: shipped_config(path) for path in sorted(directory.glob("*.yaml"))}
    return {name: c for name, c in configs.items() if has_fixed_point(c)}


def behaviour_key(config: RunConfig) -> str:
    """What decides a config's exact runs: its objective as built (options spelt out or left to
    their defaults alike), exploration and replay."""
    objective = registry.build("objective", config.objective.name, config.objective.options)
    sections = (config.exploration, config.replay)
    return repr([objective, *((s.name, sorted(s.options.items())) for s in sections)])


def non_default_options(config: RunConfig) -> dict[str, Any]:
    """The config's objective options that differ from the objective's defaults (so a config that
    spells a default out shares the sweep's kept runs)."""
    name, options = config.objective.name, config.objective.options
    objective, default = (
        registry.build("objective", name, options),
        registry.build("objective", name),
    )
    return {
        f.name: getattr(objective, f.name)
        for f in attrs.fields(type(objective))
        if f.init and getattr(objective, f.name) != getattr(default, f.name)
    }


def config_jobs(
    config: RunConfig, label: str, groups: Sequence[Any], args: argparse.Namespace
) -> list[Job]:
    """One exact run per group for ``config``'s objective, exploration and replay (``auto``: what
    the objective recommends toward the group's α-power target); its rows carry ``label`` as
    their mode."""
    objective = registry.build("objective", config.objective.name, config.objective.options)

    def section(kind: str, group: Any) -> dict[str, Any]:
        given = getattr(config, kind)
        if given.name != AUTO:
            return {"name": given.name, "options": dict(given.options)}
        target = registry.build("target", "alpha_power", alpha=group.alpha)
        name, options = recommended_section(kind, objective, target)
        return {"name": name, "options": options}

    return [
        Job(
            group,
            config.objective.name,
            non_default_options(config),
            label,
            section("exploration", group),
            section("replay", group),
            args.steps,
            args.batch_size,
            objective_lr(args, config.objective.name),
            args.logz_lr,
        )
        for group in groups
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(parser)
    # TB-token at the sweep's lr 0.1 stays above 0.05 on the longest, flattest settings under every
    # exploration; at 0.3 (as DB) it reaches all 48 (exact_sweep.py --objectives tb_token
    # --objective-lr db=0.3 tb_token=0.3)
    parser.set_defaults(objective_lr=["db=0.3", "tb_token=0.3"])
    parser.add_argument("--configs", nargs="+", help="config stems (default: every GFlowNet one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    configs = gflownet_configs()
    if args.configs:
        unknown = sorted(set(args.configs) - set(configs))
        if unknown:
            raise SystemExit(
                f"--configs {unknown[0]!r}: must be one of {', '.join(configs)} (shipped configs "
                "of an objective with a fixed point)"
            )
        configs = {name: configs[name] for name in args.configs}
    groups = sweep_groups(args)
    shared: dict[str, list[str]] = {}  # behaviour → the configs that have it
    for name, config in configs.items():
        shared.setdefault(behaviour_key(config), []).append(name)
    jobs = [
        job
        for names in shared.values()
        for job in config_jobs(configs[names[0]], names[0], groups, args)
    ]
    wall_start = time.perf_counter()
    runs = run_jobs(jobs, args.workers, args.out / "exact_jobs")
    wall = time.perf_counter() - wall_start
    # every config gets the rows of the runs it shares (labelled by the first config that has them)
    rows = [
        {"config": name} | row
        for names in shared.values()
        for name in names
        for row in runs
        if row["mode"] == names[0]
    ]
    print(
        f"shipped configs, exact: {len(configs)} configs ({len(shared)} distinct objective + "
        f"behaviour) x {len(groups) * args.seeds_per_group} settings of the exact sweep (draw "
        f"seeds {' '.join(map(str, args.draw_seeds))}) = "
        f"{len(shared) * len(groups) * args.seeds_per_group} runs in {len(jobs)} jobs; "
        f"{args.steps} Adam steps, batch {args.batch_size} per prompt, lr {args.lr} cosine "
        f"({' '.join(args.objective_lr) or 'every objective'}), table log Z (lr {args.logz_lr})"
    )
    print(
        f"wall {wall:.0f} s with {args.workers} worker processes; CPU {cpu_seconds_so_far():.0f} s"
    )
    print("settings: " + describe_settings(groups))
    print()
    table = summary_rows(rows, args.goal, fields=("config", "objective"))
    for line in table:  # an auto config's behaviour toward each regime (α > 1, α < 1)
        config = configs[line["config"]]
        if AUTO in (config.exploration.name, config.replay.name):
            mine = [r for r in rows if r["config"] == line["config"]]
            line["behaviour"] = "auto: " + "; ".join(
                f"α {sign} 1: " + next(r["behaviour"] for r in mine if test(float(r["alpha"])))
                for sign, test in ((">", lambda a: a > 1), ("<", lambda a: a < 1))
            )
    print(format_table(table))
    write_csv(args.out / "shipped_configs_exact_runs.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
