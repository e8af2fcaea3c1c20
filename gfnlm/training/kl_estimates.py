"""Per-step estimates of how far the policy is from the base model and from the target, from the
log-probabilities a training step already has (no extra forward pass).

Each is a mean over the step's *fresh, on-policy* responses ``y_i ~ π(·|q_i)``:

* ``kl/policy_base`` = mean ``log π(y|q) − log p_base(y|q)`` → ``E_q KL(π(·|q) ‖ p_base(·|q))``
  (targets that run the base model: ``alpha_power``, ``reward_tilted``);
* ``elbo`` = mean ``log R(q,y) − log π(y|q)`` → ``E_q[log Z(q) − KL(π ‖ R/Z)] ≤ E_q log Z(q)``,
  with ``Z(q) = Σ_y R(q,y)`` (every target);
* ``elbo_gap`` = mean ``log Z_φ(q) + log π(y|q) − log R(q,y)`` (``tb``, whose learned ``log Z_φ(q)``
  converges to ``log Z(q)``) → ``E_q[KL(π ‖ R/Z) + log Z_φ(q) − log Z(q)]``;
* ``kl/policy_fixed_point`` = mean ``|y|·log Z'_φ(q) + log π(y|q) − log R(q,y)`` (``la_tb`` with a
  learned ``log Z'``, which converges to λ*(q)) → ``E_q[KL(π ‖ π*) + E_π|y|·(log Z'_φ(q) − λ*(q))]``
  with LA-TB's normalised fixed point ``π* = R·exp(−λ*|y|)``.

``log π`` is the rollouts' ``behaviour_logp``: the exact log-probability of the distribution the
sampler drew from (the policy at ``sampling.temperature`` / ``top_p``, with asynchronous rollouts
the policy one update before). The estimates are computed only when that distribution is the
policy's own: with an exploration policy the responses come from another distribution and with the
power samplers ``behaviour_logp`` is not a sampling probability, and then none is logged; replayed
responses (not drawn by this step's policy) are left out. The learned log Z of a response is the
one the loss used on the step's first pass over the batch (the value before this step's update when
the batch is one minibatch).
"""

from typing import Any, Literal

import torch
from torch import Tensor

from gfnlm.contracts.types import Rollouts, TargetScores
from gfnlm.objectives.base import safe_lengths
from gfnlm.objectives.la_tb import LengthAwareTB
from gfnlm.objectives.tb import TrajectoryBalance

LogZKind = Literal["sequence", "per_token"]


def learned_log_z_kind(objective: Any) -> LogZKind | None:
    """What a learned log Z converges to under ``objective``: ``"sequence"`` (``log Σ_y R``, TB),
    ``"per_token"`` (LA-TB's λ*), or ``None`` (no learned log Z, or one of another meaning)."""
    if isinstance(objective, LengthAwareTB):
        return "per_token" if objective.log_z_source == "learned" else None
    if isinstance(objective, TrajectoryBalance):
        return "sequence"
    return None


def draws_from_policy(sampler: Any, exploration: Any) -> bool:
    """Whether fresh rollouts are drawn from the policy and carry its exact log-probabilities."""
    explores = exploration is not None and exploration.changes_sampling
    return "exact_behaviour_logp" in sampler.provides and not explores


def kl_metrics(
    rollouts: Rollouts,
    scores: TargetScores,
    rows: int,
    log_z: Tensor | None = None,
    log_z_kind: LogZKind | None = None,
) -> dict[str, float]:
    """The estimates of the module's docstring over the first ``rows`` rollouts (the fresh ones;
    replayed rows follow them), with ``log_z`` each rollout's learned log Z of kind
    ``log_z_kind``."""
    part = rollouts.select(torch.arange(rows, device=rollouts.lengths.device))
    mask = part.response_mask
    log_pi = (part.behaviour_logp * mask).sum(-1).double()
    log_r = scores.log_reward[:rows].double()
    metrics = {"elbo": _mean(log_r - log_pi)}
    if scores.ref_token_logp is not None:
        log_base = (scores.ref_token_logp[:rows] * mask).sum(-1).double()
        metrics["kl/policy_base"] = _mean(log_pi - log_base)
    if log_z is not None and log_z_kind == "sequence":
        metrics["elbo_gap"] = _mean(log_z[:rows].double() + log_pi - log_r)
    elif log_z is not None and log_z_kind == "per_token":
        tilt = safe_lengths(part, log_pi) * log_z[:rows].double()
        metrics["kl/policy_fixed_point"] = _mean(tilt + log_pi - log_r)
    return metrics


def _mean(values: Tensor) -> float:
    return float(values.mean())
