"""A mode-collapsed instruct model, made by self-distillation on its own low-temperature answers.

Alignment tends to collapse a model onto a few typical answers. The same happens, on a small
scale, when a model is fine-tuned on its own *sharpened* outputs: the answers it gives at a low
temperature become what it gives at T = 1. :func:`self_distill` does exactly that:

1. sample ``samples`` answers to each training prompt from the model at ``temperature`` (< 1);
2. fine-tune the model (LoRA on the attention projections, or all weights) on them by maximum
   likelihood: the mean negative log-likelihood per response token (EOS included where an answer
   ended), ``epochs`` passes over the answers in minibatches of ``batch_prompts`` prompts'
   answers, AdamW at ``lr``.

:func:`collapse_model` runs it from a model folder and writes the result as an ordinary Hugging Face
folder (the adapter merged in), which ``model.path=FOLDER`` and ``gfnlm eval --model FOLDER`` load.
``benchmarks/creativity.py --collapsed`` builds one from SmolLM2-135M-Instruct on the creative
training prompts and compares decoding strategies and PowerFlow α < 1 on it.
"""

import json
import random
from pathlib import Path

import attrs
import torch
from tqdm.auto import tqdm

from gfnlm.contracts.errors import ConfigError


def _check_options(instance: "CollapseOptions", attribute: attrs.Attribute, value: float) -> None:
    allowed = {"temperature": (0.0, 1.0, "in (0, 1)"), "lr": (0.0, None, "> 0")}
    low, high, text = allowed.get(attribute.name, (0.0, None, ">= 1"))
    bad = value <= low if attribute.name in allowed else value < 1
    if bad or (high is not None and value >= high):
        raise ConfigError(f"collapse {attribute.name}={value!r}: must be {text}")


@attrs.frozen
class CollapseOptions:
    """The self-distillation recipe (see the module docstring)."""

    temperature: float = attrs.field(default=0.3, validator=_check_options)
    samples: int = attrs.field(default=4, validator=_check_options)
    max_new_tokens: int = attrs.field(default=48, validator=_check_options)
    epochs: int = attrs.field(default=2, validator=_check_options)
    batch_prompts: int = attrs.field(default=2, validator=_check_options)
    lr: float = attrs.field(default=1e-3, validator=_check_options)
    lora: bool = True  # False: full fine-tuning
    seed: int = 0

    def key(self) -> str:
        """A short name of these options (for a cache folder)."""
        return (
            f"t{self.temperature:g}-k{self.samples}-m{self.max_new_tokens}-e{self.epochs}-b{self.batch_prompts}"
            f"-lr{self.lr:g}{'' if self.lora else '-full'}-s{self.seed}"
        )


def self_distill(policy, prompts, options: CollapseOptions, progress: bool = True) -> list[float]:
    """Fine-tune ``policy`` (trainable parameters only) on its own answers to ``prompts`` sampled at
    ``options.temperature``; returns the loss of every update (mean NLL per response token)."""
    from gfnlm.samplers.hf import HFSampler

    torch.manual_seed(options.seed)
    sampler = HFSampler(temperature=options.temperature, max_new_tokens=options.max_new_tokens)
    sampler.setup(policy)
    starts = range(0, len(prompts), options.batch_prompts)
    answers = [
        sampler.sample(
            prompts.batch(list(range(s, min(s + options.batch_prompts, len(prompts))))),
            options.samples,
        )
        for s in tqdm(starts, desc="low-temperature answers", unit="batch", disable=not progress)
    ]
    optimiser = torch.optim.AdamW(policy.trainable_parameters(), lr=options.lr, weight_decay=0.0)
    order, losses = random.Random(options.seed), []
    bar = tqdm(
        total=options.epochs * len(answers),
        desc="self-distillation",
        unit="step",
        disable=not progress,
    )
    for _ in range(options.epochs):
        for batch in order.sample(answers, len(answers)):
            mask = batch.response_mask
            loss = -(policy.evaluate(batch).token_logp * mask).sum() / mask.sum()
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), 1.0)
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(nll=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def collapse_model(
    model_path: str,
    prompt_file: str,
    out: Path,
    options: CollapseOptions,
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    progress: bool = True,
) -> Path:
    """Self-distil the model at ``model_path`` (a folder or ``smollm2``) on the prompts of
    ``prompt_file`` (a file or a bundled set, e.g. ``creative_train``), merge the LoRA adapter (if
    any) and write a Hugging Face folder to ``out`` (with ``collapse.json``: the options and the
    losses). An existing finished folder is returned as it is."""
    from gfnlm.contracts.registry import build
    from gfnlm.models.loading import resolve_model_path
    from gfnlm.tasks.prompts import PromptSet
    from gfnlm.training.config import ModelConfig
    from gfnlm.training.export import write_atomically, write_merged
    from gfnlm.training.policy import CausalLMPolicy

    if (out / "collapse.json").is_file():
        return out
    model_dir = resolve_model_path(model_path)
    config = ModelConfig(path=str(model_dir), lora=options.lora, lora_targets=list(lora_targets))
    policy = CausalLMPolicy.from_config(config, model_dir, torch.device("cpu"), keep_base=False)
    prompts = PromptSet.load(
        prompt_file, "--prompts", policy.tokenizer, 256, task=build("task", "creative")
    )
    losses = self_distill(policy, prompts, options, progress=progress)

    def write(folder: Path) -> None:
        write_merged(policy.model, model_dir, folder, torch.float32)
        (folder / "collapse.json").write_text(
            json.dumps(
                {
                    "from": str(model_path),
                    "prompts": prompt_file,
                    **attrs.asdict(options),
                    "losses": losses,
                },
                indent=1,
            )
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, "--out", write)
    return out
