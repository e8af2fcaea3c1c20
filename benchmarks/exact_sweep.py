"""Sweep of exact checks: every GFlowNet objective, on-policy and with each exploration + replay,
over random enumerable settings; and sequence-level vs per-token sharpening on the same settings.

Settings are drawn in groups, ``--groups`` per draw seed (``--draw-seeds``, default 0 and 1), each
group with its own vocabulary V, maximum length L and α ∈ {0.5, 2, 3, 4}, and
``--seeds-per-group`` random bases (logit scale uniform in [1, 2.5], each its own seed) — a group
is one multi-prompt problem of the exact checker (one prompt per base, a per-prompt ``table``
log Z), so its bases train in one vectorised run and every setting is still checked on its own.

* The first draw seed's groups are random: V ∈ [2, 6] first, then L from 3 up to the longest with
  at most ``--max-responses`` responses for that V (L <= 9 for V = 2, <= 4 for V = 6), and α
  cycling through every value for the first four groups, then random.
* Every further draw seed's groups are the long ones: V cycles 2, 3, 4, 5, 6, L is the longest that
  V allows (9, 6, 5, 4, 4) and α cycles 4, 0.5, 3, 2 (so V = 2, L = 9 meets both α = 4 and 0.5).

The bound on responses keeps it tractable: a tabular policy cannot be taught thousands of nearly
equal masses from a few hundred thousand samples.

For each group × objective (``tb``, ``tb_token``, ``la_tb``, ``subtb``, ``db``) × mode one
``train_exact`` run; every setting's TV to the objective's own fixed point is read from it. The
modes (``--modes``) are behaviour choices, an exploration and a replay as a config names them:

* ``on-policy``: ``exploration: none``, ``replay: none``;
* ``replay``: on-policy sampling (``exploration: none``) + the ``reward_prioritised`` replay below
  (what a sampler that cannot explore can still use);
* ``uniform_mix``: ``uniform_mix`` exploration (ε = ``--epsilon``) + ``reward_prioritised`` replay
  (ratio ``--replay-ratio``; 0: no replay);
* ``tempered``: ``tempered`` exploration (T = ``--temperature``) + the same replay;
* ``declared``: each objective's own ``recommended_exploration`` / ``recommended_replay``.

The table gives per objective and mode the worst and median TV over the settings and how many are
within ``--goal`` (0.05).

The second table (``--per-token``) compares, per setting, the TV to p^α of token sampling at
T = 1/α (exact), of the trained TB policy (each mode, exact) and of the MH power sampler
(``gfnlm.samplers.power_mh.power_sample`` on the tabular base, the published 16 blocks / 10 MH steps
per block; estimated from ``--mh-samples`` draws, next to the TV of as many exact draws of p^α,
the estimate's noise floor).

Run::

    .venv/bin/python benchmarks/exact_sweep.py                  # the sweep, 2 worker processes
    .venv/bin/python benchmarks/exact_sweep.py --per-token      # ... and the per-token table
    .venv/bin/python benchmarks/exact_sweep.py --objectives tb_token --modes tempered \
        --temperature 2.5                                       # one objective, another T

Per-run rows go to ``benchmarks/out/exact_sweep_runs.csv`` (``--tag`` names another file). Each
run's rows are also kept in ``benchmarks/out/exact_jobs/``, named by what decides them: a re-run
(or ``benchmarks/shipped_configs_exact.py``) reads back the runs it shares instead of repeating
them; delete the folder to measure again.
"""

import argparse
import hashlib
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
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
from gfnlm.exploration import describe_choice, recommended_choice
from gfnlm.objectives.base import ON_POLICY, component_choice

OUT_DIR = Path(__file__).resolve().parent / "out"
OBJECTIVES = ("tb", "tb_token", "la_tb", "subtb", "db")
MODES = ("on-policy", "replay", "uniform_mix", "tempered", "declared")
DEFAULT_MODES = ("on-policy", "uniform_mix", "tempered")
ALPHAS = (0.5, 2.0, 3.0, 4.0)
LONG_ALPHAS = (4.0, 0.5, 3.0, 2.0)
VOCABS = (2, 3, 4, 5, 6)
LENGTHS = range(3, 10)


@attrs.frozen
class Group:
    """One vocabulary/length/α and the bases (one prompt each) drawn for it."""

    index: int
    vocab: int
    max_len: int
    alpha: float
    scales: tuple[float, ...]
    seeds: tuple[int, ...]
    draw_seed: int = 0

    @property
    def setting(self) -> ExactSetting:
        return ExactSetting(self.vocab, self.max_len)


def plain_choice(choice: Mapping[str, Any]) -> dict[str, Any]:
    """A ``{"name", "options"}`` choice as plain dicts (the declared ones are read-only views,
    which do not pickle to the worker processes)."""
    return {"name": choice["name"], "options": dict(choice["options"])}


@attrs.frozen
class Job:
    """One ``train_exact`` run: a group trained with one objective under one behaviour choice."""

    group: Group
    objective: str
    objective_options: dict[str, Any] = attrs.field(converter=dict)
    mode: str  # the label of its rows
    # {"name", "options"}, as a config section names it
    exploration: dict[str, Any] = attrs.field(converter=plain_choice)
    replay: dict[str, Any] = attrs.field(converter=plain_choice)
    steps: int = attrs.field()
    batch_size: int = attrs.field()
    lr: float = attrs.field()
    logz_lr: float = attrs.field()


def longest_length(vocab: int, max_responses: int) -> int:
    """The longest L whose setting has at most ``max_responses`` responses for ``vocab``."""
    return max(L for L in LENGTHS if ExactSetting(vocab, L).num_responses <= max_responses)


def draw_groups(
    count: int, per_group: int, max_responses: int, seed: int, long: bool = False, first: int = 0
) -> list[Group]:
    """Random groups of settings (see the module docstring), reproducible from ``seed``; ``long``:
    the longest-response groups; indices start at ``first``."""
    rng = random.Random(seed)
    groups = []
    while len(groups) < count:
        i = len(groups)
        if long:
            vocab = VOCABS[i % len(VOCABS)]
            max_len = longest_length(vocab, max_responses)
            alpha = LONG_ALPHAS[i % len(LONG_ALPHAS)]
        else:
            vocab = rng.randint(VOCABS[0], VOCABS[-1])
            max_len = rng.randint(LENGTHS[0], longest_length(vocab, max_responses))
            alpha = ALPHAS[i % len(ALPHAS)] if i < len(ALPHAS) else rng.choice(ALPHAS)
        scales = tuple(round(rng.uniform(1.0, 2.5), 2) for _ in range(per_group))
        seeds = tuple(rng.randrange(10_000) for _ in range(per_group))
        groups.append(Group(first + i, vocab, max_len, alpha, scales, seeds, seed))
    return groups


def sweep_groups(args: argparse.Namespace) -> list[Group]:
    """Every draw seed's groups: the first seed's random, the others' long (module docstring)."""
    groups: list[Group] = []
    for position, seed in enumerate(args.draw_seeds):
        groups += draw_groups(
            args.groups, args.seeds_per_group, args.max_responses, seed, position > 0, len(groups)
        )
    return [g for g in groups if args.group_indices is None or g.index in args.group_indices]


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The settings and training options the sweep shares with the shipped-config benchmark."""
    parser.add_argument("--groups", type=int, default=8, help="groups per draw seed")
    parser.add_argument("--seeds-per-group", type=int, default=3)
    parser.add_argument("--draw-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-responses", type=int, default=1600)
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
        "--group-indices", type=int, nargs="+", help="only these groups (as the table numbers them)"
    )
    parser.add_argument("--goal", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT_DIR)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(parser)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    parser.add_argument(
        "--objective-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options given to every objective, e.g. log_z_source=group_mean",
    )
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument(
        "--temperature", type=float, default=1.5, help="the tempered mode's temperature"
    )
    parser.add_argument("--epsilon", type=float, default=0.5, help="the uniform_mix mode's ε")
    parser.add_argument(
        "--replay-ratio", type=float, default=0.25, help="of the explore modes' replay (0: none)"
    )
    parser.add_argument(
        "--per-token", action="store_true", help="also the sequence-level vs per-token table"
    )
    parser.add_argument("--mh-samples", type=int, default=1000)
    parser.add_argument("--tag", default="", help="suffix of the output CSV's name")
    args = parser.parse_args(argv)
    if args.per_token and args.objective_options:
        # the per-token table reads the rows of TB with its default options
        parser.error("--per-token: only without --objective-options")
    return args


def mode_choice(
    mode: str, objective: str, args: argparse.Namespace
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The exploration and replay of ``mode`` (see the module docstring) for ``objective``."""
    if mode == "on-policy":
        return ON_POLICY, ON_POLICY
    if mode == "declared":
        return recommended_choice(registry.lookup("objective", objective)) or (ON_POLICY, ON_POLICY)
    replay = (
        component_choice("reward_prioritised", ratio=args.replay_ratio)
        if args.replay_ratio > 0
        else ON_POLICY
    )
    if mode == "replay":
        return ON_POLICY, replay
    if mode == "tempered":
        return component_choice("tempered", temperature=args.temperature), replay
    return component_choice("uniform_mix", epsilon=args.epsilon), replay


def build_choice(choice: Mapping[str, Any], kind: str) -> Any:
    """The built exploration or replay component of ``choice`` (``None`` for ``none``)."""
    if choice["name"] == "none":
        return None
    return registry.build(kind, choice["name"], dict(choice["options"]))


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train one group with one objective under one behaviour choice; one row per setting."""
    group = job.group
    base = random_bases(group.setting, list(group.scales), list(group.seeds))
    target = registry.build("target", "alpha_power", alpha=group.alpha)
    objective = registry.build("objective", job.objective, dict(job.objective_options))
    logz = None
    if "log_z" in objective.requires:
        logz = registry.build("logz", "table", num_prompts=base.num_prompts)
    policy, report = train_exact_policy(
        objective,
        target,
        base,
        logz=logz,
        exploration=build_choice(job.exploration, "exploration"),
        replay=build_choice(job.replay, "replay"),
        steps=job.steps,
        batch_size=job.batch_size,
        lr=job.lr,
        logz_lr=job.logz_lr,
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
                "draw_seed": group.draw_seed,
                "prompt": prompt,
                "vocab": group.vocab,
                "max_len": group.max_len,
                "alpha": group.alpha,
                "scale": group.scales[prompt],
                "base_seed": group.seeds[prompt],
                "responses": group.setting.num_responses,
                "objective": job.objective,
                "mode": job.mode,
                "behaviour": describe_choice(job.exploration, job.replay),
                "tv_own": total_variation(log_policy, fixed_point.log_probs),
                "tv_target": total_variation(log_policy, dists.log_target),
                "steps": job.steps,
                "lr": job.lr,
                "cpu_s_group": report.cpu_time_s,
            }
        )
    return rows


def objective_label(objective: str, options: Mapping[str, Any]) -> str:
    """``la_tb``, or with options ``la_tb (log_z_source=group_mean)``."""
    given = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{objective} ({given})" if given else objective


def objective_lr(args: argparse.Namespace, objective: str) -> float:
    """The policy lr of ``objective``: its ``--objective-lr`` entry, else ``--lr``."""
    given = dict(item.split("=", 1) for item in args.objective_lr)
    return float(given.get(objective, args.lr))


def sweep_jobs(groups: Sequence[Group], args: argparse.Namespace) -> list[Job]:
    """One job per group × objective × mode, the long groups (the last draw seed's) first."""
    options = dict(item.split("=", 1) for item in args.objective_options)
    return [
        Job(
            group,
            objective,
            options,
            mode,
            *mode_choice(mode, objective, args),
            args.steps,
            args.batch_size,
            objective_lr(args, objective),
            args.logz_lr,
        )
        for group in reversed(groups)
        for objective in args.objectives
        for mode in args.modes
    ]


def job_file(job: Job, cache: Path) -> Path:
    """Where ``job``'s rows are kept: named by everything that decides them (not its label), so a
    run another benchmark or mode already did is read back, not repeated."""
    fields = attrs.asdict(job)
    fields.pop("mode")
    key = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return cache / f"{job.objective}-{key}.json"


def run_jobs(jobs: Sequence[Job], workers: int, cache: Path) -> list[dict[str, Any]]:
    """Every job's rows, in job order: read from ``cache`` when kept there, else run by ``workers``
    processes (one torch thread each) and kept as each finishes (an interrupted sweep resumes)."""
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[int, list[dict[str, Any]]] = {}
    for index, job in enumerate(jobs):
        if job_file(job, cache).is_file():
            results[index] = json.loads(job_file(job, cache).read_text())
    with ProcessPoolExecutor(max_workers=workers) as pool:
        running = {
            pool.submit(run_job, job): index
            for index, job in enumerate(jobs)
            if index not in results
        }
        for future in tqdm(
            as_completed(running),
            total=len(jobs),
            initial=len(results),
            desc="exact runs",
            unit="run",
            file=sys.stderr,
        ):
            index = running[future]
            results[index] = future.result()
            job_file(jobs[index], cache).write_text(json.dumps(results[index]))
    # a kept run carries the labels of the job that ran it
    return [
        row | {"mode": job.mode, "objective": objective_label(job.objective, job.objective_options)}
        for i, job in enumerate(jobs)
        for row in results[i]
    ]


def summary_rows(
    rows: Sequence[dict[str, Any]], goal: float, fields: Sequence[str] = ("objective", "mode")
) -> list[dict[str, str]]:
    """Per value of ``fields`` (first-seen order): the behaviour, the worst and median TV to the
    own fixed point, how many settings are within ``goal``, and the worst setting."""
    out = []
    for label in dict.fromkeys(tuple(r[f] for f in fields) for r in rows):
        chosen = [r for r in rows if tuple(r[f] for f in fields) == label]
        tvs = [r["tv_own"] for r in chosen]
        worst = max(chosen, key=lambda r: r["tv_own"])
        out.append(
            dict(zip(fields, map(str, label), strict=True))
            | {
                "behaviour": chosen[0]["behaviour"],
                "settings": str(len(tvs)),
                "worst TV": f"{max(tvs):.3f}",
                "median TV": f"{statistics.median(tvs):.3f}",
                f"within {goal:g}": f"{sum(t <= goal for t in tvs)}/{len(tvs)}",
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
    groups: Sequence[Group],
    run_rows: Sequence[dict[str, Any]],
    samples: int,
    modes: Sequence[str],
) -> list[dict[str, Any]]:
    """Per setting: TV to p^α of T = 1/α sampling, the trained TB policy of each of ``modes`` and
    the MH power sampler."""
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
                }
                | {f"TB {mode}": trained(mode) for mode in modes}
                | {
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


def cpu_seconds_so_far() -> float:
    """CPU seconds of this process and its joined workers (imports included)."""
    return sum(_cpu_seconds(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def training_cpu_seconds(rows: Sequence[dict[str, Any]]) -> float:
    """The CPU seconds of the runs' training loops (each run's, once: its first prompt's row)."""
    return sum(r["cpu_s_group"] for r in rows if r["prompt"] == 0)


def describe_settings(groups: Sequence[Group]) -> str:
    """The groups' V, L, α and logit scales, one clause each."""
    return "; ".join(
        f"V={g.vocab} L={g.max_len} a={g.alpha:g} scales={list(g.scales)}" for g in groups
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    groups = sweep_groups(args)
    jobs = sweep_jobs(groups, args)
    wall_start = time.perf_counter()
    rows = run_jobs(jobs, args.workers, args.out / "exact_jobs")
    wall = time.perf_counter() - wall_start
    settings = len(groups) * args.seeds_per_group
    runs = settings * len(args.objectives) * len(args.modes)
    print(
        f"exact sweep: {settings} settings ({len(groups)} groups x {args.seeds_per_group} bases, "
        f"draw seeds {' '.join(map(str, args.draw_seeds))}, <= {args.max_responses} responses "
        f"each) x {len(args.objectives)} objectives x {len(args.modes)} modes = {runs} runs "
        f"in {len(jobs)} jobs; "
        f"{args.steps} Adam steps, batch {args.batch_size} per prompt, lr {args.lr} cosine "
        f"({' '.join(args.objective_lr) or 'every objective'}), table log Z (lr {args.logz_lr})"
    )
    print(
        f"wall {wall:.0f} s with {args.workers} worker processes; CPU {cpu_seconds_so_far():.0f} s "
        "(this process and its workers, imports included); the runs' training loops "
        f"{training_cpu_seconds(rows):.0f} s CPU (kept runs included)"
    )
    print("settings: " + describe_settings(groups))
    print()
    print(format_table(summary_rows(rows, args.goal)))
    write_csv(args.out / f"exact_sweep_runs{args.tag}.csv", rows)
    if args.per_token:
        print()
        token_rows = per_token_rows(groups, rows, args.mh_samples, args.modes)
        print(format_table(token_rows))
        write_csv(args.out / f"exact_sweep_per_token{args.tag}.csv", token_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
