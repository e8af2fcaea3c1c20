"""The Sampler interface: prompts in, :class:`~gfnlm.contracts.types.Rollouts` out."""

import math
from typing import ClassVar

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.types import PromptBatch, Rollouts


class Sampler:
    """Draws ``n`` responses per prompt with the current policy.

    ``setup(policy)`` is called once by the trainer (an in-process sampler keeps a handle on the
    policy's model; a server sampler connects and pushes weights); ``sync(policy, version)`` after
    every optimiser step, ``force=True`` after a resume (a no-op for in-process samplers, which
    always see the current weights); ``close()`` when training ends, also on errors.
    A sampler whose ``scores_base`` is true also computes the target's base log-probs
    (``score_base(rollouts, need_eos_logp)``, as :meth:`CausalLMPolicy.score_base`).
    """

    provides: ClassVar[frozenset[str]] = frozenset({"response_text"})
    requires: ClassVar[frozenset[str]] = frozenset()
    # Whether ``sample`` may run in a background thread while the trainer updates the policy
    # (``sampling.async_rollouts``): only where the sampler holds its own copy of the weights.
    overlaps_training: ClassVar[bool] = False

    def setup(self, policy: object) -> None:
        """Attach to the policy (called once before sampling)."""

    scores_base: bool = False
    # Whether ``score_base`` can return the base model's EOS log-prob at every prefix (what prefix
    # rewards need); checked when the run is composed.
    scores_eos_logp: ClassVar[bool] = True

    def sync(self, policy: object, version: int, force: bool = False) -> None:
        """Make the sampler use the policy's current weights, tagged ``version``."""

    def explore_with(self, exploration: object) -> None:
        """Draw every token through ``exploration`` (a :mod:`gfnlm.exploration` component); only
        samplers that provide ``behaviour_transform`` implement it (checked when composed)."""
        raise NotImplementedError(f"{type(self).__name__} cannot apply an exploration component")

    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        """``n`` responses for each prompt, grouped: rows ``i*n .. i*n+n-1`` answer prompt ``i``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (servers, threads)."""


# How the sampling settings are named where they come from: the run config, or eval/sample's flags.
CONFIG_NAMES = {
    "temperature": "sampling.temperature",
    "top_p": "sampling.top_p",
    "min_p": "sampling.min_p",
}
FLAG_NAMES = {"temperature": "--temperature", "top_p": "--top-p", "min_p": "--min-p"}


def check_sampling_settings(
    temperature: float, top_p: float, min_p: float, names: dict[str, str] = CONFIG_NAMES
) -> None:
    """One-line errors for sampling settings no sampler can use (checked before any model loads),
    each naming the setting as ``names`` spells it (:data:`CONFIG_NAMES` or :data:`FLAG_NAMES`)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"{names['temperature']}={temperature!r}: must be a finite number > 0")
    if not 0 < top_p <= 1:
        raise ConfigError(f"{names['top_p']}={top_p!r}: must be in (0, 1]")
    if not 0 <= min_p < 1:
        raise ConfigError(f"{names['min_p']}={min_p!r}: must be in [0, 1)")
