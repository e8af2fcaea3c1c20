"""The Target interface: an unnormalised log-density over whole responses (and prefixes)."""

from typing import ClassVar

from gfnlm.types import Rollouts, SequenceLogProbs, TargetScores


class Target:
    """Maps rollouts and the reference model's log-probs to :class:`~gfnlm.types.TargetScores`.

    A target is pure math: the trainer computes the reference (base) model's log-probs over the
    responses in one forward pass (the policy with its LoRA adapter disabled, a frozen copy, or a
    rollout server) and passes them in as ``base``. ``needs_eos_logp`` tells the trainer whether the
    EOS log-prob at every prefix is needed (only for prefix rewards).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    needs_base: ClassVar[bool] = True  # False: ``score`` gets ``base=None`` and the base pass is skipped

    @property
    def needs_eos_logp(self) -> bool:
        """Whether the base model's EOS log-prob at every prefix is needed (for prefix rewards)."""
        return "prefix_rewards" in self.provides

    def score(self, rollouts: Rollouts, base: SequenceLogProbs) -> TargetScores:
        """Score the responses; subclasses implement this."""
        raise NotImplementedError
