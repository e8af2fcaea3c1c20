"""Composing a run: every registered component built from the config and checked against the
others, before any model loads (a bad combination is one line, not a failure at step 1)."""

import json
from pathlib import Path
from typing import Any

import attrs
import torch

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import build, check_composition, import_components, lookup
from gfnlm.exploration import (
    AUTO,
    auto_note,
    check_off_policy,
    departure_note,
    recommended_section,
)
from gfnlm.tasks.records import data_label
from gfnlm.training.config import RunConfig, TrainConfig, saved_form
from gfnlm.training.policy import CausalLMPolicy


@attrs.define
class Components:
    """The registered components a run is composed of."""

    target: Any
    objective: Any
    logz: Any | None
    sampler: Any
    task: Any
    exploration: Any = None
    replay: Any = None
    # The note that the exploration / replay depart from what the objective recommends, if so.
    departure: str | None = None
    # What an exploration / replay named ``auto`` became, if one was.
    auto_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Role → component, as :func:`gfnlm.contracts.registry.check_composition` takes it."""
        roles = {
            "target": self.target,
            "objective": self.objective,
            "logz": self.logz,
            "sampler": self.sampler,
            "task": self.task,
        }
        # exploration/replay take part only when they do something (``none`` needs and offers
        # nothing)
        if self.exploration is not None and self.exploration.changes_sampling:
            roles["exploration"] = self.exploration
        if self.replay is not None and self.replay.active:
            roles["replay"] = self.replay
        return roles

    @property
    def policy_features(self) -> dict[str, bool]:
        """What the policy must compute because the objective requires it (constructor arguments
        of :class:`~gfnlm.training.policy.CausalLMPolicy`)."""
        requires = self.objective.requires
        return {name: name in requires for name in ("entropy_grad", "token_statistics")}

    @property
    def base_needs_eos_logp(self) -> bool:
        """Whether the base pass must return the EOS log-prob at every prefix: only when the target
        turns it into prefix rewards and the objective uses them (SubTB, DB; not TB or LA-TB)."""
        return bool(self.target.needs_eos_logp and "prefix_rewards" in self.objective.requires)


def _import_and_check_saveable(config: RunConfig) -> None:
    """Import the config's modules, then check that the config can be saved with the run (a
    reward given as a lambda cannot): a one-line error now, not once the model has loaded."""
    import_components(config.imports, "imports")
    saved_form(config)


def build_task(config: RunConfig) -> Any:
    """The run's task (cheap: no model), checked against what the data settings ask of it."""
    _import_and_check_saveable(config)
    task = build("task", config.task.name, config.task.options)
    if config.data.eval and task.metrics != "accuracy":
        raise ConfigError(
            f"data.eval={data_label(config.data.eval)!r}: task {config.task.name!r} has no "
            "graded answers; set data.eval='' and evaluate with gfnlm eval --task "
            f"{config.task.name} --run RUN"
        )
    return task


def compose(
    config: RunConfig, hidden_size: int, num_train_prompts: int, task: Any = None
) -> Components:
    """Build every component from the config and check they fit together (cheap: no model). The
    task is given to the components that grade or check responses (``bind_task``)."""
    _import_and_check_saveable(config)
    task = task if task is not None else build_task(config)
    target = build("target", config.target.name, config.target.options)
    objective = build("objective", config.objective.name, config.objective.options)
    needed = objective.min_samples_per_prompt
    if config.sampling.samples_per_prompt < needed:
        raise ConfigError(
            f"sampling.samples_per_prompt={config.sampling.samples_per_prompt}: objective "
            f"{config.objective.name!r} with these options needs >= {needed} (it uses group "
            "statistics; with one response per prompt its loss is exactly zero)"
        )
    lookup("logz", config.logz.name)  # a typo is an error even when this objective uses no log Z
    logz = None
    if "log_z" in objective.requires:
        facts = {"num_train_prompts": num_train_prompts, "hidden_size": hidden_size}
        logz = build("logz", config.logz.name, config.logz.options, run_facts=facts)
    sampling = config.sampling
    sampler = build(
        "sampler",
        sampling.sampler,
        {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens,
            **sampling.sampler_options,
            # only when set: a sampler without min-p support then rejects it by name
            **({"min_p": sampling.min_p} if sampling.min_p else {}),
        },
    )
    exploration = build("exploration", *_section(config, "exploration", objective, target))
    replay = build("replay", *_section(config, "replay", objective, target))
    components = Components(target, objective, logz, sampler, task, exploration, replay)
    for component in (target, objective, sampler):
        if hasattr(component, "bind_task"):
            component.bind_task(task)
    check_composition(components.as_dict(), provided_by_run=CausalLMPolicy.provides)
    check_off_policy(objective, exploration, replay, sampling.async_rollouts)
    # one line, not an error: printed by the trainer once every check has passed
    components.departure = departure_note(objective, exploration, replay, target)
    if AUTO in (config.exploration.name, config.replay.name):
        components.auto_note = auto_note(objective, target)
    if sampling.async_rollouts and not sampler.overlaps_training:
        raise ConfigError(
            f"sampling.async_rollouts=true with sampling.sampler={sampling.sampler!r}: "
            "this sampler draws with the policy being trained, in the trainer's process, so it "
            "cannot sample while the trainer updates; allowed: a server sampler (sglang, vllm) or "
            "sampling.async_rollouts=false"
        )
    if sampler.scores_base and components.base_needs_eos_logp and not sampler.scores_eos_logp:
        raise ConfigError(
            f"sampling.sampler_options.scores_base=true: objective {config.objective.name!r} uses "
            f"prefix rewards, which need the base model's EOS log-prob at every prefix, and the "
            f"{sampling.sampler!r} sampler's server does not return it; allowed: scores_base=false "
            "(the trainer scores the base model) or an objective without prefix rewards (tb, la_tb)"
        )
    if exploration.changes_sampling:
        sampler.explore_with(exploration)
    return components


def _section(
    config: RunConfig, kind: str, objective: Any, target: Any
) -> tuple[str, dict[str, Any]]:
    """The ``exploration`` or ``replay`` section's name and options; ``auto``: what the objective
    recommends toward the target."""
    section = getattr(config, kind)
    if section.name != AUTO:
        return section.name, section.options
    if section.options:
        raise ConfigError(
            f"{kind}.options={section.options!r}: {kind}.name={AUTO!r} takes the objective's "
            "recommendation and no options; allowed: no options, or name the component"
        )
    return recommended_section(kind, objective, target)


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model folder's ``config.json`` (its hidden size and context length, read without the
    weights)."""
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"model.path={str(model_dir)!r}: unreadable config.json ({type(error).__name__})"
        ) from None


def load_prompts(config: RunConfig, model_dir: Path, task: Any) -> tuple[Any, Any]:
    """The run's training prompts and held-out prompts (``None`` without ``data.eval``), formatted
    by ``task`` and tokenised (cheap: the tokenizer, no model), checked against the model's
    context with ``sampling.max_new_tokens`` (the positions past it have no trained embedding)."""
    from gfnlm.models.loading import check_context, load_tokenizer
    from gfnlm.tasks.prompts import PromptSet

    data, tokenizer = config.data, load_tokenizer(model_dir)
    columns = {
        "task": task,
        "question_field": data.question_field,
        "answer_field": data.answer_field,
    }
    train = PromptSet.load(data.train, "data.train", tokenizer, data.max_prompt_tokens, **columns)
    held_out = None
    if data.eval:
        held_out = PromptSet.load(
            data.eval,
            "data.eval",
            tokenizer,
            data.max_prompt_tokens,
            require_answers=True,
            **columns,
        )
        if data.eval_max_questions:
            held_out = held_out.head(data.eval_max_questions)
    longest, new = max(len(ids) for ids in train.token_ids), config.sampling.max_new_tokens
    check_context(model_dir, longest, new, f"sampling.max_new_tokens={new}")
    return train, held_out


def make_optimizer(policy: CausalLMPolicy, logz: Any, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable weights (``train.lr``, ``train.weight_decay``) and log Z's
    parameters, if any (``train.logz_lr``, no weight decay)."""
    groups = [
        {
            "params": policy.trainable_parameters(),
            "lr": train.lr,
            "weight_decay": train.weight_decay,
        }
    ]
    if logz is not None:
        groups.append({"params": list(logz.parameters()), "lr": train.logz_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)
