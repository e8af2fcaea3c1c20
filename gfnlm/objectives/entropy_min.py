"""One-shot entropy minimisation ("EM", Gao et al. 2025, "One-shot Entropy Minimization"), a
label-free baseline of the PowerFlow paper (Chen et al. 2026, arXiv:2603.18363): no reward and no
advantages, the loss is the policy's mean token entropy over its own samples, with gradient:

.. math::

    \\mathcal{L}_{EM} = \\frac{1}{\\sum_i |y_i|}\\sum_i \\sum_{t < |y_i|}
        H\\big(\\pi_\\theta(\\cdot \\mid q, y_{i,<t})\\big),\\qquad
    H(\\pi) = -\\sum_v \\pi(v)\\log\\pi(v)

(token-level mean over the batch; the states are the ones the sampler visited, and the gradient
flows through the per-state entropies only, not through the choice of states, as in the paper's
recipe). The policy computes ``H`` in its single forward pass; this objective requires the
``entropy_grad`` capability, which makes the policy keep the entropy's graph (it is computed under
``no_grad`` otherwise). Fixed points: the deterministic policies (zero entropy at every visited
state); gradient descent from the base model converges to one that is, in practice, close to the
base model's greedy decoding. It targets no distribution over responses.
"""

import attrs
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts.registry import register
from gfnlm.contracts.types import ObjectiveOutput, PolicyEval, Rollouts, TargetScores
from gfnlm.objectives.base import Objective, masked_mean


@register("objective", "entropy_min")
@attrs.frozen
class EntropyMinimisation(Objective):
    """Mean token entropy of the policy over the sampled responses (minimised)."""

    requires = frozenset({"entropy_grad"})

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        mask = rollouts.response_mask
        loss = masked_mean(policy.entropy, mask)
        weights = mask.to(policy.entropy.dtype)
        per_response = (policy.entropy * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)
        return ObjectiveOutput(
            loss=loss,
            residual=per_response.detach(),
            metrics={"entropy_mean": float(loss.detach())},
        )
