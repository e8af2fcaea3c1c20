"""Reward target for the RL baselines: ``log R(q, y) = r(q, y)``, with no reference model.

``r`` is a callable ``Rollouts -> Tensor[B]`` or an import path ``"package.module:function"``.
With a policy-gradient objective (``grpo``) ``log_reward`` is read as the reward itself; as a
GFlowNet target it is the Gibbs distribution ``exp(r)``. The base model is not needed, so the
trainer skips the base forward pass.
"""

from typing import Any

import attrs

from gfnlm.contracts.registry import register
from gfnlm.contracts.types import Rollouts, SequenceLogProbs, TargetScores
from gfnlm.targets.base import Target, task_field
from gfnlm.targets.reward_tilted import RewardFn, call_reward, resolve_callable


@register("target", "reward")
@attrs.frozen
class RewardTarget(Target):
    """``exp(r(q, y))``: the reward function alone."""

    reward: RewardFn = attrs.field(
        converter=resolve_callable,
        metadata={
            "help": "r(q, y): a callable Rollouts → Tensor[B], "
            "or 'package.module:function' (required)"
        },
    )
    task: Any = task_field()
    needs_base = False

    def score(self, rollouts: Rollouts, base: SequenceLogProbs | None) -> TargetScores:
        reward = call_reward(self.reward, rollouts, self.task).to(rollouts.behaviour_logp)
        if reward.shape != (rollouts.batch_size,):
            raise ValueError(
                f"reward returned shape {tuple(reward.shape)}, expected ({rollouts.batch_size},)"
            )
        return TargetScores(log_reward=reward, metrics={"target/reward_mean": float(reward.mean())})


@register("target", "uniform")
@attrs.frozen
class UniformTarget(Target):
    """``R = 1``: the uniform distribution over responses as a GFlowNet target, and no reward for
    objectives that make their own (``grpo`` with ``reward: neg_entropy`` or ``self_certainty``)."""

    needs_base = False

    def score(self, rollouts: Rollouts, base: SequenceLogProbs | None) -> TargetScores:
        return TargetScores(log_reward=rollouts.behaviour_logp.new_zeros(rollouts.batch_size))
