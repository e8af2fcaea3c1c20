"""Samplers: :class:`Sampler` and the registered in-process ``hf`` sampler."""

from gfnlm.samplers.base import Sampler
from gfnlm.samplers.hf import HFSampler

__all__ = ["HFSampler", "Sampler"]
