"""The Target interface: an unnormalised log-density over whole responses (and prefixes)."""

from typing import Any, ClassVar, Literal

import attrs

from gfnlm.contracts.types import Rollouts, SequenceLogProbs, TargetScores

Regime = Literal["sharpening", "flattening"]


class Target:
    """Maps rollouts and the reference model's log-probs to
    :class:`~gfnlm.contracts.types.TargetScores`.

    A target is pure math: the trainer computes the reference (base) model's log-probs over the
    responses in one forward pass (the policy with its LoRA adapter disabled, a frozen copy, or a
    rollout server) and passes them in as ``base``. ``needs_eos_logp`` tells the trainer whether the
    EOS log-prob at every prefix is needed (only for prefix rewards).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    # False: ``score`` gets ``base=None`` and the base pass is skipped
    needs_base: ClassVar[bool] = True

    @property
    def regime(self) -> Regime | None:
        """``"sharpening"`` when the target is more concentrated than the base model the policy
        starts from (its modes are ones the policy already samples), ``"flattening"`` when it is
        less (it puts mass where the policy rarely samples), ``None`` when neither is known. An
        objective's recommended exploration can depend on it
        (:attr:`~gfnlm.objectives.base.Objective.recommended_when`)."""
        return None

    @property
    def needs_eos_logp(self) -> bool:
        """Whether the base model's EOS log-prob at every prefix is needed (for prefix rewards)."""
        return "prefix_rewards" in self.provides

    def score(self, rollouts: Rollouts, base: SequenceLogProbs) -> TargetScores:
        """Score the responses; subclasses implement this."""
        raise NotImplementedError

    def bind_task(self, task: Any) -> None:
        """Receive the run's task (its format check, grading and answer extraction) from the
        trainer. Targets that use it declare a non-option field ``task`` (see
        :func:`task_field`)."""
        if "task" in attrs.fields_dict(type(self)):
            object.__setattr__(self, "task", task)


def task_field() -> Any:
    """The ``task`` field of a target that uses the run's task: set by the trainer, not an
    option."""
    return attrs.field(default=None, init=False, repr=False, eq=False)
