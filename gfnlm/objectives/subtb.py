"""Sub-trajectory balance, "every prefix can terminate" form (Madan et al. 2023, "Learning GFlowNets
from partial episodes"; for LMs Hu et al. 2023, "Amortizing intractable inference in LLMs").

With ``log F(s_i) = log R(s_i ⊤) − log π(⊤|s_i)`` the state flow is eliminated and the one-step
residual is

.. math::

    \\delta_i = \\log R(s_i\\top) + \\log\\pi(y_{i+1}|s_i) + \\log\\pi(\\top|s_{i+1})
               - \\log R(s_{i+1}\\top) - \\log\\pi(\\top|s_i)

The loss averages ``(Σ_{k=i}^{j−1} δ_k)²`` over all pairs ``0 ≤ i < j ≤ n`` of visited states with
weight ``λ^{j−i−1}`` (a sub-trajectory of ``j − i`` steps; one step weighs 1), normalised by the sum
of weights, per response, then over responses with at least one transition. No ``log Z`` is
needed. Fixed point: ``π(s ⊤) ∝ R(s ⊤)`` for every prefix, so the policy samples the normalised
target (``p_base^α`` for α-power). Needs prefix rewards. Valid off-policy (``off_policy = "any"``):
the residuals vanish at the fixed point on any trajectory, so exploration and replayed trajectories
need no importance weight.
"""

from types import MappingProxyType

import attrs
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import ObjectiveOutput, PolicyEval, Rollouts, TargetScores
from gfnlm.objectives.base import (
    ON_POLICY,
    SWEEP_REPLAY,
    PenalisedObjective,
    masked_mean,
    one_step_residuals,
    residual_metrics,
)
from gfnlm.objectives.fixed_points import FixedPoint, normalised_target


@register("objective", "subtb")
@attrs.frozen
class SubTrajectoryBalance(PenalisedObjective):
    """λ-weighted SubTB over all sub-trajectories of each response."""

    requires = frozenset({"prefix_rewards"})
    off_policy = "any"
    # benchmarks/behaviour_ladder.py, 48 settings: on-policy SubTB loses responses of sharp bases
    # (α = 3-4) that stop being sampled (46/48); replaying its best responses alone keeps them
    # (48/48, worst TV 0.035). Toward the 18 flattening targets on-policy suffices (worst 0.036).
    recommended_exploration = ON_POLICY
    recommended_replay = SWEEP_REPLAY
    recommended_when = MappingProxyType({("target", "flattening"): (ON_POLICY, ON_POLICY)})
    lamda: float = option(
        1.0,
        "λ: sub-trajectory s_i → s_j has weight λ^(j−i−1), one step weighs 1 (1 = all equal)",
        converter=float,
    )

    def fixed_point(
        self, log_reward: Float[Tensor, " N"], lengths: Float[Tensor, " N"]
    ) -> FixedPoint:
        """The normalised target (no log Z)."""
        return normalised_target(log_reward, with_log_z=False)

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        delta, _ = one_step_residuals(rollouts, policy, target)
        cumulative = F.pad(delta.cumsum(-1), (1, 0))  # C_i = Σ_{k<i} δ_k, i = 0..T
        # Residual of sub-trajectory s_i → s_j is C_j − C_i: all pairs at once, [B, T+1, T+1].
        pair_residual = cumulative[:, None, :] - cumulative[:, :, None]
        positions = torch.arange(cumulative.shape[1], device=delta.device)
        i, j = positions[:, None], positions[None, :]
        steps = rollouts.num_steps[:, None, None]
        valid = (i < j) & (j <= steps)
        gap = (j - i - 1).clamp_min(0).to(delta.dtype)
        weight = torch.where(valid, self.lamda**gap, torch.zeros_like(pair_residual))
        per_pair = self.penalise(pair_residual)
        per_sample = (weight * per_pair).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1e-12)
        has_transition = rollouts.num_steps > 0
        loss = masked_mean(per_sample, has_transition)
        return ObjectiveOutput(
            loss=loss, residual=per_sample.detach(), metrics=residual_metrics(per_sample)
        )
