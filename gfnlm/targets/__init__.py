"""Target distributions: :class:`Target` and the registered ``alpha_power`` and ``reward_tilted``."""

from gfnlm.targets.alpha_power import AlphaPowerTarget
from gfnlm.targets.base import Target
from gfnlm.targets.reward_tilted import RewardTiltedTarget

__all__ = ["AlphaPowerTarget", "RewardTiltedTarget", "Target"]
