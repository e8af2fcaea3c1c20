"""Declarative run configuration: attrs classes, loaded from YAML and overridden from the CLI.

Loading, merging and ``a.b.c=value`` overrides are OmegaConf's (typed structured configs built from
these attrs classes, so unknown keys and wrongly-typed values are rejected with the key's full
name); we write no parser. The resolved config is saved with each run as ``config.yaml``.

Example::

    cfg = load_config("configs/powerflow_reasoning.yaml", ["train.steps=20", "target.options.alpha=2"])
"""

import math
from pathlib import Path
from typing import Any, ClassVar

import attrs
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gfnlm.contracts.errors import ConfigError, quoted, shortened
from gfnlm.contracts.paths import check_path_length


def field_name(instance: object, attribute: attrs.Attribute) -> str:
    """``train.steps`` rather than ``steps``: the config section (``section`` of the class) and the field."""
    section = getattr(type(instance), "section", "")
    return f"{section}.{attribute.name}" if section else attribute.name


def _at_least(minimum: float):
    """``value >= minimum`` and finite (NaN compares false both ways, so it is rejected by name)."""

    def check(instance: object, attribute: attrs.Attribute, value: float) -> None:
        if not math.isfinite(value):
            raise ConfigError(
                f"{field_name(instance, attribute)}={value!r}: must be a finite number >= {minimum}"
            )
        if value < minimum:
            raise ConfigError(f"{field_name(instance, attribute)}={value!r}: must be >= {minimum}")

    return check


# The most a count of prompts, responses or tokens may be: far above any real run, and low enough
# that a typo (an extra zero run, 1e9) is refused in one line instead of an allocation.
MAX_COUNT = 1_000_000
# Learning-rate bounds (see TrainConfig.lr and logz_lr).
MAX_LR, MAX_LOGZ_LR = 1.0, 10.0


def _count(minimum: int, maximum: int = MAX_COUNT):
    """An integer in ``[minimum, maximum]``."""

    def check(instance: object, attribute: attrs.Attribute, value: int) -> None:
        if not minimum <= value <= maximum:
            raise ConfigError(
                f"{field_name(instance, attribute)}={value!r}: must be in [{minimum}, {maximum:_}]"
            )

    return check


def _open_closed(low: float, high: float):
    """A number in ``(low, high]`` (NaN and infinities are refused: they compare false)."""

    def check(instance: object, attribute: attrs.Attribute, value: float) -> None:
        if not math.isfinite(value):
            raise ConfigError(
                f"{field_name(instance, attribute)}={value!r}: must be a finite "
                f"number in ({low:g}, {high:g}]"
            )
        if not low < value <= high:
            raise ConfigError(
                f"{field_name(instance, attribute)}={value!r}: must be in ({low:g}, {high:g}]"
            )

    return check


def _path(instance: object, attribute: attrs.Attribute, value: str) -> None:
    """A file or folder path the file system can hold (``''`` is left to the field's own rule)."""
    check_path_length(str(value), field_name(instance, attribute))


def _positive_fraction(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value <= 1:  # also false for NaN
        raise ConfigError(f"{field_name(instance, attribute)}={value!r}: must be in (0, 1]")


def _fraction_below_one(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:  # also false for NaN
        raise ConfigError(f"{field_name(instance, attribute)}={value!r}: must be in [0, 1)")


def _not_empty(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not str(value).strip():
        raise ConfigError(f"{field_name(instance, attribute)}={quoted(value)}: must not be empty")


def _one_of(*allowed: str):
    def check(instance: object, attribute: attrs.Attribute, value: str) -> None:
        if value not in allowed:
            raise ConfigError(
                f"{field_name(instance, attribute)}={quoted(value)}: must be one of "
                f"{', '.join(allowed)}"
            )

    return check


def _finite(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{field_name(instance, attribute)}={value!r}: must be a finite number")


@attrs.define
class ComponentConfig:
    """A registered component: its registry ``name`` and keyword ``options``."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class ModelConfig:
    """The policy: a local Hugging Face causal LM folder, or ``smollm2`` (the embedded default).

    With ``lora`` the base model for the target is the same weights with the adapter disabled (no
    second copy); without it, a frozen copy. ``dtype='auto'``: bf16 autocast on CUDA, fp32 on CPU.
    """

    section: ClassVar[str] = "model"

    path: str = attrs.field(default="smollm2", validator=[_not_empty, _path])
    lora: bool = True
    lora_r: int = attrs.field(default=8, validator=_at_least(1))
    lora_alpha: float = attrs.field(default=16.0, validator=_finite)
    lora_dropout: float = attrs.field(default=0.0, validator=_at_least(0.0))
    lora_targets: list[str] = attrs.field(factory=lambda: ["q_proj", "v_proj"])
    dtype: str = attrs.field(
        default="auto", validator=_one_of("auto", "float32", "bfloat16", "float64")
    )
    gradient_checkpointing: bool = False
    # Positions per chunk of the output layer in the log-prob passes (never [B, T, V] logits);
    # 0 = the model's full logits (the plain path).
    logp_chunk_size: int = attrs.field(default=1024, validator=_at_least(0))


@attrs.define
class DataConfig:
    """Data sets of prompts: JSONL, parquet, JSON or CSV files, ``save_to_disk`` folders, or bundled
    set names; ``question_field`` and ``answer_field`` name their columns (eval sets need answers)."""

    section: ClassVar[str] = "data"

    train: str = attrs.field(default="factual_train", validator=[_not_empty, _path])
    eval: str = attrs.field(default="factual_eval", validator=_path)
    question_field: str = attrs.field(default="question", validator=_not_empty)
    answer_field: str = attrs.field(default="answers", validator=_not_empty)
    max_prompt_tokens: int = attrs.field(default=256, validator=_count(1))
    eval_max_questions: int = attrs.field(default=0, validator=_count(0))  # 0 = all


@attrs.define
class SamplingConfig:
    """How rollouts are drawn: sampler component, G samples per prompt, sampling parameters."""

    section: ClassVar[str] = "sampling"

    sampler: str = "hf"
    samples_per_prompt: int = attrs.field(default=8, validator=_count(1))
    temperature: float = attrs.field(default=1.0, validator=_at_least(1e-6))
    top_p: float = attrs.field(default=1.0, validator=_positive_fraction)
    # Min-p truncation: drop tokens below min_p × the most likely token's probability (0 = off).
    min_p: float = attrs.field(default=0.0, validator=_fraction_below_one)
    max_new_tokens: int = attrs.field(default=24, validator=_count(1))
    sampler_options: dict[str, Any] = attrs.field(factory=dict)
    # A server sampler draws the next step's rollouts while the trainer scores and updates on this
    # step's: rollouts one update stale (staleness 1), for objectives valid off-policy only.
    async_rollouts: bool = False


@attrs.define
class TrainConfig:
    """The loop: steps of (sample → score → ``updates_per_batch`` passes of minibatch updates)."""

    section: ClassVar[str] = "train"

    steps: int = attrs.field(default=40, validator=_at_least(1))
    prompts_per_step: int = attrs.field(default=4, validator=_count(1))
    updates_per_batch: int = attrs.field(default=1, validator=_count(1))
    minibatch_size: int = attrs.field(default=0, validator=_count(0))  # 0 = the whole batch
    # In (0, 1]: an Adam-type step moves each weight by about lr, so lr > 1 moves every weight by
    # more than 1 per step and diverges any language model.
    lr: float = attrs.field(default=1e-4, validator=_open_closed(0.0, MAX_LR))
    # In (0, 10]: log Z is one number per prompt (or a small head); the shipped configs use <= 0.1.
    logz_lr: float = attrs.field(default=1e-2, validator=_open_closed(0.0, MAX_LOGZ_LR))
    # Before the first update, shift log Z so the first batch's mean residual is zero (TB-style
    # residuals are log Z + c). Saves the many steps a small log Z learning rate would need.
    logz_warm_start: bool = True
    weight_decay: float = attrs.field(default=0.0, validator=_at_least(0.0))
    grad_clip: float = attrs.field(default=1.0, validator=_at_least(0.0))  # 0 = off
    seed: int = 0
    device: str = attrs.field(default="auto", validator=_one_of("auto", "cpu", "cuda"))
    eval_every: int = attrs.field(default=0, validator=_at_least(0))  # 0 = only before/after
    eval_samples: int = attrs.field(default=8, validator=_count(1))
    save_every: int = attrs.field(default=0, validator=_at_least(0))  # 0 = only at the end
    out_dir: str = attrs.field(default="runs/default", validator=[_not_empty, _path])
    resume: bool = True
    threads: int = attrs.field(default=0, validator=_at_least(0))  # 0 = torch's default
    # Under torchrun with several processes: DDP (replicated weights, averaged gradients) or FSDP2
    # (weights, gradients and optimiser state sharded across ranks).
    parallel: str = attrs.field(default="ddp", validator=_one_of("ddp", "fsdp2"))


@attrs.define
class RunConfig:
    """Everything one ``gfnlm train`` run needs."""

    model: ModelConfig = attrs.field(factory=ModelConfig)
    # Options default to the component class's own defaults (alpha_power: α=4), so that choosing
    # another component in a file never inherits options meant for the default one.
    target: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("alpha_power"))
    objective: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("la_tb"))
    logz: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("scalar"))
    # What the data means: prompt format, answer grading, the rewards and metrics it offers.
    task: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("factual"))
    sampling: SamplingConfig = attrs.field(factory=SamplingConfig)
    # Off-policy training (gfnlm.exploration): the distribution the sampler draws each token from,
    # and stored trajectories mixed into each batch. Both off by default (on-policy).
    exploration: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("none"))
    replay: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("none"))
    data: DataConfig = attrs.field(factory=DataConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    # Modules imported before the run is composed, so the components they register can be named
    # above (the same as gfnlm train --import MODULE).
    imports: list[str] = attrs.field(factory=list)


def _describe_error(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    first_line = str(error).splitlines()[0]
    return f"{key}: {first_line}" if key else first_line


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated into a :class:`RunConfig`."""
    layers = [OmegaConf.structured(RunConfig)]
    if path is not None:
        path = Path(path)
        layers.append(_load_yaml(path))
    layers.append(_overrides_layer(list(overrides or [])))
    try:
        merged = OmegaConf.merge(*layers[:-1])
        _drop_options_of_replaced_components(merged, layers[-1])
        merged = OmegaConf.merge(merged, layers[-1])
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe_error(error)) from None
    assert isinstance(config, RunConfig)
    check_batch_size(config)
    return config


def check_batch_size(config: RunConfig) -> None:
    """A step's batch, ``train.prompts_per_step × sampling.samples_per_prompt`` responses, stays
    within :data:`MAX_COUNT` (each factor alone may be within it and their product not)."""
    prompts, samples = config.train.prompts_per_step, config.sampling.samples_per_prompt
    if prompts * samples > MAX_COUNT:
        raise ConfigError(
            f"train.prompts_per_step={prompts} × sampling.samples_per_prompt="
            f"{samples} = {prompts * samples:_} responses per step: must be <= "
            f"{MAX_COUNT:_}"
        )


def _overrides_layer(overrides: list[str]) -> Any:
    """``key=value`` overrides as an OmegaConf mapping. Values are YAML, so one with braces or
    ``: `` (a template ``{question} ...``) is a mapping or a YAML error unless quoted: the error
    is one line naming the override and the quoting that makes it a string."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {quoted(item)}: expected key=value, e.g. train.steps=20")
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as error:
            key, _, value = item.partition("=")
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            example = f"{key}='\"{shortened(value, 40)}\"'"
            raise ConfigError(
                f"override {quoted(item)}: the value is not valid YAML ({problem}); "
                f"quote it to make it a string, e.g. {example} in the shell"
            ) from None
    return OmegaConf.from_dotlist(overrides)


def _load_yaml(path: Path) -> Any:
    """The config file as an OmegaConf mapping; a missing, unreadable or non-mapping file is one line."""
    if path.is_dir():
        raise ConfigError(f"config={str(path)!r}: is a directory, expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"config={str(path)!r}: no such file")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config={str(path)!r}: not valid YAML{where} ({problem})") from None
    except (OSError, UnicodeDecodeError, OmegaConfBaseException) as error:
        raise ConfigError(
            f"config={str(path)!r}: cannot read it ({str(error).splitlines()[0]})"
        ) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            f"config={str(path)!r}: must be a mapping of sections (model:, train:, ...), "
            f"got a {type(loaded).__name__.removesuffix('Config').lower()}"
        )
    return loaded


def _drop_options_of_replaced_components(merged: Any, overrides: Any) -> None:
    """``objective.name=subtb`` on the command line starts from subtb's own defaults (plus any
    ``objective.options.*`` overrides): the file's options were meant for the component it named."""
    for section in ("target", "objective", "logz", "task", "exploration", "replay"):
        given = overrides.get(section) or {}
        if "name" in given and given["name"] != merged[section]["name"]:
            merged[section]["options"] = {}


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (saved with each run; loadable by :func:`load_config`)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
