"""Ablation sweeps: one YAML names a base run config and a grid over its fields; each cell of the
grid is a ``gfnlm train`` run in its own folder, run one after another, and the runs are compared
in one table (CSV and Markdown) and one plot of training curves.

A spec (``configs/sweeps/objectives.yaml``)::

    base: ../default.yaml            # a run config file, relative to this spec; or sections inline
    set: {train.steps: 8}            # fields every cell shares
    grid:                            # every combination of these values is a cell
      objective.name: [la_tb, tb, grpo]
      target.options.alpha: [2, 4]
    variants:                        # named sets of fields: one more axis of the grid
      rl_traj: {objective.name: grpo, objective.options.kl_beta: 1.0}
    seeds: [0, 1]                    # train.seed of each cell; the table collapses them
    out: runs/sweeps/objectives

Every cell's :class:`~gfnlm.training.config.RunConfig` is built and composed (each component built
and checked against the others, no model loaded) before the first run starts: a typo'd key, an
unknown component or a value of the wrong type is one line naming it, not a failure hours in. A
rerun skips the finished cells and resumes the others from their checkpoints.
"""

import contextlib
import csv
import fnmatch
import gc
import hashlib
import io
import itertools
import json
import math
import os
import re
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from gfnlm.contracts.errors import ConfigError, InputError, RunError, quoted, shortened
from gfnlm.contracts.paths import check_writable_folder, write_text_atomic
from gfnlm.contracts.registry import KINDS, import_components, lookup
from gfnlm.contracts.validators import count
from gfnlm.evaluation.held_out import read_cached_evaluation
from gfnlm.models.loading import resolve_model_path
from gfnlm.training import checkpoint, metrics_log
from gfnlm.training.compose import build_task, compose, load_prompts, read_model_config
from gfnlm.training.config import RunConfig, load_config, setting
from gfnlm.training.resume import config_differences
from gfnlm.training.trainer import Trainer

SEED_KEY, OUT_KEY = "train.seed", "train.out_dir"
# Training metrics in the table (shell-style patterns, in this order, where a run logged them).
TABLE_METRICS = (
    "loss",
    "target/log_reward_mean",
    "target/base_logp_mean",
    "target/reward_mean",
    "reward_mean",
    "length/mean",
    "truncated_frac",
    "entropy",
    "kl/*",
    "kl_*",
)
PLOT_METRICS = ("loss", "target/log_reward_mean")
# Facts of an evaluation, not measurements: left out of the table.
EVAL_FACTS = frozenset({"num_questions", "samples_per_question", "k"})
TABLE_CSV, TABLE_MD, CURVES_PNG = "summary.csv", "summary.md", "curves.png"


@attrs.define
class SweepSpec:
    """A sweep as its YAML file gives it (see the module docstring)."""

    base: Any = setting(
        None,
        help="the run config every cell starts from: a YAML file (relative to the spec's folder) "
        "or its sections inline; none: the run config's defaults",
    )
    set: dict[str, Any] = setting(factory=dict, help="dotted field → value, the same in every cell")
    grid: dict[str, list[Any]] = setting(
        factory=dict, help="dotted field → its values; every combination of values is a cell"
    )
    variants: dict[str, dict[str, Any]] = setting(
        factory=dict,
        help="name → {dotted field → value}: named sets of fields, one more axis of the grid",
    )
    seeds: list[int] = setting(
        factory=list,
        help="the `train.seed` values each cell runs with; the table gives mean ± sample std "
        "over them",
    )
    out: str = setting(
        "", help="the folder of the runs, the table and the plot (default runs/sweeps/SPEC_NAME)"
    )
    last_k: int = setting(
        5,
        help="a training metric in the table is the mean of a run's last K steps, 1 to 1,000,000",
        validator=count(1),
    )
    metrics: list[str] = setting(
        factory=lambda: list(TABLE_METRICS),
        help="the training metrics in the table (shell-style patterns); the final evaluation's "
        "metrics come as well",
    )
    plot: list[str] = setting(
        factory=lambda: list(PLOT_METRICS),
        help="the metrics plotted against the step, one panel each (`--metric` replaces them)",
    )


@attrs.frozen
class Cell:
    """One run of the sweep: its folder name, its table row, the fields it sets, its config and
    how far it got."""

    name: str
    row: str
    axes: dict[str, str]
    fields: dict[str, Any]
    config: RunConfig
    done_step: int

    @property
    def described(self) -> str:
        """The cell's own fields, ``key=value`` as on the command line."""
        return " ".join(f"{key}={_text(value)}" for key, value in self.fields.items())

    @property
    def out_dir(self) -> Path:
        """The run's folder (``train.out_dir``)."""
        return Path(self.config.train.out_dir)

    @property
    def finished(self) -> bool:
        """Whether the run has nothing left to do: its checkpoint is at ``train.steps`` and, with
        held-out data, the final evaluation is written."""
        return _is_finished(self.config, self.done_step)

    @property
    def status(self) -> str:
        """``new``, ``resumes at step k/N`` or ``finished``, as the plan shows it."""
        if self.finished:
            return "finished"
        steps = self.config.train.steps
        return f"resumes at step {self.done_step}/{steps}" if self.done_step else "new"


@attrs.frozen
class Plan:
    """The cells of a sweep, every one checked, and the folder they share."""

    spec: SweepSpec
    out: Path
    cells: list[Cell]


# ---------------------------------------------------------------------- the spec
def load_spec(path: str | Path) -> SweepSpec:
    """The spec file as a :class:`SweepSpec`; a missing file, bad YAML, an unknown key or a value
    of the wrong type is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec={str(path)!r}: no such file")
    try:
        loaded = OmegaConf.load(path)
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepSpec), loaded))
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"spec={str(path)!r}: not valid YAML ({problem})") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        where = f"{key}: " if key else ""
        raise ConfigError(f"spec={str(path)!r}: {where}{str(error).splitlines()[0]}") from None
    assert isinstance(spec, SweepSpec)
    _check_spec(spec)
    return spec


def _check_spec(spec: SweepSpec) -> None:
    """What the types alone do not say: keys set in two places, empty value lists, a base that is
    neither a file nor sections, the folder keys the sweep chooses itself."""
    if spec.base is not None and not isinstance(spec.base, str | dict):
        raise ConfigError(
            f"base={quoted(spec.base)}: give a run config file or a mapping of its sections"
        )
    for key, values in spec.grid.items():
        if not values:
            raise ConfigError(f"grid.{key}=[]: give at least one value")
    if spec.seeds and SEED_KEY in spec.grid:
        raise ConfigError(f"seeds={spec.seeds} and grid.{SEED_KEY}: give the seeds in one of them")
    for source, key, _ in _assignments(spec):
        if key == OUT_KEY:
            raise ConfigError(
                f"{source}.{OUT_KEY}: the sweep names each run's folder; set out: instead"
            )
    varied = set(spec.grid) | {key for fields in spec.variants.values() for key in fields}
    for key in spec.set:
        if key in varied:
            raise ConfigError(f"set.{key}: also varied by grid or variants; keep it in one place")
    for name, fields in spec.variants.items():
        for key in fields:
            if key in spec.grid:
                raise ConfigError(f"variants.{name}.{key}: also in grid; keep it in one place")


def _assignments(spec: SweepSpec) -> Iterator[tuple[str, str, Any]]:
    """(where, dotted key, value) of every field the spec sets: ``set``, each grid value and each
    variant's fields."""
    for key, value in spec.set.items():
        yield "set", key, value
    for key, values in spec.grid.items():
        for value in values:
            yield "grid", key, value
    for name, fields in spec.variants.items():
        for key, value in fields.items():
            yield f"variants.{name}", key, value


def override(key: str, value: Any) -> str:
    """``key=value`` as :func:`~gfnlm.training.config.load_config` reads it: the value in JSON,
    which is YAML, so a string stays a string and a list or mapping keeps its structure."""
    return f"{key}={json.dumps(value)}"


# ---------------------------------------------------------------------- the plan
def plan_sweep(
    spec_path: str | Path, overrides: Sequence[str] = (), out: str | None = None
) -> Plan:
    """Every cell of the sweep, each config built and composed (no model loaded), in the order
    they run: seed by seed, so the first pass over the grid compares every cell early.
    ``overrides`` (``key=value``) apply to every cell, as ``set`` does."""
    spec = load_spec(spec_path)
    out_dir = Path(out or spec.out or Path("runs/sweeps") / Path(spec_path).stem)
    field = "--out" if out else "out"
    check_writable_folder(str(out_dir), field)
    varied = set(spec.grid) | {key for fields in spec.variants.values() for key in fields}
    for item in overrides:
        key = item.partition("=")[0]
        if key in varied or key == OUT_KEY or (key == SEED_KEY and spec.seeds):
            raise ConfigError(
                f"override {quoted(item)}: the sweep sets {key} itself; change the spec instead"
            )
    shared = [override(k, v) for k, v in spec.set.items()] + list(overrides)
    with _base_file(spec, Path(spec_path)) as base:
        _check_each_assignment(spec, base, shared)
        cells = [_cell(spec, base, shared, out_dir, values) for values in _combinations(spec)]
    names = [cell.name for cell in cells]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"two cells share the folder name {name!r} (values that differ only in "
                "characters a folder name cannot hold); give them distinct values"
            )
    checked: dict[str, int] = {}
    for cell in cells:
        _check_cell(cell, checked)
    return Plan(spec, out_dir, cells)


@contextlib.contextmanager
def _base_file(spec: SweepSpec, spec_path: Path) -> Iterator[Path | None]:
    """The base run config as a file ``load_config`` reads: the one named (relative to the
    spec's folder), or inline sections written to a temporary file, so that a component named by
    a cell replaces the base's options exactly as on the ``gfnlm train`` command line."""
    if spec.base is None:
        yield None
    elif isinstance(spec.base, str):
        path = Path(spec.base).expanduser()
        path = path if path.is_absolute() else spec_path.parent / path
        if not path.is_file():
            raise ConfigError(
                f"base={spec.base!r}: no such file (relative to the spec's folder "
                f"{str(spec_path.parent)!r})"
            )
        yield path
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "base.yaml"
            path.write_text(yaml.safe_dump(spec.base))
            yield path


def _check_each_assignment(spec: SweepSpec, base: Path | None, shared: list[str]) -> None:
    """Each field the spec varies, alone on the base and the shared fields: an unknown key, a
    wrong type or an unknown component name is reported with the one assignment that makes it."""
    try:
        _checked_config(base, shared)  # the shared fields at once: a load takes a while
    except ConfigError:
        for end, item in enumerate(shared):  # the first that fails alone on those before it
            _checked_config(base, shared[:end], item)
        raise
    for source, key, value in _assignments(spec):
        if source != "set":
            _checked_config(base, shared, override(key, value), f"{source} {key}={_text(value)}")
    for seed in spec.seeds:
        _checked_config(base, shared, override(SEED_KEY, seed), f"seeds {seed!r}")


def _checked_config(
    base: Path | None, shared: list[str], item: str | None = None, source: str = ""
) -> None:
    """Load the config with ``item`` after ``shared``, and look its component names up; an error
    starts with ``source`` (where the spec sets it), else ``item``."""
    try:
        _check_component_names(load_config(base, [*shared, *([item] if item else [])]))
    except InputError as error:
        where = source or item
        raise ConfigError(f"{where}: {error}" if where else str(error)) from None


def _check_component_names(config: RunConfig) -> None:
    """Every component the config names is registered (after its ``imports``)."""
    import_components(config.imports, "imports")
    for kind in KINDS:
        name = config.sampling.sampler if kind == "sampler" else getattr(config, kind).name
        lookup(kind, name)


def _combinations(spec: SweepSpec) -> list[list[tuple[str, str, Any]]]:
    """Each cell as its (axis, key, value) triples; the variant axis has key ``None`` and the
    variant's name as value. Seeds vary slowest."""
    axes: list[list[tuple[str, Any, Any]]] = []
    if spec.variants:
        axes.append([("variant", None, name) for name in spec.variants])
    labels = _axis_labels([key for key in spec.grid if key != SEED_KEY])
    for key, label in labels.items():
        axes.append([(label, key, value) for value in spec.grid[key]])
    seeds = spec.seeds or spec.grid.get(SEED_KEY, [])
    if not seeds:
        return [list(combination) for combination in itertools.product(*axes)]
    by_seed = itertools.product([("seed", SEED_KEY, seed) for seed in seeds], *axes)
    return [[*rest, seed] for seed, *rest in by_seed]  # the seed last in names


def _axis_labels(keys: list[str]) -> dict[str, str]:
    """A short column name per grid key: ``objective.name`` → ``objective``,
    ``target.options.alpha`` → ``alpha``; the full key where two short names would be the same."""
    short = {
        key: key.split(".")[-2] if key.endswith(".name") else key.split(".")[-1] for key in keys
    }
    shared = {label for label in short.values() if list(short.values()).count(label) > 1}
    return {key: key if label in shared or not label else label for key, label in short.items()}


def _text(value: Any) -> str:
    """A grid value as the table and the folder names show it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _folder_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def _folder_name(name: str, limit: int = 120) -> str:
    """A cell's folder name: its parts, or past ``limit`` characters (long list or mapping values)
    their start and a hash of the whole, so that it stays unique and fits any file system."""
    if not name:
        return "run"
    if len(name) <= limit:
        return name
    return f"{name[: limit - 13]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _cell(
    spec: SweepSpec,
    base: Path | None,
    shared: list[str],
    out_dir: Path,
    values: list[tuple[str, Any, Any]],
) -> Cell:
    """One cell's config (built, not yet composed) and its folder's progress."""
    axes, parts, fields = {}, [], {}
    for label, key, value in values:
        if key is None:  # a variant: its fields, under its name
            fields.update(spec.variants[value])
            parts.append(_folder_part(value))
        else:
            fields[key] = value
            parts.append(f"{label}-{_folder_part(_text(value))}")
        axes[label] = _text(value)
    seedless = [part for (label, _, _), part in zip(values, parts, strict=True) if label != "seed"]
    name = _folder_name("__".join(parts))
    row = "__".join(seedless) or "all"
    folder = out_dir / name
    items = [override(key, value) for key, value in fields.items()]
    try:
        config = load_config(base, [*shared, *items, override(OUT_KEY, str(folder))])
    except InputError as error:
        raise ConfigError(f"cell {name!r} ({' '.join(items)}): {error}") from None
    return Cell(name, row, axes, fields, config, _done_step(folder))


def _done_step(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (0: none yet)."""
    latest = checkpoint.latest_checkpoint(run_dir / "checkpoints")
    return 0 if latest is None else checkpoint.checkpoint_step(latest)


def _final_eval_path(run_dir: Path, step: int) -> Path:
    """Where the trainer caches the evaluation after training (see ``Trainer.evaluate_cached``)."""
    return run_dir / "eval" / f"step_{step:06d}.json"


def _is_finished(config: RunConfig, done_step: int) -> bool:
    if done_step < config.train.steps:
        return False
    return not config.data.eval or _final_eval_path(Path(config.train.out_dir), done_step).is_file()


def _check_cell(cell: Cell, checked: dict[str, int]) -> None:
    """What ``Trainer`` checks before its model loads: the data, the task and every component
    composed together; and, for a run already started, that its config is the one it started
    with. ``checked`` caches the prompt count per model and data (tokenising them once)."""
    config = cell.config
    try:
        model_dir = resolve_model_path(config.model.path)
        hidden_size = int(read_model_config(model_dir)["hidden_size"])
        task = build_task(config)
        key = json.dumps(
            [str(model_dir), attrs.asdict(config.data), attrs.asdict(config.task)]
            + [config.sampling.max_new_tokens],
            sort_keys=True,
            default=str,
        )
        if key not in checked:
            checked[key] = len(load_prompts(config, model_dir, task)[0])
        compose(config, hidden_size, checked[key], task)
        if cell.done_step:
            _check_same_run(cell)
    except InputError as error:
        raise ConfigError(f"cell {cell.name!r} ({cell.described}): {error}") from None


def _check_same_run(cell: Cell) -> None:
    """A started run resumes only with the config it started with (the trainer refuses otherwise,
    which here would be after the cells before it had run)."""
    latest = checkpoint.latest_checkpoint(cell.out_dir / "checkpoints")
    saved = latest / checkpoint.CONFIG_FILE if latest is not None else None
    if saved is None or not saved.is_file():
        return
    for name, mine, theirs in config_differences(cell.config, load_config(saved)):
        raise ConfigError(
            f"{name}={mine!r} differs from the run already in {str(cell.out_dir)!r} ({theirs!r}); "
            "change the spec back, or choose another out"
        )


# ---------------------------------------------------------------------- running
def run_cells(plan: Plan, progress: bool = True) -> dict[str, str]:
    """Train every unfinished cell, one after another (each resumes from its own checkpoints);
    returns the cells whose run failed (a non-finite loss, a broken checkpoint), name → why. The
    others still run: a diverging cell is a result of the comparison."""
    failed: dict[str, str] = {}
    todo = [cell for cell in plan.cells if not cell.finished]
    done = len(plan.cells) - len(todo)
    bar = tqdm(total=len(plan.cells), initial=done, desc="sweep", unit="run", disable=not progress)
    try:
        for cell in todo:
            bar.set_postfix_str(cell.name)
            try:
                _train(cell, progress)
            except RunError as error:
                failed[cell.name] = str(error)
                tqdm.write(f"gfnlm sweep: {cell.name} failed: {error}")
            bar.update(1)
    finally:
        bar.close()
    return failed


def _train(cell: Cell, progress: bool) -> None:
    trainer = Trainer(cell.config, progress=progress)
    try:
        trainer.train()
    finally:
        trainer.close()
        del trainer
        gc.collect()  # one model at a time: the next cell's must not sit beside this one's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------- metrics of a run
def read_history(run_dir: Path) -> list[dict[str, float]]:
    """A run's training metrics per step, oldest first (``{"step": n, "loss": ..., ...}``), from
    its ``metrics.jsonl``, up to its newest checkpoint."""
    records, _ = metrics_log.read_records(run_dir / metrics_log.FILE_NAME, _done_step(run_dir))
    return [record for record in records if "eval" not in record]


def run_summary(cell: Cell, patterns: Sequence[str], last_k: int) -> dict[str, float] | None:
    """One finished run's numbers: its final evaluation's metrics (``eval/...``) and the mean of
    its last ``last_k`` steps of each training metric matching ``patterns``; ``None`` when the run
    is not finished."""
    step = _done_step(cell.out_dir)
    if not _is_finished(cell.config, step):
        return None
    summary: dict[str, float] = {}
    evaluation = read_cached_evaluation(_final_eval_path(cell.out_dir, step)) or {}
    for key, value in evaluation.items():
        if key not in EVAL_FACTS and isinstance(value, int | float):
            summary[f"eval/{key}"] = float(value)
    last = read_history(cell.out_dir)[-last_k:]
    logged = list(dict.fromkeys(key for record in last for key in record if key != "step"))
    for pattern in patterns:
        for key in sorted(k for k in logged if fnmatch.fnmatchcase(k, pattern)):
            values = [record[key] for record in last if key in record]
            summary.setdefault(key, statistics.fmean(values))
    return summary


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with fewer than two values)."""
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


# ---------------------------------------------------------------------- the table
@attrs.define
class Row:
    """One row of the comparison: a cell over its seeds."""

    name: str
    axes: dict[str, str]
    runs: list[dict[str, float]]
    failed: int


def table_rows(plan: Plan, failed: dict[str, str]) -> list[Row]:
    """The rows of the comparison, in the plan's order: each cell's finished runs over seeds."""
    rows: dict[str, Row] = {}
    for cell in plan.cells:
        axes = {label: text for label, text in cell.axes.items() if label != "seed"}
        row = rows.setdefault(cell.row, Row(cell.row, axes, [], 0))
        if cell.name in failed:
            row.failed += 1
        elif (summary := run_summary(cell, plan.spec.metrics, plan.spec.last_k)) is not None:
            row.runs.append(summary)
    return list(rows.values())


def _metric_names(rows: list[Row]) -> list[str]:
    """The metrics of the table, in first-seen order (evaluation first, as each run lists them)."""
    return list(dict.fromkeys(key for row in rows for run in row.runs for key in run))


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4g}"


def table_csv(rows: list[Row]) -> str:
    """The comparison as CSV: the axes, ``seeds`` (finished runs), ``failed``, then the mean and
    the sample std of each metric (empty with one run)."""
    metrics, axes = _metric_names(rows), list(dict.fromkeys(a for row in rows for a in row.axes))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*axes, "seeds", "failed", *(f"{m}{s}" for m in metrics for s in ("", "_std"))])
    for row in rows:
        stats = [mean_and_std([run[m] for run in row.runs if m in run]) for m in metrics]
        cells = [repr(x) if not math.isnan(x) else "" for pair in stats for x in pair]
        writer.writerow([*(row.axes.get(a, "") for a in axes), len(row.runs), row.failed, *cells])
    return buffer.getvalue()


def table_markdown(rows: list[Row]) -> str:
    """The comparison as a Markdown table: each metric as ``mean ± std`` over the seeds."""
    metrics, axes = _metric_names(rows), list(dict.fromkeys(a for row in rows for a in row.axes))
    show_failed = any(row.failed for row in rows)
    header = [*axes, "seeds", *(["failed"] if show_failed else []), *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for metric in metrics:
            mean, std = mean_and_std([run[metric] for run in row.runs if metric in run])
            cells.append(_number(mean) + (f" ± {_number(std)}" if not math.isnan(std) else ""))
        counts = [str(len(row.runs)), *([str(row.failed)] if show_failed else [])]
        values = [*(row.axes.get(a, "") for a in axes), *counts, *(c or "–" for c in cells)]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the plot
def curves(
    histories: list[list[dict[str, float]]], metric: str
) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean over runs and sample std over runs (0 with one run) of ``metric``."""
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            if metric in record:
                by_step.setdefault(int(record["step"]), []).append(record[metric])
    steps = sorted(by_step)
    stats = [mean_and_std(by_step[step]) for step in steps]
    return steps, [m for m, _ in stats], [0.0 if math.isnan(s) else s for _, s in stats]


def plot_curves(
    rows: dict[str, list[list[dict[str, float]]]], metrics: list[str], path: Path
) -> None:
    """One PNG: a panel per metric, a line per row (mean over its runs) with the sample std
    shaded. Drawn on a bare matplotlib ``Figure``: no pyplot state, no display."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.5 * len(metrics), 4.0), layout="constrained")
    panels = figure.subplots(1, len(metrics), squeeze=False)[0]
    for panel, metric in zip(panels, metrics, strict=True):
        for name, histories in rows.items():
            steps, mean, std = curves(histories, metric)
            if not steps:
                continue
            (line,) = panel.plot(steps, mean, label=name, linewidth=1.5)
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            panel.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        panel.set_title(metric)
        panel.set_xlabel("step")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.grid(alpha=0.3)
    panels[0].legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=110)
    os.replace(temporary, path)  # the plot appears whole or not at all, like the tables


def _check_plot_metrics(metrics: list[str], histories: list[list[dict[str, float]]]) -> None:
    """Each metric to plot was logged by some run (checked once the runs exist: before, their
    metrics are not known)."""
    logged = sorted(
        {key for history in histories for record in history for key in record} - {"step"}
    )
    for metric in metrics:
        if logged and metric not in logged:
            raise ConfigError(
                f"--metric={metric!r}: no run logged it (the runs are kept: rerun to plot); "
                f"logged: {shortened(', '.join(logged), 300)}"
            )


# ---------------------------------------------------------------------- the command
@attrs.frozen
class Report:
    """What a sweep wrote: the table's files, the plot, the failed cells and the table itself."""

    csv: Path
    markdown: Path
    plot: Path
    failed: dict[str, str]
    table: str


def write_report(plan: Plan, failed: dict[str, str], plot_metrics: list[str]) -> Report:
    """The comparison of the finished runs: ``summary.csv``, ``summary.md`` and ``curves.png``."""
    rows = table_rows(plan, failed)
    histories: dict[str, list[list[dict[str, float]]]] = {}
    for cell in plan.cells:
        if cell.name not in failed:
            label = ", ".join(
                text if axis == "variant" else f"{axis}={text}"
                for axis, text in cell.axes.items()
                if axis != "seed"
            )
            histories.setdefault(label or cell.row, []).append(read_history(cell.out_dir))
    _check_plot_metrics(plot_metrics, [h for group in histories.values() for h in group])
    markdown = table_markdown(rows)
    csv_path, md_path = plan.out / TABLE_CSV, plan.out / TABLE_MD
    write_text_atomic(csv_path, table_csv(rows))
    write_text_atomic(md_path, markdown)
    png = plan.out / CURVES_PNG
    plot_curves(histories, plot_metrics, png)
    return Report(csv_path, md_path, png, failed, markdown)


def sweep(
    spec_path: str,
    overrides: Sequence[str] = (),
    out: str | None = None,
    dry_run: bool = False,
    metrics: Sequence[str] = (),
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """``gfnlm sweep``: plan and check every cell, run the unfinished ones, write the table and
    the plot; returns the exit status (1 when a cell's run failed). ``dry_run`` only shows the
    plan."""
    plan = plan_sweep(spec_path, overrides, out)
    if dry_run:
        for cell in plan.cells:
            echo(f"{cell.name}  [{cell.status}]  {cell.described}")
        todo = sum(not cell.finished for cell in plan.cells)
        echo(f"{len(plan.cells)} runs in {plan.out}, {todo} to run; nothing was run (--dry-run)")
        return 0
    failed = run_cells(plan, progress)
    report = write_report(plan, failed, list(metrics) or plan.spec.plot)
    echo(report.table)
    echo(f"Table: {report.csv}, {report.markdown}")
    echo(f"Training curves: {report.plot}")
    for name, why in failed.items():
        echo(f"failed: {name}: {why}")
    return 1 if failed else 0
