"""Reward-tilted target: ``log R(q, y) = log p_ref(y|q) + β · r(q, y)``.

``r`` is any scorer of whole responses: a callable ``Rollouts -> Tensor[B]`` or an import path
``"package.module:function"`` naming one (so it can come from a config file). α-power is the special
case ``r = (α−1)·log p_ref``, β = 1. The reward is end-only, so no prefix rewards are defined: SubTB
and DB cannot be combined with this target (the run is rejected when composed).
"""

import inspect
from collections.abc import Callable
from typing import Any

import attrs
import torch

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import import_object, option, register
from gfnlm.contracts.types import Rollouts, SequenceLogProbs, TargetScores
from gfnlm.targets.base import Target, task_field

RewardFn = Callable[..., torch.Tensor]


def call_reward(reward: RewardFn, rollouts: Rollouts, task: Any) -> torch.Tensor:
    """``reward(rollouts)``, or ``reward(rollouts, task=task)`` for a reward function that takes the
    run's task (a verifier grades with it, majority voting compares its answers)."""
    if "task" in inspect.signature(reward).parameters:
        return reward(rollouts, task=task)
    return reward(rollouts)


def resolve_callable(spec: Any) -> RewardFn:
    """A callable, or one named by ``"package.module:function"`` (imported with the working
    directory on ``sys.path``, as ``--import`` imports). A config that holds the callable itself
    saves it under that name (:func:`gfnlm.contracts.registry.object_path`)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"reward={spec!r}: must be a callable or 'package.module:function'")
    found = import_object(spec, "reward")
    if not callable(found):
        raise ConfigError(f"reward={spec!r}: names a {type(found).__name__}, not a function")
    return found


@register("target", "reward_tilted")
@attrs.frozen
class RewardTiltedTarget(Target):
    """``p_ref(y|q) · exp(β·r(q,y))``."""

    reward: RewardFn = attrs.field(
        converter=resolve_callable,
        metadata={
            "help": "r(q, y): a callable Rollouts → Tensor[B], "
            "or 'package.module:function' (required)"
        },
    )
    beta: float = option(
        1.0, "β, the weight of r against the reference log-probability", converter=float
    )
    task: Any = task_field()
    provides = frozenset({"ref_logp"})

    def score(self, rollouts: Rollouts, base: SequenceLogProbs) -> TargetScores:
        ref_logp = (base.token_logp * rollouts.response_mask).sum(-1)
        reward = call_reward(self.reward, rollouts, self.task).to(ref_logp)
        if reward.shape != ref_logp.shape:
            raise ValueError(
                f"reward returned shape {tuple(reward.shape)}, expected ({rollouts.batch_size},)"
            )
        return TargetScores(
            log_reward=ref_logp + self.beta * reward,
            ref_token_logp=base.token_logp * rollouts.response_mask,
            metrics={"target/reward_mean": float(reward.mean())},
        )
