"""Off-policy training: exploration policies and a reward-prioritised replay buffer.

On-policy GFlowNet training can drop a mode for good: once the policy stops sampling a response,
no residual on it is ever seen again. The answer of the GFlowNet-LLM work (Hu et al. 2023,
"Amortizing intractable inference in large language models"; also torchgfn) is to train on
trajectories the policy would not sample itself:

* **exploration** components change the distribution each token is drawn from, and report the
  exact log-probability of what was drawn (``behaviour_logp``):

  - ``tempered``: ``π(·|s)^{1/T}`` renormalised, ``T >= 1`` (flatter than the policy);
  - ``uniform_mix``: ``(1 − ε)·π(·|s) + ε·uniform`` over the vocabulary;
  - ``none``: the policy itself (on-policy).

  ``uniform_mix`` needs a sampler that applies a per-token transform (the ``behaviour_transform``
  capability: the ``hf`` sampler's ``cached`` engine, and the exact checker's tabular sampler).
  ``tempered`` is a temperature: at ``top_p = 1`` and ``min_p = 0``, ``π^{1/T}`` of the policy at
  temperature τ is the policy at temperature ``τ·T``, so it needs only ``tempered_sampling``, which
  the ``sglang`` and ``vllm`` samplers also provide there (their log-probs are of what they drew).
* **replay** components mix stored trajectories into each batch:

  - ``reward_prioritised``: per prompt, the ``capacity`` distinct responses of highest reward seen
    so far; each batch adds ``ratio × (fresh responses of the prompt)`` drawn from them with
    probability ``∝ R^priority`` (with replacement), to the prompt's group;
  - ``none``: no replay.

Which objectives may use them is stated by each objective's ``off_policy``
(:class:`~gfnlm.objectives.base.Objective`) and checked by :func:`check_off_policy` when a run is
composed: balance residuals (``"any"``: TB, SubTB, DB, TB-token, LA-TB) take both, a
policy gradient with an exact importance ratio (``"importance_weighted"``: GRPO) takes exploration
but not replay, an on-policy loss (``entropy_min``) neither.

Each GFlowNet objective also declares the least off-policy exploration and replay with which it
reached its fixed point on every setting of the exact sweep (``recommended_exploration`` /
``recommended_replay`` on :class:`~gfnlm.objectives.base.Objective`, and ``recommended_when`` where
an option or the target's regime changes them); ``auto`` in a config takes them
(:func:`recommended_section`), and :func:`departure_note` is the one line a run prints when it
departs from them (a note, not an error: a run may have its reasons).
"""

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import (
    RegistryError,
    build,
    component_name,
    names,
    option,
    register,
)
from gfnlm.contracts.types import Rollouts
from gfnlm.contracts.validators import at_least, in_range

# Replay's bounds: ``ratio`` multiplies the rows of every batch (a step's memory grows by that
# factor), so more than 10 replayed per fresh response is a typo, not a setting; ``capacity`` is a
# count of responses per prompt, bounded like the config's counts.
MAX_REPLAY_RATIO, MAX_REPLAY_CAPACITY = 10.0, 1_000_000


# ---------------------------------------------------------------------------------------------
# Exploration


class Exploration:
    """Maps the policy's next-token log-probs to those of the distribution actually sampled.

    ``behaviour_log_probs`` takes normalised log-probs ``[..., A]`` (after the sampler's temperature
    and top-p) and returns normalised log-probs of the same shape; the sampler draws from them and
    records the drawn token's entry as ``behaviour_logp``, so that stays the exact sampling
    probability. ``changes_sampling`` is false only for the identity (``none``).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"behaviour_transform"})
    provides: ClassVar[frozenset[str]] = frozenset()
    changes_sampling: ClassVar[bool] = True

    @property
    def temperature_factor(self) -> float | None:
        """The factor on the sampling temperature this exploration amounts to (before top-p and
        min-p), or ``None`` when it is not a temperature: what a sampler that draws its tokens
        itself (a server) can apply."""
        return None

    def behaviour_log_probs(
        self, log_probs: Float[Tensor, "*batch A"]
    ) -> Float[Tensor, "*batch A"]:
        """The sampled distribution's log-probs; subclasses implement this."""
        raise NotImplementedError


@register("exploration", "none")
@attrs.frozen
class NoExploration(Exploration):
    """On-policy: tokens are drawn from the policy itself."""

    requires = frozenset()
    changes_sampling = False

    def behaviour_log_probs(
        self, log_probs: Float[Tensor, "*batch A"]
    ) -> Float[Tensor, "*batch A"]:
        return log_probs


@register("exploration", "tempered")
@attrs.frozen
class TemperedExploration(Exploration):
    """``π(·|s)^{1/T}`` renormalised: a flatter policy that still prefers what π prefers. Applied
    after the sampler's top-p and min-p; with neither, it is sampling at the sampler's temperature
    times ``T``, which a server sampler does itself (``tempered_sampling``)."""

    requires = frozenset({"tempered_sampling"})

    temperature: float = option(
        2.0,
        "T >= 1 of the behaviour policy π^(1/T) (1 = on-policy)",
        converter=float,
        validator=at_least(1.0),
    )

    @property
    def temperature_factor(self) -> float:
        return self.temperature

    def behaviour_log_probs(
        self, log_probs: Float[Tensor, "*batch A"]
    ) -> Float[Tensor, "*batch A"]:
        return (log_probs / self.temperature).log_softmax(-1)


@register("exploration", "uniform_mix")
@attrs.frozen
class UniformMixExploration(Exploration):
    """``(1 − ε)·π(·|s) + ε/A``: every token keeps at least ``ε/A`` probability."""

    epsilon: float = option(
        0.1,
        "ε in (0, 1): the share of each token's draw taken uniformly",
        converter=float,
        validator=in_range(0.0, 1.0, low_open=True, high_open=True),
    )

    def behaviour_log_probs(
        self, log_probs: Float[Tensor, "*batch A"]
    ) -> Float[Tensor, "*batch A"]:
        uniform = math.log(self.epsilon / log_probs.shape[-1])
        return torch.logaddexp(
            log_probs + math.log1p(-self.epsilon), torch.full_like(log_probs, uniform)
        )


# ---------------------------------------------------------------------------------------------
# Replay


class Replay:
    """Mixes stored trajectories into each batch (``mix``) and stores the fresh ones (``add``)."""

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    active: ClassVar[bool] = True

    def mix(self, fresh: Any, generator: torch.Generator | None = None) -> Rollouts:
        """``fresh`` (a :class:`Rollouts`) followed by replayed rows; subclasses implement this."""
        raise NotImplementedError

    def add(self, rollouts: Rollouts, log_reward: Float[Tensor, " B"]) -> None:
        """Offer freshly sampled rollouts and their log-rewards to the buffer."""

    def metrics(self) -> dict[str, float]:
        """Scalars to log (buffer size, replayed share)."""
        return {}


@register("replay", "none")
@attrs.define
class NoReplay(Replay):
    """No replay: every batch is the sampler's."""

    active = False

    def mix(self, fresh: Any, generator: torch.Generator | None = None) -> Rollouts:
        return fresh


@register("replay", "reward_prioritised")
@attrs.define
class RewardPrioritisedReplay(Replay):
    """Per prompt, the ``capacity`` distinct responses of highest log-reward seen so far; each batch
    gets ``round(ratio × n)`` of them per prompt with ``n`` fresh responses, drawn with
    probability ``∝ exp(priority · log R)``. A replayed row keeps the ``behaviour_logp`` it was
    sampled with and joins the group of its prompt's fresh responses. The buffer lives in memory:
    a resumed run starts with an empty one."""

    capacity: int = option(
        64,
        "distinct responses kept per prompt (those of highest reward), "
        f"in [1, {MAX_REPLAY_CAPACITY:_}]",
        converter=int,
        validator=in_range(1, MAX_REPLAY_CAPACITY),
    )
    ratio: float = option(
        0.5,
        "replayed responses per fresh response of the same prompt, in "
        f"(0, {MAX_REPLAY_RATIO:g}]: the batch grows by this factor",
        converter=float,
        validator=in_range(0.0, MAX_REPLAY_RATIO, low_open=True),
    )
    priority: float = option(
        1.0,
        "β: a stored response is drawn with probability ∝ R^β (0 = uniformly)",
        converter=float,
        validator=at_least(0.0),
    )
    # every prompt's rows
    _stored: Rollouts | None = attrs.field(default=None, init=False, repr=False)
    _rewards: Tensor | None = attrs.field(default=None, init=False, repr=False)
    _last_replayed: float = attrs.field(default=0.0, init=False, repr=False)

    def stored(self, prompt: int) -> tuple[Rollouts | None, Tensor | None]:
        """The stored rollouts of ``prompt`` and their log-rewards, best first (``None`` if
        none)."""
        if self._stored is None:
            return None, None
        rows = (self._stored.prompt_index == prompt).nonzero().squeeze(1)
        return (self._stored.select(rows), self._rewards[rows]) if rows.numel() else (None, None)

    def mix(self, fresh: Any, generator: torch.Generator | None = None) -> Rollouts:
        if self._stored is None:
            self._last_replayed = 0.0
            return fresh
        stored_prompts = self._stored.prompt_index.cpu()
        picks, groups = [], []
        prompts, counts = torch.unique(fresh.prompt_index.cpu(), return_counts=True)
        for prompt, count in zip(prompts.tolist(), counts.tolist(), strict=True):
            rows = (stored_prompts == prompt).nonzero().squeeze(1)
            take = round(self.ratio * count)
            if not rows.numel() or take < 1:
                continue
            log_reward = self._rewards.cpu()[rows]
            weights = (self.priority * (log_reward - log_reward.max())).exp()
            picks.append(
                rows[torch.multinomial(weights, take, replacement=True, generator=generator)]
            )
            group = int(fresh.group[fresh.prompt_index == prompt][0])
            groups.append(torch.full((take,), group, dtype=torch.long))
        if not picks:
            self._last_replayed = 0.0
            return fresh
        device = self._stored.response_ids.device
        replayed = self._stored.select(torch.cat(picks).to(device))
        replayed = attrs.evolve(replayed, group=torch.cat(groups).to(device))
        self._last_replayed = replayed.batch_size / (replayed.batch_size + fresh.batch_size)
        return concat_rollouts([fresh, replayed])

    def add(self, rollouts: Rollouts, log_reward: Float[Tensor, " B"]) -> None:
        candidates, rewards = rollouts, log_reward.detach()
        # stored rows first: they win ties and keep their behaviour_logp
        if self._stored is not None:
            candidates = concat_rollouts([self._stored, rollouts])
            rewards = torch.cat([self._rewards, rewards])
        keep = _distinct_rows(candidates)
        # Best first within each prompt: sort by reward, then (stably) by prompt.
        keep = keep[rewards[keep].argsort(descending=True, stable=True)]
        keep = keep[candidates.prompt_index[keep].argsort(stable=True)]
        prompt = candidates.prompt_index[keep]
        # sorted: index of the prompt's first row
        first_of_prompt = torch.searchsorted(prompt, prompt)
        keep = keep[
            torch.arange(keep.numel(), device=keep.device) - first_of_prompt < self.capacity
        ]
        self._stored, self._rewards = candidates.select(keep), rewards[keep]

    def metrics(self) -> dict[str, float]:
        if self._stored is None:
            return {"replay/share": 0.0, "replay/stored_per_prompt": 0.0}
        prompts = torch.unique(self._stored.prompt_index).numel()
        return {
            "replay/share": self._last_replayed,
            "replay/stored_per_prompt": self._stored.batch_size / prompts,
        }


def _distinct_rows(rollouts: Rollouts) -> Tensor:
    """Indices of the first occurrence of each distinct (prompt, response) pair."""
    key = torch.cat(
        [
            rollouts.prompt_index[:, None],
            rollouts.lengths[:, None],
            torch.where(rollouts.response_mask, rollouts.response_ids, -1),
        ],
        1,
    )
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), key.shape[0], dtype=torch.long, device=key.device)
    first = first.scatter_reduce(
        0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin"
    )
    return first.sort().values


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    """The rows of ``parts`` in order, as one :class:`Rollouts`: responses right-padded and prompts
    left-padded to the widest (masked, id 0); texts and labels kept when every part has them; the
    first part's ``weight_version``."""
    if len(parts) == 1:
        return parts[0]
    response_width = max(p.response_ids.shape[1] for p in parts)
    prompt_width = max(p.prompt_ids.shape[1] for p in parts)

    def right(x: Tensor, value: float | bool) -> Tensor:
        return F.pad(x, (0, response_width - x.shape[1]), value=value)

    def left(x: Tensor, value: float | bool) -> Tensor:
        return F.pad(x, (prompt_width - x.shape[1], 0), value=value)

    def joined(name: str) -> tuple[Any, ...] | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else tuple(x for v in values for x in v)

    return Rollouts(
        prompt_ids=torch.cat([left(p.prompt_ids, 0) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, False) for p in parts]),
        response_ids=torch.cat([right(p.response_ids, 0) for p in parts]),
        response_mask=torch.cat([right(p.response_mask, False) for p in parts]),
        lengths=torch.cat([p.lengths for p in parts]),
        ended_with_eos=torch.cat([p.ended_with_eos for p in parts]),
        group=torch.cat([p.group for p in parts]),
        prompt_index=torch.cat([p.prompt_index for p in parts]),
        behaviour_logp=torch.cat([right(p.behaviour_logp, 0.0) for p in parts]),
        weight_version=parts[0].weight_version,
        response_text=joined("response_text"),
        prompt_text=joined("prompt_text"),
        labels=joined("labels"),
    )


# ---------------------------------------------------------------------------------------------
# Which objectives may train on what


def check_off_policy(
    objective: Any, exploration: Any = None, replay: Any = None, async_rollouts: bool = False
) -> None:
    """Refuse, in one line, an objective fed trajectories its loss is not valid on (see
    :attr:`Objective.off_policy <gfnlm.objectives.base.Objective.off_policy>`): explored, replayed,
    or (``async_rollouts``) drawn by the weights of one update before."""
    validity = getattr(objective, "off_policy", "on_policy")
    name = component_name(objective)
    if async_rollouts and validity == "on_policy":
        raise RegistryError(
            f"sampling.async_rollouts=true: objective {name!r} is valid on its own samples only "
            "(off_policy='on_policy'), and async rollouts come from the weights of one update "
            "before; allowed: sampling.async_rollouts=false, or an objective with off_policy "
            "'any' or 'importance_weighted'"
        )
    if (
        exploration is not None
        and getattr(exploration, "changes_sampling", True)
        and validity == "on_policy"
    ):
        label = component_name(exploration)
        raise RegistryError(
            f"exploration.name={label!r}: objective {name!r} is valid on its own samples only "
            "(off_policy='on_policy'); use exploration.name=none"
        )
    if replay is not None and getattr(replay, "active", True) and validity != "any":
        label = component_name(replay)
        raise RegistryError(
            f"replay.name={label!r}: objective {name!r} (off_policy={validity!r}) is not valid on "
            "replayed trajectories, whose reward-prioritised selection has no sampling "
            "probability; use replay.name=none"
        )


# ---------------------------------------------------------------------------------------------
# What each objective recommends


def describe_choice(exploration: Mapping[str, Any], replay: Mapping[str, Any]) -> str:
    """An exploration and a replay (each ``{"name", "options"}``, as a config names them) in words:
    ``on-policy``, or e.g. ``tempered (temperature=1.5) + reward_prioritised (ratio=0.25)``."""
    parts = [_describe(c) for c in (exploration, replay) if c["name"] != "none"]
    return " + ".join(parts) or "on-policy"


def _describe(choice: Mapping[str, Any]) -> str:
    options = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in choice["options"].items()
    )
    return f"{choice['name']} ({options})" if options else choice["name"]


Choice = tuple[Mapping[str, Any], Mapping[str, Any]]
# The key of a ``recommended_when`` entry that names the target's regime rather than an option.
TARGET_REGIME = "target"
AUTO = "auto"  # the exploration / replay name that takes the objective's recommendation


def recommended_choice(objective: Any, target: Any = None) -> Choice | None:
    """The exploration and replay ``objective`` declares, as config sections (a missing half is
    ``none``); ``None`` when it declares neither. The first ``recommended_when`` entry met
    decides: an option value of an instance, or the regime of ``target`` (``None``: unknown);
    otherwise the class's choice over every setting."""
    condition = _condition_met(objective, target)
    if condition is not None:
        exploration, replay = condition[1]
        return exploration, replay
    exploration = getattr(objective, "recommended_exploration", None)
    replay = getattr(objective, "recommended_replay", None)
    if exploration is None and replay is None:
        return None
    none = {"name": "none", "options": {}}
    return exploration or none, replay or none


def _condition_met(objective: Any, target: Any) -> tuple[str, Choice] | None:
    """The first ``recommended_when`` entry that ``objective`` (its options count only on an
    instance) and ``target`` meet, in words (``log_z_source=group_mean``, ``toward a sharpening
    target``) with its choice; ``None`` if none is met."""
    regime = getattr(target, "regime", None)
    instance = not isinstance(objective, type)
    for (name, value), choice in getattr(objective, "recommended_when", {}).items():
        if name == TARGET_REGIME and regime == value:
            return f"toward a {value} target", choice
        if name != TARGET_REGIME and instance and getattr(objective, name, None) == value:
            return f"{name}={value}", choice
    return None


def recommended_section(
    kind: str, objective: Any, target: Any = None
) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of the ``kind`` (``exploration`` or ``replay``) that ``objective``
    recommends toward ``target``: what ``auto`` stands for. A one-line :class:`ConfigError` when
    the objective recommends nothing (it has no fixed point to reach)."""
    choice = recommended_choice(objective, target)
    if choice is None:
        name = component_name(objective)
        raise ConfigError(
            f"{kind}.name={AUTO!r}: objective {name!r} recommends no exploration or replay (it "
            f"has no fixed point to reach); allowed: a registered {kind} "
            f"({', '.join(names(kind))})"
        )
    section = choice[0] if kind == "exploration" else choice[1]
    return section["name"], dict(section["options"])


def _as_choice(component: Any) -> dict[str, Any]:
    """A built exploration or replay (``None``: none) as a config section, every option given."""
    if component is None:
        return {"name": "none", "options": {}}
    name = component_name(component)
    fields = attrs.fields(type(component)) if attrs.has(type(component)) else ()
    return {"name": name, "options": {f.name: getattr(component, f.name) for f in fields if f.init}}


def departure_note(
    objective: Any, exploration: Any = None, replay: Any = None, target: Any = None
) -> str | None:
    """One line saying that the built ``exploration`` / ``replay`` (``None``: none) depart from
    what ``objective`` recommends toward ``target``, or ``None`` when they follow it or it
    recommends nothing."""
    recommended = recommended_choice(objective, target)
    if recommended is None:
        return None
    declared = [
        _as_choice(_build_choice(kind, choice))
        for kind, choice in zip(("exploration", "replay"), recommended, strict=True)
    ]
    used = [_as_choice(exploration), _as_choice(replay)]
    if used == declared:
        return None
    name = component_name(objective)
    condition = _condition_met(objective, target)
    where = f" ({condition[0]})" if condition else ""
    return (
        f"note: objective {name!r}{where} reached its fixed point on every exact sweep setting "
        f"with {describe_choice(*recommended)}; this run uses {describe_choice(*used)} "
        f"({AUTO!r} follows it; docs: Configuration, Exploration each objective recommends)"
    )


def auto_note(objective: Any, target: Any) -> str:
    """One line: what ``auto`` stands for in a run of ``objective`` toward ``target``."""
    regime = getattr(target, "regime", None)
    toward = f"toward a {regime} target" if regime else "toward this target"
    choice = describe_choice(*recommended_choice(objective, target))
    name = component_name(objective)
    return f"note: auto is {choice}, what objective {name!r} recommends {toward}"


def _build_choice(kind: str, choice: Mapping[str, Any]) -> Any:
    """The built component of a config section (``None`` for ``none``)."""
    if choice["name"] == "none":
        return None
    return build(kind, choice["name"], dict(choice["options"]))


__all__ = [
    "Exploration",
    "NoExploration",
    "NoReplay",
    "Replay",
    "RewardPrioritisedReplay",
    "TemperedExploration",
    "UniformMixExploration",
    "check_off_policy",
    "concat_rollouts",
    "departure_note",
    "describe_choice",
    "recommended_choice",
]
