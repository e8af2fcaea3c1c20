"""Training objectives. Each lives in its own file whose docstring states the loss, the paper and
the distribution it converges to."""

from gfnlm.objectives.base import Objective
from gfnlm.objectives.db import DetailedBalance
from gfnlm.objectives.entropy_min import EntropyMinimisation
from gfnlm.objectives.grpo import GRPO
from gfnlm.objectives.la_tb import LengthAwareTB
from gfnlm.objectives.subtb import SubTrajectoryBalance
from gfnlm.objectives.tb import TrajectoryBalance
from gfnlm.objectives.tb_token import TokenNormalisedTB

__all__ = [
    "GRPO",
    "DetailedBalance",
    "EntropyMinimisation",
    "LengthAwareTB",
    "Objective",
    "SubTrajectoryBalance",
    "TokenNormalisedTB",
    "TrajectoryBalance",
]
