"""Creativity: does PowerFlow with α < 1 raise diversity without losing quality?

Compares, on the held-out creative prompts (``gfnlm/data/creative_eval.jsonl``: 24 poem, story
opening and joke prompts, each with the rules it states), k samples per prompt from:

* the instruct model (SmolLM2-135M-Instruct) at T = 1, at high temperature (T = 1.3, 1.6), and
  with nucleus sampling at high temperature (T = 1.6, top-p = 0.9);
* PowerFlow α = 0.5 and α = 0.75 trained from the instruct model on ``creative_train``
  (``configs/powerflow_creative.yaml``, changing only α, the seed and the output folder), sampled
  at T = 1;
* the exact targets p^0.75 and p^0.5 themselves, estimated without training from 32 samples per
  prompt of the model at T = 1, importance-weighted (``gfnlm eval --target-alpha``), printed below
  the table with their effective sample size.

Each configuration runs with 3 seeds (trained ones: training seed = sampling seed). Every job is a
``gfnlm train`` / ``gfnlm eval --metrics creative`` process with one torch thread, at most
``--jobs`` at a time; finished jobs are reused when the script runs again. Writes under
``benchmarks/out/creativity/`` the runs, one JSON per evaluation (metrics and responses) and
``creativity.md``; ``docs/results/creativity.csv`` and ``docs/results/creativity.png`` (quality vs
diversity, like the paper's Pareto figure); and the table between the ``creativity`` markers of
the Benchmarks pages (``docs/benchmarks/``). Mean ± sample standard deviation (n − 1) over seeds.

    nice -n 10 python benchmarks/creativity.py [--seeds 0 1 2] [--jobs 2] [--samples 4]

``--collapsed`` runs the same comparison on a *mode-collapsed* instruct model, made first (once,
cached under the gfnlm cache) by ``benchmarks/collapse.py``: SmolLM2-135M-Instruct self-distilled
on its own T = 0.3 answers to the ``creative_train`` prompts. Its configurations: the original
instruct model at T = 1 (to show the diversity drop), the collapsed model at T = 1, at high
temperature, with top-p and with **min-p**, and PowerFlow α = 0.75 / 0.5 trained from the collapsed
model with a larger budget (``COLLAPSED_TRAINING``). Outputs go to
``benchmarks/out/creativity_collapsed/``, ``docs/results/creativity_collapsed.{csv,png}`` and the
``creativity_collapsed`` markers.

    nice -n 10 python benchmarks/creativity.py --collapsed [--seeds 0 1 2] [--jobs 2]
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from collapse import CollapseOptions, collapse_model
from docs_page import write_between_markers

from gfnlm.models.loading import default_cache_dir
from gfnlm.training.config import load_config

CONFIG = REPO / "configs" / "powerflow_creative.yaml"
OUT = REPO / "benchmarks" / "out" / "creativity"
RESULTS = REPO / "docs" / "results"
PROMPTS = "creative_eval"
# name → (temperature, top_p, alpha or None for the untrained instruct model[, min_p[, model]]);
# the model is the suite's own (the instruct model, or the collapsed one) unless it is named.
CONDITIONS = {
    "instruct T=1": (1.0, 1.0, None),
    "instruct T=1.3": (1.3, 1.0, None),
    "instruct T=1.6": (1.6, 1.0, None),
    "instruct T=1.6, top-p 0.9": (1.6, 0.9, None),
    "PowerFlow α=0.75": (1.0, 1.0, 0.75),
    "PowerFlow α=0.5": (1.0, 1.0, 0.5),
}
# The collapsed suite (--collapsed): the same comparison on the self-distilled model, with min-p.
COLLAPSED_CONDITIONS = {
    "instruct T=1 (not collapsed)": (1.0, 1.0, None, 0.0, "smollm2"),
    "collapsed T=1": (1.0, 1.0, None),
    "collapsed T=1.15": (1.15, 1.0, None),
    "collapsed T=1.33 (1/0.75)": (1 / 0.75, 1.0, None),
    "collapsed T=1.5": (1.5, 1.0, None),
    "collapsed T=1.5, top-p 0.9": (1.5, 0.9, None),
    "collapsed T=1.5, min-p 0.1": (1.5, 1.0, None, 0.1),
    "PowerFlow α=0.75": (1.0, 1.0, 0.75),
    "PowerFlow α=0.5": (1.0, 1.0, 0.5),
    "PowerFlow α=0.75, 24 steps at lr 1e-3": (1.0, 1.0, 0.75),
    "PowerFlow α=0.75, lr 1e-3": (1.0, 1.0, 0.75),
    "PowerFlow α=0.75, 18 steps at lr 1e-3": (1.0, 1.0, 0.75),
    "PowerFlow α=0.75, 24 steps at lr 1e-3, k=8": (1.0, 1.0, 0.75),
    "PowerFlow α=0.75, 18 steps at lr 1e-3, 4 prompts/step": (1.0, 1.0, 0.75),
}
# Training overrides of a configuration (after the suite's): the same α with twice the steps at half
# the lr (about the same distance moved, half the gradient noise's variance); with half the lr alone
# (about half the distance moved); in between (three quarters of the distance); with 8 instead of 4
# responses per training prompt (a better log Z'(q) estimate and half the noise again); and with 4
# instead of 2 prompts per step (the seed-to-seed spread comes from which prompts a run trains on).
CONDITION_TRAINING = {
    "PowerFlow α=0.75, 24 steps at lr 1e-3": ["train.steps=24", "train.lr=1e-3"],
    "PowerFlow α=0.75, lr 1e-3": ["train.lr=1e-3"],
    "PowerFlow α=0.75, 18 steps at lr 1e-3": ["train.steps=18", "train.lr=1e-3"],
    "PowerFlow α=0.75, 24 steps at lr 1e-3, k=8": [
        "train.steps=24",
        "train.lr=1e-3",
        "sampling.samples_per_prompt=8",
    ],
    "PowerFlow α=0.75, 18 steps at lr 1e-3, 4 prompts/step": [
        "train.steps=18",
        "train.lr=1e-3",
        "train.prompts_per_step=4",
    ],
}
# The exact targets p^α of the suite's model, estimated without training: ESTIMATE_SAMPLES responses
# per held-out prompt from the model at T = 1, importance-weighted towards p^α (gfnlm eval
# --target-alpha). Where a trained PowerFlow sampler lands if it matches its target.
ESTIMATE_JOB = "exact targets (importance-weighted)"
ESTIMATE_ALPHAS = (0.75, 0.5)
ESTIMATE_SAMPLES = 32
COLLAPSE = CollapseOptions(
    temperature=0.3, samples=4, max_new_tokens=48, epochs=3, batch_prompts=2, lr=2e-3
)
# PowerFlow from the collapsed model: twice the steps of configs/powerflow_creative.yaml.
COLLAPSED_TRAINING = ["train.steps=12"]
SUITE = {"name": "creativity", "model": "smollm2"}


def use_collapsed_suite() -> None:
    """Point the script at the collapsed suite; the collapsed model is built here on first use."""
    global CONDITIONS, OUT
    CONDITIONS, OUT = COLLAPSED_CONDITIONS, REPO / "benchmarks" / "out" / "creativity_collapsed"
    folder = default_cache_dir() / f"smollm2-collapsed-{COLLAPSE.key()}"
    SUITE.update(
        name="creativity_collapsed",
        model=str(collapse_model("smollm2", "creative_train", folder, COLLAPSE)),
    )


def condition(name: str) -> tuple[float, float, float | None, float, str]:
    """(temperature, top_p, alpha, min_p, model) of a configuration."""
    temperature, top_p, alpha, *rest = CONDITIONS[name]
    min_p = rest[0] if rest else 0.0
    model = rest[1] if len(rest) > 1 else SUITE["model"]
    return temperature, top_p, alpha, min_p, model


# (key, column header, format)
COLUMNS = [
    ("semantic_diversity", "semantic diversity ↑", ".3f"),
    ("lexical_redundancy", "ROUGE-L redundancy ↓", ".3f"),
    ("distinct_2", "distinct-2 ↑", ".3f"),
    ("fluency", "fluency (ref. log-prob/token) ↑", ".2f"),
    ("check_pass_rate", "prompt checks passed ↑", ".3f"),
    ("repetition_rate", "repetition ↓", ".3f"),
    ("mean_length", "length (tokens)", ".1f"),
    ("truncated_rate", "truncated", ".2f"),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.replace("α", "alpha")).strip("_")


# The evaluation's size: the default (4 samples of every 2nd held-out prompt) writes untagged files;
# another (e.g. --samples 8 --prompts-every 1, less evaluation noise) tags its JSON, logs, CSV, plot
# and docs markers, and reuses the trained runs (resuming a finished run trains nothing).
EVAL = {"tag": ""}


def result_path(name: str, seed: int, kind: str) -> Path:
    """The JSON (``kind="json"``) or log of one (configuration, seed) at this evaluation size."""
    return (
        OUT / {"json": "json", "log": "logs"}[kind] / f"{slug(name)}_seed{seed}{EVAL['tag']}.{kind}"
    )


def held_out_prompts(every: int) -> str:
    """``creative_eval`` itself, or every ``every``-th of its prompts (the kinds stay balanced: the
    file lists 8 poems, 8 stories, 8 jokes) written to a file under OUT."""
    if every == 1:
        return PROMPTS
    from gfnlm.tasks.records import bundled_path

    lines = [ln for ln in bundled_path(PROMPTS).read_text().splitlines() if ln.strip()]
    path = OUT / f"{PROMPTS}_every{every}.jsonl"
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(ln + "\n" for ln in lines[::every]))
    return str(path)


def job(
    name: str, seed: int, args: argparse.Namespace, max_new_tokens: int, prompts: str
) -> list[list[str]]:
    """The commands of one (configuration, seed): [train,] eval."""
    gfnlm = [sys.executable, "-m", "gfnlm.cli"]
    out_json = result_path(name, seed, "json")
    if name == ESTIMATE_JOB:
        return [
            [
                *gfnlm,
                "eval",
                "--metrics",
                "creative",
                "--prompts",
                prompts,
                "--samples",
                str(ESTIMATE_SAMPLES),
                "--seed",
                str(seed),
                "--max-new-tokens",
                str(max_new_tokens),
                "--threads",
                str(args.threads),
                "--model",
                SUITE["model"],
                "--target-alpha",
                *map(str, ESTIMATE_ALPHAS),
                "--json",
                str(out_json),
            ]
        ]
    temperature, top_p, alpha, min_p, model = condition(name)
    evaluate = [
        *gfnlm,
        "eval",
        "--metrics",
        "creative",
        "--prompts",
        prompts,
        "--samples",
        str(args.samples),
        "--temperature",
        str(temperature),
        "--top-p",
        str(top_p),
        "--min-p",
        str(min_p),
        "--seed",
        str(seed),
        "--max-new-tokens",
        str(max_new_tokens),
        "--threads",
        str(args.threads),
        "--json",
        str(out_json),
    ]
    if alpha is None:
        return [[*evaluate, "--model", model]]
    run_dir = OUT / "runs" / f"{slug(name)}_seed{seed}"
    suite = (
        [f"model.path={model}", *COLLAPSED_TRAINING]
        if SUITE["name"] == "creativity_collapsed"
        else []
    )
    train = [
        *gfnlm,
        "train",
        str(CONFIG),
        f"target.options.alpha={alpha}",
        f"train.seed={seed}",
        f"train.out_dir={run_dir}",
        f"train.threads={args.threads}",
        *suite,
        *CONDITION_TRAINING.get(name, []),
        *args.overrides,
        "--quiet",
    ]
    return [train, [*evaluate, "--run", str(run_dir)]]


def run_job(commands: list[list[str]], log: Path) -> float:
    json_path = Path(commands[-1][commands[-1].index("--json") + 1])
    if json_path.is_file():
        return 0.0
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        for command in commands:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            result = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(command[3:5])} failed (exit {result.returncode}); see {log}"
                )
    return time.perf_counter() - started


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    for name in CONDITIONS:
        for seed in seeds:
            path = result_path(name, seed, "json")
            if path.is_file():
                metrics = json.loads(path.read_text())["metrics"]
                for key, value in metrics.items():
                    results.setdefault(name, {}).setdefault(key, []).append(float(value))
    return results


def estimate_summary(seeds: list[int]) -> str:
    """A paragraph on the importance-weighted estimates of the exact targets (not table rows: their
    effective sample size decides whether they mean anything, so it is printed with them)."""
    found: dict[float, dict[str, list[float]]] = {}
    for seed in seeds:
        path = result_path(ESTIMATE_JOB, seed, "json")
        if path.is_file():
            for alpha, values in json.loads(path.read_text())["target_estimates"].items():
                for key, value in values.items():
                    found.setdefault(float(alpha), {}).setdefault(key, []).append(float(value))
    parts = []
    for alpha, values in found.items():
        (div, div_sd), (flu, flu_sd) = (
            mean_std(values["semantic_diversity"]),
            mean_std(values["fluency"]),
        )
        parts.append(
            f"p^{alpha:g}: diversity {div:.3f} ± {div_sd:.3f}, fluency {flu:.2f} ± {flu_sd:.2f}, "
            f"effective samples per prompt {statistics.median(values['ess_median']):.1f} (median), "
            f"{min(values['ess_min']):.1f} (min) of {ESTIMATE_SAMPLES}"
        )
    if not parts:
        return ""
    return (
        f"\nExact targets estimated without training ({ESTIMATE_SAMPLES} samples per prompt of the "
        "suite's model at T = 1, importance-weighted, "
        f"{len(next(iter(found.values()))['fluency'])} seeds): "
        + "; ".join(parts)
        + ". Where the effective samples are 1-2 of the drawn ones, one response carries each "
        "prompt's estimate (and different α pick the same response): such numbers do not "
        "locate the targets.\n"
    )


def markdown_table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| configuration | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, metrics in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            mean, std = mean_std(metrics[key])
            cells.append(f"{mean:{fmt}} ± {std:{fmt}}")
        lines.append(f"| {name} | {len(metrics[COLUMNS[0][0]])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(results: dict[str, dict[str, list[float]]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k, _, _ in COLUMNS] + ["distinct_1", "distinct_3"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["configuration", "seeds", *(f"{k}_{s}" for k in keys for s in ("mean", "std"))]
        )
        for name, metrics in results.items():
            row = [name, len(metrics[keys[0]])]
            for key in keys:
                row.extend(f"{v:.5f}" for v in mean_std(metrics[key]))
            writer.writerow(row)


def plot(results: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("fluency", "fluency: reference mean token log-prob"),
        ("check_pass_rate", "prompt checks passed"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    colours = plt.get_cmap("tab20")  # up to 20 configurations, each its own colour
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, (name, metrics) in enumerate(results.items()):
            xs, ys = metrics["semantic_diversity"], metrics[key]
            marker = "*" if name.startswith("PowerFlow") else "o"
            ax.scatter(xs, ys, color=colours(i), alpha=0.3, s=18, marker=marker)
            (mx, sx), (my, sy) = mean_std(xs), mean_std(ys)
            ax.errorbar(
                mx,
                my,
                xerr=sx,
                yerr=sy,
                color=colours(i),
                marker=marker,
                markersize=11 if marker == "*" else 7,
                capsize=3,
                label=name,
            )
        ax.set_xlabel("semantic diversity (1 − mean pairwise cosine, MiniLM) →")
        ax.set_ylabel(f"{label} →")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7.5, loc="lower center", ncol=3, frameon=False)
    seeds = max(len(m["semantic_diversity"]) for m in results.values())
    model = (
        "collapsed SmolLM2-135M-Instruct"
        if SUITE["name"] == "creativity_collapsed"
        else "SmolLM2-135M-Instruct"
    )
    fig.suptitle(
        f"{model}, held-out creative prompts: quality vs diversity "
        f"(mean ± std over up to {seeds} seeds; faint: single seeds)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05 * (1 + len(results) // 3), 1, 1))  # room for the legend below
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=4, help="k samples per held-out prompt")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument(
        "--prompts-every",
        type=int,
        default=2,
        help="evaluate every N-th held-out prompt (1: all 24; 2: 12, balanced by kind)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--collapsed",
        action="store_true",
        help="the comparison on the mode-collapsed model (benchmarks/collapse.py), with min-p",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        choices=[*CONDITIONS, *COLLAPSED_CONDITIONS, ESTIMATE_JOB],
        metavar="NAME",
        help=f"configurations to run (default all: {'; '.join(CONDITIONS)}; "
        f"with --collapsed: {'; '.join(COLLAPSED_CONDITIONS)})",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not write docs/ (table, CSV, PNG)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: tabulate and plot the evaluations already under "
        "benchmarks/out/creativity",
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra key=value for the training runs (smoke tests)"
    )
    args = parser.parse_args()
    if args.samples < 2:
        parser.error(f"--samples={args.samples}: must be >= 2 (diversity compares samples)")
    if args.prompts_every < 1:
        parser.error(f"--prompts-every={args.prompts_every}: must be >= 1")
    allowed = {*(COLLAPSED_CONDITIONS if args.collapsed else CONDITIONS), ESTIMATE_JOB}
    if args.only and set(args.only) - allowed:
        parser.error(
            f"--only: {sorted(set(args.only) - allowed)} are not configurations of this suite"
        )
    max_new_tokens = load_config(CONFIG, args.overrides).sampling.max_new_tokens
    if args.collapsed:
        use_collapsed_suite()
    prompts = held_out_prompts(args.prompts_every)
    if (args.samples, args.prompts_every) != (4, 2):
        EVAL["tag"] = f"_k{args.samples}_every{args.prompts_every}"
    # The target estimate draws its own samples: it runs at the default evaluation size only.
    names = args.only or [*CONDITIONS, *([] if EVAL["tag"] else [ESTIMATE_JOB])]
    # Seed by seed (a stopped benchmark still has whole seeds), the trained (longest) jobs first.
    order = sorted(
        ((n, s) for n in names for s in args.seeds),
        key=lambda p: (p[1], p[0] != ESTIMATE_JOB and condition(p[0])[2] is None),
    )
    started = time.perf_counter()
    if args.report_only:
        order = []
    with (
        ThreadPoolExecutor(max_workers=args.jobs) as pool,
        tqdm(total=len(order), desc="creativity", unit="job") as bar,
    ):
        futures = {}
        for name, seed in order:
            commands = job(name, seed, args, max_new_tokens, prompts)
            futures[pool.submit(run_job, commands, result_path(name, seed, "log"))] = (name, seed)
        for future, (name, seed) in futures.items():
            seconds = future.result()
            bar.update(1)
            bar.write(
                f"{name}, seed {seed}: {'cached' if not seconds else f'{seconds / 60:.1f} min'}"
            )
    results = aggregate(args.seeds)
    table = markdown_table(results) + estimate_summary(args.seeds)
    wall = (time.perf_counter() - started) / 60
    print(
        f"\n{len(order)} jobs run, {wall:.1f} min wall; held-out prompts: {prompts}, "
        f"k={args.samples}, <= {max_new_tokens} new tokens; mean ± std over seeds {args.seeds}\n"
    )
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"creativity{EVAL['tag']}.md").write_text(table)
    if not args.no_docs:
        stem = SUITE["name"] + EVAL["tag"]
        write_csv(results, RESULTS / f"{stem}.csv")
        plot(results, RESULTS / f"{stem}.png")
        write_between_markers(table, stem)
        written = f"{RESULTS / f'{stem}.csv'}, {RESULTS / f'{stem}.png'}"
        print(f"wrote {written} and the table in the Benchmarks pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
