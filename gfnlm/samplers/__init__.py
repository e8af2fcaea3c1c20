"""Samplers: :class:`Sampler`, the registered in-process ``hf`` sampler, the ``sglang`` and ``vllm``
server samplers and the ``power_mh`` and ``power_smc`` inference-time baselines (power sampling by
Metropolis-Hastings and by sequential Monte Carlo)."""

from gfnlm.samplers.base import Sampler
from gfnlm.samplers.hf import HFSampler
from gfnlm.samplers.power_mh import PowerMHSampler
from gfnlm.samplers.power_smc import PowerSMCSampler
from gfnlm.samplers.sglang import SGLangSampler
from gfnlm.samplers.vllm import VLLMSampler

__all__ = [
    "HFSampler",
    "PowerMHSampler",
    "PowerSMCSampler",
    "SGLangSampler",
    "Sampler",
    "VLLMSampler",
]
