"""Declarative run configuration: attrs classes, loaded from YAML and overridden from the CLI.

Loading, merging and ``a.b.c=value`` overrides are OmegaConf's (typed structured configs built from
these attrs classes, so unknown keys and wrongly-typed values are rejected with the key's full
name); we write no parser. The resolved config is saved with each run as ``config.yaml``.

Example::

    cfg = load_config(
        "configs/powerflow_reasoning.yaml", ["train.steps=20", "target.options.alpha=2"]
    )
"""

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gfnlm.contracts.errors import ConfigError, quoted, shortened
from gfnlm.contracts.paths import check_path_length
from gfnlm.contracts.registry import object_path
from gfnlm.contracts.validators import (
    MAX_COUNT,
    at_least,
    count,
    field_name,
    finite,
    in_range,
    not_empty,
    one_of,
    type_checked,
)
from gfnlm.tasks.records import data_label, in_memory_label

# Learning-rate bounds (see TrainConfig.lr and logz_lr).
MAX_LR, MAX_LOGZ_LR = 1.0, 10.0
# The sections of a run that each choose a registered component (a ComponentConfig).
COMPONENT_SECTIONS = ("target", "objective", "logz", "task", "exploration", "replay")


def _path(instance: object, attribute: attrs.Attribute, value: str) -> None:
    """A file or folder path the file system can hold (``''`` is left to the field's own rule)."""
    check_path_length(str(value), field_name(instance, attribute))


def setting(default: Any = attrs.NOTHING, *, help: str, **field_kwargs: Any) -> Any:
    """A run-config field with a one-line description (attrs field metadata ``help``), as
    :func:`gfnlm.contracts.registry.option` is for component options; the configuration reference
    shows it with the field's type and default. ``help`` states the bounds a validator enforces.
    A ``components`` entry in ``metadata`` names the registry kind the field chooses from."""
    metadata = {**field_kwargs.pop("metadata", {}), "help": help}
    return attrs.field(default=default, metadata=metadata, **field_kwargs)


@attrs.define(field_transformer=type_checked)
class ComponentConfig:
    """A registered component: its registry ``name`` and keyword ``options``."""

    name: str = setting(help="the registered name of the component")
    options: dict[str, Any] = setting(
        factory=dict,
        help="its keyword options; one left out takes the component's own default, or, for one "
        "the component declares as a run fact (`table`'s `num_prompts`, `mlp`'s `hidden_size`), "
        "the value the data or the model gives. Naming another component on the command line "
        "drops the file's options",
    )


def _component(value: Any, instance: object, attribute: attrs.Attribute) -> ComponentConfig:
    """A component section from a registered name (``"tb"``), a mapping ``{"name": "tb",
    "options": {...}}`` or a :class:`ComponentConfig`; errors name the section
    (``objective.name``)."""
    section = attribute.name
    if isinstance(value, ComponentConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{section}={quoted(value)}: must be a registered name (str), a dict "
            f"{{'name': ..., 'options': {{...}}}} or a ComponentConfig, got {type(value).__name__}"
        )
    unknown = sorted(set(value) - {"name", "options"}, key=str)
    if unknown or "name" not in value:
        problem = f"unknown key {unknown[0]!r}" if unknown else "no 'name'"
        raise ConfigError(
            f"{section}={quoted(dict(value))}: {problem}; a component is "
            f"{{'name': ..., 'options': {{...}}}}"
        )
    try:
        options = value.get("options", {})
        # a read-only mapping (a class's recommended component) becomes a dict of its own
        options = dict(options) if isinstance(options, Mapping) else options
        return ComponentConfig(value["name"], options)
    except ConfigError as error:  # "name=5: ..." from ComponentConfig's own checks
        raise ConfigError(f"{section}.{error}") from None


def component_field(default: str, help: str) -> Any:
    """A :class:`RunConfig` field choosing a registered component, ``default`` with its own
    default options."""
    return setting(
        factory=lambda: ComponentConfig(default),
        help=help,
        converter=attrs.Converter(_component, takes_self=True, takes_field=True),
    )


def _section(value: Any, instance: object, attribute: attrs.Attribute) -> Any:
    """A config section from its class or a mapping of its fields (``train={"steps": 2}``)."""
    cls = attribute.type
    if isinstance(value, cls) or not isinstance(value, Mapping):
        return value  # another type is refused by the field's type check, by name
    known = [f.name for f in attrs.fields(cls)]
    unknown = [key for key in value if key not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{attribute.name}.{unknown[0]}: no such field; fields: {', '.join(known)}{hint}"
        )
    return cls(**value)


def section_field(cls: type, help: str) -> Any:
    """A :class:`RunConfig` field holding a section (``train``), by default its defaults."""
    return setting(
        factory=cls,
        help=help,
        converter=attrs.Converter(_section, takes_self=True, takes_field=True),
    )


def _prompts(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    """A path or a bundled set's name (checked as a path), or in Python the data itself: a
    ``datasets.Dataset`` or a non-empty list of dicts."""
    name = field_name(instance, attribute)
    if isinstance(value, str):
        _path(instance, attribute, value)
        return
    if in_memory_label(value) is None:
        raise ConfigError(
            f"{name}={quoted(value)}: must be a path (str), a datasets.Dataset or a list of "
            f"dicts, got {type(value).__name__}"
        )
    if not len(value):
        raise ConfigError(f"{name}: the data set given in memory has no rows")


def _model_folder(value: Any, instance: object, attribute: attrs.Attribute) -> Any:
    """A loaded transformers model given as ``model.path`` becomes the folder it is saved into
    (:func:`~gfnlm.models.loading.save_model_object`); anything else is left to the checks."""
    from gfnlm.models.loading import is_model_object, save_model_object  # torch: only when used

    if is_model_object(value):
        return str(save_model_object(value, field_name(instance, attribute)))
    return value


@attrs.define(field_transformer=type_checked)
class ModelConfig:
    """The policy: a local Hugging Face causal LM folder, or ``smollm2`` (the embedded default).

    With ``lora`` the base model for the target is the same weights with the adapter disabled (no
    second copy); without it, a frozen copy. ``dtype='auto'``: bf16 autocast on CUDA, fp32 on CPU.
    """

    section: ClassVar[str] = "model"

    path: str = setting(
        "smollm2",
        help="a local Hugging Face causal-LM folder, or `smollm2` (SmolLM2-135M-Instruct, "
        "converted once into the user cache); nothing is downloaded; not empty. In Python also "
        "a loaded transformers model: saved once into the user cache (keyed by its weights) with "
        "the tokenizer of the folder it was loaded from, and that folder is the path",
        validator=[not_empty, _path],
        converter=attrs.Converter(_model_folder, takes_self=True, takes_field=True),
    )
    lora: bool = setting(
        True,
        help="train a LoRA adapter; the base model for the target is then the same weights with "
        "the adapter disabled (no second copy). `false`: full fine-tuning, with a frozen copy "
        "as the base",
    )
    lora_r: int = setting(8, help="LoRA rank, >= 1", validator=at_least(1))
    lora_alpha: float = setting(
        16.0,
        help="LoRA scaling numerator, a finite number: the update is scaled by "
        "`lora_alpha / lora_r`",
        validator=finite,
    )
    lora_dropout: float = setting(
        0.0, help="dropout probability on the LoRA input, >= 0", validator=at_least(0.0)
    )
    lora_targets: list[str] = setting(
        factory=lambda: ["q_proj", "v_proj"], help="names of the modules that get an adapter"
    )
    dtype: str = setting(
        "auto",
        help="`auto`: bf16 autocast on CUDA, fp32 on CPU; or `float32`, `bfloat16`, `float64` "
        "(exactness checks)",
        validator=one_of("auto", "float32", "bfloat16", "float64"),
    )
    gradient_checkpointing: bool = setting(
        False, help="recompute activations in the backward pass (less memory, more time)"
    )
    # 1,024: on a 24-layer model (docs/benchmarks/memory.md) checkpointing costs 10-17 % more
    # update time at every length, and saves 20 % of the update's memory at 256 tokens but 46-48 %
    # from 1,024 on, where long batches start to be limited by memory rather than time.
    gradient_checkpointing_from: int = setting(
        1024,
        help="with `gradient_checkpointing` off, the packed update pass still recomputes "
        "activations once a batch's longest response reaches this many tokens, >= 0; 0 = never",
        validator=at_least(0),
    )
    logp_pass: str = setting(
        "auto",
        help="layout of the log-prob passes: `packed` (each prompt once, its samples' responses "
        "behind it in padding-free rows, one pass with one shared attention mask), `buckets` "
        "(a prompt KV-cache pass, then up to 4 response passes of similar lengths), or `auto` "
        "(packed on CUDA, buckets on CPU)",
        validator=one_of("auto", "packed", "buckets"),
    )
    logp_chunk_size: int = setting(
        1024,
        help="positions per chunk of the output layer in the log-prob passes (update, base "
        "scoring), >= 0: the `[B, T, V]` logits are never held, and each chunk's but the last "
        "are recomputed in the backward pass; 0 = the model's full logits (the plain path, kept "
        "for comparison)",
        validator=at_least(0),
    )


@attrs.define(field_transformer=type_checked)
class DataConfig:
    """Data sets of prompts: JSONL, parquet, JSON or CSV files, ``save_to_disk`` folders, or
    bundled set names; ``question_field`` and ``answer_field`` name their columns (eval sets need
    answers)."""

    section: ClassVar[str] = "data"

    # In Python these also take the data itself (the `objects` metadata: _prompts checks it).
    train: str = setting(
        "factual_train",
        help="training prompts, not empty (their answers travel with them and are read only by "
        "the verifier reward); in Python also a `datasets.Dataset` or a list of dicts",
        validator=[not_empty, _prompts],
        metadata={"objects": True},
    )
    eval: str = setting(
        "factual_eval",
        help="held-out prompts with answers, evaluated before and after training; `''` for none; "
        "in Python also a `datasets.Dataset` or a list of dicts",
        validator=_prompts,
        metadata={"objects": True},
    )
    question_field: str = setting(
        "question",
        help="the column holding the question (`prompt` is accepted when this is left at "
        "`question`)",
        validator=not_empty,
    )
    answer_field: str = setting(
        "answers",
        help="the column holding the answers (`answer` is accepted when this is left at `answers`)",
        validator=not_empty,
    )
    max_prompt_tokens: int = setting(
        256,
        help="longest prompt in tokens, 1 to 1,000,000; a longer one is a one-line error naming "
        "the file and line",
        validator=count(1),
    )
    eval_max_questions: int = setting(
        0,
        help="evaluate only the first N questions, 0 to 1,000,000 (0 = all)",
        validator=count(0),
    )


@attrs.define(field_transformer=type_checked)
class SamplingConfig:
    """How rollouts are drawn: sampler component, G samples per prompt, sampling parameters."""

    section: ClassVar[str] = "sampling"

    sampler: str = setting(
        "hf",
        help="the registered sampler that draws the rollouts",
        metadata={"components": "sampler"},
    )
    samples_per_prompt: int = setting(
        8,
        help="G, the responses drawn per prompt, 1 to 1,000,000 (with `train.prompts_per_step`, "
        "at most 1,000,000 responses a step)",
        validator=count(1),
    )
    temperature: float = setting(
        1.0,
        help="sampling temperature, >= 1e-6 (the behaviour log-probs are those of the tempered "
        "distribution)",
        validator=at_least(1e-6),
    )
    top_p: float = setting(
        1.0,
        help="nucleus sampling threshold, in (0, 1] (1 = off)",
        validator=in_range(0.0, 1.0, low_open=True),
    )
    min_p: float = setting(
        0.0,
        help="min-p truncation, in [0, 1): drop tokens less likely than `min_p` × the most likely "
        "token's probability, after temperature and top-p (0 = off)",
        validator=in_range(0.0, 1.0, high_open=True),
    )
    max_new_tokens: int = setting(
        24,
        help="longest response in tokens, 1 to 1,000,000 (the longest prompt plus this must fit "
        "the model's context, `max_position_embeddings`); a response that reaches it without "
        "EOS is truncated",
        validator=count(1),
    )
    sampler_options: dict[str, Any] = setting(
        factory=dict,
        help="the sampler's keyword options besides the fields above, e.g. `hf`'s `batch_size` "
        "and `engine`, or a server sampler's `url` or `launch`",
        metadata={"components": "sampler"},
    )
    async_rollouts: bool = setting(
        False,
        help="a server sampler (`sglang`, `vllm`) draws the next step's rollouts while the "
        "trainer scores and updates on this step's: rollouts one update stale (staleness 1) "
        "from the second step on, so refused for `on_policy` objectives and for the samplers "
        "that are not servers",
    )


@attrs.define(field_transformer=type_checked)
class TrainConfig:
    """The loop: steps of (sample → score → ``updates_per_batch`` passes of minibatch updates)."""

    section: ClassVar[str] = "train"

    steps: int = setting(
        40,
        help="optimisation steps (rollout batches) of the run, >= 1; raise it to continue a "
        "finished run",
        validator=at_least(1),
    )
    prompts_per_step: int = setting(
        4,
        help="prompts drawn per step, 1 to 1,000,000 (the batch has `prompts_per_step × "
        "samples_per_prompt` responses, at most 1,000,000)",
        validator=count(1),
    )
    updates_per_batch: int = setting(
        1,
        help="passes over each rollout batch, 1 to 1,000,000 (LA-TB's importance weights keep "
        "extra passes safe)",
        validator=count(1),
    )
    minibatch_size: int = setting(
        0,
        help="responses per optimiser step, 0 to 1,000,000 (0 = the whole batch)",
        validator=count(0),
    )
    lr: float = setting(
        1e-4,
        help="the policy's learning rate (AdamW), in (0, 1]: an Adam-type step moves every weight "
        "by about `lr`, so a rate above 1 moves each by more than 1 per step and diverges any "
        "language model",
        validator=in_range(0.0, MAX_LR, low_open=True),
    )
    logz_lr: float = setting(
        1e-2,
        help="log Z's learning rate, in (0, 10] (log Z is one number per prompt or a small head; "
        "the shipped configs use at most 0.1)",
        validator=in_range(0.0, MAX_LOGZ_LR, low_open=True),
    )
    logz_warm_start: bool = setting(
        True,
        help="before the first update, shift log Z so the first batch's mean residual is zero "
        "(TB-style residuals are log Z + c): saves the many steps a small `logz_lr` would need",
    )
    weight_decay: float = setting(
        0.0,
        help="AdamW weight decay of the policy, >= 0 (log Z has none)",
        validator=at_least(0.0),
    )
    grad_clip: float = setting(
        1.0, help="largest gradient norm, >= 0 (0 = no clipping)", validator=at_least(0.0)
    )
    seed: int = setting(0, help="seeds Python, NumPy, torch and the prompt order")
    device: str = setting(
        "auto",
        help="`auto` (CUDA when available), `cpu` or `cuda`",
        validator=one_of("auto", "cpu", "cuda"),
    )
    eval_every: int = setting(
        0,
        help="also evaluate every N steps, >= 0 (0 = only before and after training)",
        validator=at_least(0),
    )
    eval_samples: int = setting(
        8,
        help="k, the samples per question at T = 1 for avg@k, pass@k and majority@k, "
        "1 to 1,000,000",
        validator=count(1),
    )
    save_every: int = setting(
        0,
        help="also checkpoint every N steps, >= 0 (0 = only at the end)",
        validator=at_least(0),
    )
    out_dir: str = setting(
        "runs/default",
        help="the run directory, not empty: `config.yaml`, `checkpoints/`, `eval/`, `tb/`",
        validator=[not_empty, _path],
    )
    resume: bool = setting(
        True,
        help="continue the run in `out_dir` if it has checkpoints; `false` refuses to touch an "
        "existing run",
    )
    threads: int = setting(
        0, help="CPU threads for torch, >= 0 (0 = torch's default)", validator=at_least(0)
    )
    parallel: str = setting(
        "ddp",
        help="under `torchrun` with several processes: `ddp` (replicated weights, averaged "
        "gradients) or `fsdp2` (weights, gradients and optimiser state sharded across ranks)",
        validator=one_of("ddp", "fsdp2"),
    )


@attrs.define(field_transformer=type_checked)
class RunConfig:
    """Everything one ``gfnlm train`` run needs."""

    model: ModelConfig = section_field(ModelConfig, help="the policy model and its adapter")
    # The component sections name no options: each component starts from its own defaults
    # (alpha_power: α=4), so choosing another one in a file never inherits the default's options.
    target: ComponentConfig = component_field(
        "alpha_power",
        help="the target distribution the policy learns to sample",
    )
    objective: ComponentConfig = component_field("la_tb", help="the training objective")
    logz: ComponentConfig = component_field(
        "scalar",
        help="the log Z parameterisation, for the objectives that require one",
    )
    task: ComponentConfig = component_field(
        "factual",
        help="what the data means: prompt format, answer grading, the rewards and metrics it "
        "offers",
    )
    sampling: SamplingConfig = section_field(SamplingConfig, help="how rollouts are drawn")
    exploration: ComponentConfig = component_field(
        "none",
        help="off-policy exploration: the distribution the sampler draws each token from "
        "(`none`: the policy's, on-policy; `auto`: the objective's recommendation toward the "
        "target)",
    )
    replay: ComponentConfig = component_field(
        "none",
        help="stored trajectories mixed into each batch (`none`: no replay; `auto`: the "
        "objective's recommendation toward the target)",
    )
    data: DataConfig = section_field(DataConfig, help="the training and evaluation prompts")
    train: TrainConfig = section_field(TrainConfig, help="the training loop")
    imports: list[str] = setting(
        factory=list,
        help="modules imported before the run is composed, so that the components they register "
        "can be named in the sections above (as `gfnlm train --import MODULE`)",
    )


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
    """The config file as an OmegaConf mapping; a missing, unreadable or non-mapping file is one
    line."""
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
    for section in COMPONENT_SECTIONS:
        given = overrides.get(section) or {}
        if "name" in given and given["name"] != merged[section]["name"]:
            merged[section]["options"] = {}


def saved_form(config: RunConfig) -> RunConfig:
    """``config`` as its ``config.yaml`` holds it: a function or class in a component's options
    by its import path ``"package.module:qualname"`` (which the component imports back), and data
    given in memory by its label (:func:`~gfnlm.tasks.records.in_memory_label`; the data itself
    is not saved). Called when a run is composed, so that what cannot be saved (a lambda, a
    function defined inside another, an object that is no YAML value) is a one-line
    :class:`ConfigError` before the model loads, not a failure when the config is written."""
    components = {
        name: attrs.evolve(
            getattr(config, name),
            options=_saved_value(getattr(config, name).options, f"{name}.options"),
        )
        for name in COMPONENT_SECTIONS
    }
    sampling = attrs.evolve(
        config.sampling,
        sampler_options=_saved_value(config.sampling.sampler_options, "sampling.sampler_options"),
    )
    data = attrs.evolve(
        config.data,
        train=data_label(config.data.train),
        eval=data_label(config.data.eval),
    )
    return attrs.evolve(config, sampling=sampling, data=data, **components)


def _saved_value(value: Any, field: str) -> Any:
    """An option's value as YAML can hold it (see :func:`saved_form`)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {key: _saved_value(item, f"{field}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_saved_value(item, f"{field}[{i}]") for i, item in enumerate(value)]
    if callable(value):
        path = object_path(value)
        if path is None:
            raise ConfigError(
                f"{field}={quoted(value)}: a run saves its config, and this function has no "
                "import path (a lambda, or one defined inside another function); define it at "
                "the top level of a module"
            )
        return path
    raise ConfigError(
        f"{field}={quoted(value)}: a run saves its config, which holds numbers, strings, "
        f"lists, mappings and importable functions; got {type(value).__name__}"
    )


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (saved with each run; loadable by :func:`load_config`), in its
    :func:`saved_form`."""
    return OmegaConf.to_yaml(OmegaConf.structured(saved_form(config)))
