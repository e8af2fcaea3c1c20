"""Target distributions: :class:`Target` and the registered ``alpha_power``, ``reward_tilted``
and ``reward``."""

from gfnlm.targets.alpha_power import AlphaPowerTarget
from gfnlm.targets.base import Target
from gfnlm.targets.reward import RewardTarget
from gfnlm.targets.reward_tilted import RewardTiltedTarget

__all__ = ["AlphaPowerTarget", "RewardTarget", "RewardTiltedTarget", "Target"]
