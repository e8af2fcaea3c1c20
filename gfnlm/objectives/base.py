"""The Objective interface and the pieces GFlowNet losses share.

An objective is a pure function of (Rollouts, PolicyEval, TargetScores, log Z) → scalar loss and
metrics. It knows nothing about models, samplers or files.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import attrs
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from gfnlm.contracts.registry import option
from gfnlm.contracts.types import ObjectiveOutput, PolicyEval, Rollouts, TargetScores
from gfnlm.contracts.validators import greater_than, one_of
from gfnlm.objectives.fixed_points import FixedPoint

Penalty = Literal["squared", "huber"]
PENALTIES: tuple[Penalty, ...] = ("squared", "huber")
LogZSource = Literal["learned", "group_mean"]
# Which trajectories an objective's loss is valid on (see Objective.off_policy).
OffPolicy = Literal["any", "importance_weighted", "on_policy"]


class Objective:
    """Base class. ``requires`` names capabilities the run must provide (checked when composed).

    ``off_policy`` states which trajectories the loss is valid on, which decides whether
    exploration and replay (:mod:`gfnlm.exploration`) may feed it:

    * ``"any"``: a balance residual, zero on every trajectory at the fixed point, so the fixed point
      is the same for any full-support behaviour policy and for replayed trajectories (TB family).
    * ``"importance_weighted"``: a policy gradient that corrects for the behaviour policy with
      ``behaviour_logp`` (GRPO's ratio): valid under exploration, whose probability is exact, but
      not on replayed trajectories, whose reward-prioritised selection has no tractable probability.
    * ``"on_policy"`` (the default for a new objective): only the policy's own samples.

    :meth:`fixed_point` states the distribution the loss converges to (``None``: none known).

    ``recommended_exploration`` and ``recommended_replay`` (each a :func:`component_choice`, as a
    config's ``exploration:`` / ``replay:`` section names it) are the least off-policy behaviour
    with which the exact sweep (``benchmarks/exact_sweep.py``) found the loss within TV 0.05 of
    its fixed point on every setting, trying in this order: on-policy, replay alone, ``tempered``
    + replay, ``uniform_mix`` + replay. Less off-policy comes first because on a real model
    exploration has a cost the tabular sweep cannot show (a tempered or uniform draw over 49k
    tokens is mostly text no answer starts with; docs: Benchmarks, The default run). ``None``: no
    recommendation. ``recommended_when`` maps a condition under which the answer differs to its
    ``(exploration, replay)``, the first condition met deciding: ``(option, value)``, an option
    value of the objective, or ``("target", regime)``, the target's
    :attr:`~gfnlm.targets.base.Target.regime` (``sharpening``: α > 1; ``flattening``: α < 1),
    each found by the same ladder on the sweep's settings of that regime
    (``benchmarks/behaviour_ladder.py``). A config's ``exploration`` / ``replay`` named ``auto``
    takes the choice; a run that departs from it says so in one line
    (:func:`gfnlm.exploration.departure_note`, printed when the run starts).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    off_policy: ClassVar[OffPolicy] = "on_policy"
    recommended_exploration: ClassVar[Mapping[str, Any] | None] = None
    recommended_replay: ClassVar[Mapping[str, Any] | None] = None
    recommended_when: ClassVar[Mapping[tuple[str, Any], tuple[Mapping[str, Any], ...]]] = (
        MappingProxyType({})
    )

    def fixed_point(
        self, log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]
    ) -> FixedPoint | None:
        """The distribution this objective converges to over every response ``y`` of one prompt,
        given the target's ``log R(y)`` and ``|y|`` (EOS counts), and where its learned log Z goes;
        ``None`` when it targets no particular distribution. Used by the exact checker."""
        return None

    @property
    def min_samples_per_prompt(self) -> int:
        """Responses per prompt the loss needs: objectives built on group statistics need 2 (with
        one, every residual or advantage is exactly zero and nothing is learned)."""
        return 1

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        """The loss to minimise on this (mini)batch; subclasses implement this."""
        raise NotImplementedError


def component_choice(name: str, **options: Any) -> Mapping[str, Any]:
    """A component as a config section names it, ``{"name": name, "options": {...}}``, read-only
    (it is shared by every instance of the class that declares it)."""
    return MappingProxyType({"name": name, "options": MappingProxyType(dict(options))})


ON_POLICY = component_choice("none")  # no exploration, and no replay
# The replay of the exact sweep's explore modes: a quarter of each prompt's batch again, drawn from
# its best responses so far.
SWEEP_REPLAY = component_choice("reward_prioritised", ratio=0.25)


def regression_penalty(residual: Tensor, kind: Penalty = "squared", delta: float = 1.0) -> Tensor:
    """Elementwise penalty of a residual: ``r²`` (default) or Huber (``2·huber_δ(r)``, so the two
    agree for |r| ≤ δ)."""
    if kind == "squared":
        return residual.pow(2)
    if kind == "huber":
        return 2.0 * F.huber_loss(
            residual, torch.zeros_like(residual), reduction="none", delta=delta
        )
    raise ValueError(f"penalty={kind!r}: must be 'squared' or 'huber'")


def penalty_field(**field_kwargs: Any) -> Penalty:
    """The ``penalty`` option (default squared), checked to be ``squared`` or ``huber``; declared
    once by :class:`PenalisedObjective`, and usable on its own by an objective that is not one."""
    return option(
        "squared",
        "penalty of a residual r: 'squared' (r²) or 'huber' (2·Huber_δ(r))",
        validator=one_of("squared", "huber"),
        **field_kwargs,
    )


def huber_delta_field(**field_kwargs: Any) -> float:
    """The ``huber_delta`` option (default 1.0), checked to be a finite number > 0."""
    return option(
        1.0,
        "δ of the Huber penalty (with penalty='huber'), a finite number > 0",
        validator=greater_than(0),
        **field_kwargs,
    )


@attrs.frozen
class PenalisedObjective(Objective):
    """An objective that regresses a residual to zero. It owns the ``penalty`` and
    ``huber_delta`` options, so every GFlowNet loss takes them under the same names, with the same
    help and checks, and :meth:`penalise` applies them. Both are keyword-only: a subclass's own
    options keep their positions and may be required. Subclass it with ``@attrs.frozen``."""

    penalty: Penalty = penalty_field(kw_only=True)
    huber_delta: float = huber_delta_field(kw_only=True)

    def penalise(self, residual: Tensor) -> Tensor:
        """The elementwise penalty of ``residual`` under this objective's ``penalty`` and
        ``huber_delta`` (:func:`regression_penalty`)."""
        return regression_penalty(residual, self.penalty, self.huber_delta)


def safe_lengths(rollouts: Rollouts, like: Tensor) -> Tensor:
    """``|y|`` as a float, clamped at 1 so a zero-length response cannot divide by zero."""
    return rollouts.lengths.to(like.dtype).clamp_min(1.0)


def masked_mean(values: Tensor, mask: Bool[Tensor, "..."]) -> Tensor:
    """Mean over ``mask``; 0 (with gradient path kept) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def one_step_residuals(
    rollouts: Rollouts, policy: PolicyEval, target: TargetScores
) -> tuple[Float[Tensor, "B T"], Bool[Tensor, "B T"]]:
    """Detailed-balance residuals of the "every prefix can terminate" parameterisation.

    With ``log F(s_i) = log R(s_i ⊤) − log π(⊤|s_i)``::

        δ_i = log F(s_i) + log π(y_{i+1}|s_i) − log F(s_{i+1}),   i = 0..n−1

    A truncated response terminates by force at ``s_n``: there ``log π(⊤|s_n) := 0`` and the prefix
    reward is the sequence reward (see
    :func:`gfnlm.targets.alpha_power.prefix_terminal_log_rewards`).
    Returns ``δ`` ``[B, T]`` (entry i is the transition s_i → s_{i+1}) and its validity mask.
    """
    assert target.prefix_log_reward is not None  # guaranteed by the composition check
    steps = rollouts.num_steps
    positions = torch.arange(policy.eos_logp.shape[1], device=steps.device)
    forced = (~rollouts.ended_with_eos)[:, None] & (positions[None, :] == steps[:, None])
    eos_logp = torch.where(forced, torch.zeros_like(policy.eos_logp), policy.eos_logp)
    log_flow = target.prefix_log_reward - eos_logp  # [B, T+1]
    delta = log_flow[:, :-1] + policy.token_logp - log_flow[:, 1:]
    valid = positions[None, :-1] < steps[:, None]
    return torch.where(valid, delta, torch.zeros_like(delta)), valid


def residual_metrics(residual: Tensor) -> dict[str, float]:
    """Mean and variance of the per-sample residual (variance is 0 for a single sample)."""
    detached = residual.detach()
    variance = detached.var(unbiased=False) if detached.numel() > 1 else detached.new_zeros(())
    return {"residual_mean": float(detached.mean()), "residual_var": float(variance)}


def log_z_source_field() -> LogZSource:
    """The ``log_z_source`` option of the objectives that use log Z: ``learned`` (the run's log Z
    component) or ``group_mean`` (estimated from each prompt's group, see
    :func:`group_mean_log_z`)."""
    return attrs.field(
        default="learned",
        validator=attrs.validators.in_(("learned", "group_mean")),
        metadata={
            "help": "log Z from the run's log Z component ('learned') or each prompt's group "
            "('group_mean', VarGrad)"
        },
    )


def group_mean_log_z(partial_residual: Float[Tensor, " B"], group: Tensor) -> Float[Tensor, " B"]:
    """The VarGrad estimate of log Z (Richter et al., 2020): minus the mean, over the responses
    to the same prompt (``group``), of the residual without log Z; detached.

    With it, each residual is centred within its group, and the squared loss's gradient equals
    the gradient of the group's residual variance (up to a constant), which vanishes at the same
    fixed point as with a learned log Z. It needs no parameters and cannot be biased by prompts
    whose partition functions differ, but needs several responses per prompt in a (mini)batch:
    a response alone in its group gets residual 0 and no gradient.
    """
    return -group_mean(partial_residual.detach(), group)


def group_mean(
    values: Float[Tensor, " B"], group: Tensor, correction: int = 0
) -> Float[Tensor, " B"]:
    """Each row's group mean of ``values`` (groups = equal ids in ``group``); with ``correction=1``
    the sum is divided by ``n − 1`` instead of ``n`` (at least 1), for unbiased variances."""
    _, index = torch.unique(group, return_inverse=True)
    sums = torch.zeros(int(index.max()) + 1, dtype=values.dtype, device=values.device).index_add_(
        0, index, values
    )
    counts = torch.bincount(index, minlength=sums.shape[0]).to(values.dtype)
    return (sums / (counts - correction).clamp_min(1.0))[index]
