"""Token-normalised TB ("TB-token"), an ablation baseline of the PowerFlow paper (not the method).

The sequence sum in the *target only* is replaced by a per-token mean; ``log Z`` stays prompt-level:

.. math::

    \\mathcal{L} = \\big(\\log Z_\\phi(q) + \\textstyle\\sum_t \\log \\pi_\\theta(y_t|y_{<t},q)
                   - \\tfrac{1}{|y|}\\log R(q,y)\\big)^2

For α-power, ``log R/|y| = α·mean_t log p_base(y_t|…) + α·ψ``. The published text does not give
the exact form; this is the one implemented. Fixed point: ``π(y|q) ∝ exp(log R(q,y)/|y|)``, which
rewards responses of high *average* base log-prob, so it drifts toward long repetitions of likely
tokens (it trains well at first, then degrades). ``|y|`` counts EOS and is clamped at 1. Valid
off-policy like TB (``off_policy = "any"``).
"""

from types import MappingProxyType

import attrs
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts.registry import register
from gfnlm.contracts.types import ObjectiveOutput, PolicyEval, Rollouts, TargetScores
from gfnlm.objectives.base import (
    SWEEP_REPLAY,
    PenalisedObjective,
    component_choice,
    residual_metrics,
    safe_lengths,
)
from gfnlm.objectives.fixed_points import FixedPoint, per_token_target


@register("objective", "tb_token")
@attrs.frozen
class TokenNormalisedTB(PenalisedObjective):
    """TB against the per-token-mean target ``exp(log R/|y|)``."""

    requires = frozenset({"log_z"})
    off_policy = "any"
    # The least off-policy rung of benchmarks/behaviour_ladder.py reaching all 48 settings: its
    # fixed point exp(log R/|y|) is nearly flat on long responses, and only uniform_mix ε = 0.5 +
    # replay covers the deep prefixes enough (ε = 0.25: 47/48; with the checker's lr at 0.3: at
    # 0.1 the longest flat settings stay above TV 0.05 under every exploration). Toward the 30
    # sharpening targets ε = 0.25 suffices (worst 0.032).
    recommended_exploration = component_choice("uniform_mix", epsilon=0.5)
    recommended_replay = SWEEP_REPLAY
    recommended_when = MappingProxyType(
        {("target", "sharpening"): (component_choice("uniform_mix", epsilon=0.25), SWEEP_REPLAY)}
    )

    def fixed_point(
        self, log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]
    ) -> FixedPoint:
        """``∝ exp(log R/|y|)``; log Z → its log-normaliser."""
        return per_token_target(log_reward, lengths)

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        assert log_z is not None
        per_token_reward = target.log_reward / safe_lengths(rollouts, target.log_reward)
        residual = log_z + policy.sequence_logp(rollouts.response_mask) - per_token_reward
        loss = self.penalise(residual).mean()
        return ObjectiveOutput(
            loss=loss, residual=residual.detach(), metrics=residual_metrics(residual)
        )
