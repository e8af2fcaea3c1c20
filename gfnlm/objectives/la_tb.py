"""Length-aware trajectory balance (LA-TB), the PowerFlow objective (the PowerFlow paper;
formulas restated in the docs' Concepts page).

The partition function is reparameterised as ``Z_φ(q, y) = Z'_φ(q)^{|y|}`` and the log-mismatch is
divided by ``|y|``:

.. math::

    \\mathcal{L} = w \\cdot \\Big(\\log Z'_\\phi(q) + \\tfrac{1}{|y|}\\log\\pi_\\theta(y|q)
                   - \\tfrac{1}{|y|}\\log R(q,y)\\Big)^2,
    \\qquad w = \\mathrm{sg}\\big[\\mathrm{clip}\\big(\\tfrac{\\pi_\\theta(y|q)}{\\pi_{old}(y|q)},
                1-\\epsilon_{low}, 1+\\epsilon_{high}\\big)\\big]

(for α-power, ``log R/|y| = α·[(1/|y|)·log p_base + ψ]``). ``w`` is a detached, clipped
sequence-level importance ratio against the behaviour policy ("clip-higher": ε_high > ε_low), which
makes several minibatch updates per rollout batch safe. It reads ``behaviour_logp`` as the exact
sampling probability, so it requires a sampler that provides ``exact_behaviour_logp``.

Off-policy: valid on any trajectories (``off_policy = "any"``). The residual is zero on every
response at the fixed point, so trajectories from an exploration policy or a replay buffer leave the
fixed point unchanged; ``w`` is taken against the probability each was sampled with (an
exploration policy's exact probability, a replayed trajectory's original sampler).

Fixed point: not ``R`` itself but the length-tilted ``π*(y|q) = R(q,y)·exp(−λ*·|y|)``, where λ*
is the root of ``Σ_y R(q,y)·exp(−λ|y|) = 1`` and ``log Z'`` converges to λ*. For α > 1, λ* < 0
(favours longer responses, countering TB's collapse); for α < 1, λ* > 0. Among distributions with
the same expected length it is the KL-closest to ``R``. ``|y|`` counts EOS and is clamped at 1.

``log_z_source='group_mean'`` replaces the learned ``log Z'(q)`` by the detached VarGrad estimate
``−mean_{group(q)}[(log π − log R)/|y|]`` over the responses to the same prompt (same fixed point;
no per-prompt bias from a log Z shared by prompts whose λ* differ).
"""

from types import MappingProxyType

import attrs
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import ObjectiveOutput, PolicyEval, Rollouts, TargetScores
from gfnlm.contracts.validators import at_least
from gfnlm.objectives.base import (
    ON_POLICY,
    SWEEP_REPLAY,
    LogZSource,
    PenalisedObjective,
    component_choice,
    group_mean_log_z,
    log_z_source_field,
    residual_metrics,
    safe_lengths,
)
from gfnlm.objectives.fixed_points import FixedPoint, length_tilt


@register("objective", "la_tb")
@attrs.frozen
class LengthAwareTB(PenalisedObjective):
    """PowerFlow's LA-TB with a per-token ``log Z'(q)`` and a clipped importance weight."""

    eps_low: float = option(
        0.2,
        "clip-higher lower bound: the importance weight is clipped to [1 − eps_low, 1 + eps_high]",
        converter=float,
        validator=at_least(0),
    )
    eps_high: float = option(
        0.28,
        "clip-higher upper bound (ε_high > ε_low keeps several minibatch updates per batch safe)",
        converter=float,
        validator=at_least(0),
    )
    log_z_source: LogZSource = log_z_source_field()
    # Its residual is zero on every trajectory at the fixed point, so any behaviour policy and
    # replayed trajectories leave the fixed point unchanged; w weighs by the behaviour probability.
    off_policy = "any"
    # benchmarks/behaviour_ladder.py, 48 settings: with a learned log Z', every rung below
    # tempered T = 1.5 + replay misses a sharp α = 4 setting (47/48); T = 1.5 reaches all 48.
    # With the group-mean log Z' on-policy already reaches all 48 (worst TV 0.030), and so does
    # on-policy with a learned one toward the 18 flattening targets (worst 0.036).
    recommended_exploration = component_choice("tempered", temperature=1.5)
    recommended_replay = SWEEP_REPLAY
    recommended_when = MappingProxyType(
        {
            ("log_z_source", "group_mean"): (ON_POLICY, ON_POLICY),
            ("target", "flattening"): (ON_POLICY, ON_POLICY),
        }
    )

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        """Exact behaviour log-probs (for ``w``) and a learned log Z component, unless
        ``log_z_source='group_mean'``."""
        learned = frozenset({"log_z"}) if self.log_z_source == "learned" else frozenset()
        return frozenset({"exact_behaviour_logp"}) | learned

    def fixed_point(
        self, log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]
    ) -> FixedPoint:
        """The length tilt ``R·exp(−λ*|y|)``; log Z' (learned, or the group-mean estimate) → λ*."""
        return length_tilt(log_reward, lengths)  # learned or estimated (group_mean), log Z' → λ*

    @property
    def min_samples_per_prompt(self) -> int:
        """``group_mean`` estimates log Z from the group: one response gives a zero residual."""
        return 2 if self.log_z_source == "group_mean" else 1

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        length = safe_lengths(rollouts, target.log_reward)
        policy_logp = policy.sequence_logp(rollouts.response_mask)
        partial = (policy_logp - target.log_reward) / length
        if self.log_z_source == "group_mean":
            log_z = group_mean_log_z(partial, rollouts.group)
        assert log_z is not None
        residual = log_z + partial
        weight, clipped = self.importance_weight(policy_logp, rollouts)
        loss = (weight * self.penalise(residual)).mean()
        metrics = residual_metrics(residual) | {
            "iw_mean": float(weight.mean()),
            "iw_min": float(weight.min()),
            "iw_max": float(weight.max()),
            "iw_clip_frac": float(clipped.float().mean()),
        }
        if self.log_z_source == "group_mean":
            metrics["log_z"] = float(log_z.mean())
        return ObjectiveOutput(loss=loss, residual=residual.detach(), metrics=metrics)

    def importance_weight(self, policy_logp: Tensor, rollouts: Rollouts) -> tuple[Tensor, Tensor]:
        """``sg[clip(π/π_old, 1−ε_low, 1+ε_high)]`` and which entries were clipped."""
        behaviour_logp = (rollouts.behaviour_logp * rollouts.response_mask).sum(-1)
        # Clamp in log space first: a long response's raw ratio can overflow exp().
        log_ratio = (policy_logp.detach() - behaviour_logp).clamp(-20.0, 20.0)
        ratio = log_ratio.exp()
        weight = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
        return weight, weight != ratio
