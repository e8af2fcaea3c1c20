"""Group-relative policy optimisation (Shao et al. 2024, "DeepSeekMath"), the RL baseline family
of the PowerFlow paper (Chen et al. 2026, arXiv:2603.18363): GRPO with a verifier reward, and with
label-free rewards TTRL, EMPO, Intuitor and RENT. The reward is the target's ``log_reward`` (use the ``reward``
target, whose ``log R = r``).

.. math::

    A_i = \\frac{r_i - \\operatorname{mean}_{G(q)} r}{\\operatorname{std}_{G(q)} r + \\epsilon},\\qquad
    \\mathcal{L} = -\\frac{1}{\\sum_i |y_i|}\\sum_i \\sum_{t \\le |y_i|}
        \\min\\big(\\rho_{i,t} A_i,\\ \\mathrm{clip}(\\rho_{i,t}, 1-\\epsilon_{low}, 1+\\epsilon_{high}) A_i\\big),
    \\qquad \\rho_{i,t} = \\frac{\\pi_\\theta(y_{i,t}|\\ldots)}{\\pi_{old}(y_{i,t}|\\ldots)}

over the responses of each prompt's group ``G(q)`` (token-level mean over the batch, as DAPO and
TRL's default ``loss_type``; ``loss_type='sequence'`` averages per response first, as the original).
``ρ`` reads ``behaviour_logp`` as the exact sampling probability, so GRPO requires a sampler that
provides ``exact_behaviour_logp``; it is valid under an exploration policy (whose probabilities are
exact) but not on replayed trajectories (``off_policy = "importance_weighted"``).
It converges to no particular distribution: it maximises the expected reward (for a 0/1 verifier,
towards a deterministic policy on a correct answer). By default there is no KL term (``kl_beta=0``,
as in the EMPO/TTRL recipes the paper follows).

KL to the reference (base) model, ``kl_beta = β > 0``, needs a target that reports the reference's
per-token log-probs (``ref_logp``: ``alpha_power``, ``reward_tilted``). Two estimators:

* ``kl_estimator='k1'`` (default): in the reward, sequence level (Ziegler et al. 2019):
  ``r_i ← r_i − β·Σ_t [log π_old(y_{i,t}|…) − log p_ref(y_{i,t}|…)]``. This is the policy gradient of
  ``E_π[r] − β·KL(π ‖ p_ref)``, whose maximiser is ``p_ref·exp(r/β)``: with the reward
  ``(α−1)·log p_base`` and β = 1 that is ``p_base^α`` (the paper's **RL-traj** baseline).
* ``kl_estimator='k3'``: in the loss, per token (Shao et al. 2024, eq. 4; verl's ``low_var_kl``):
  ``+ β·[exp(log p_ref − log π_θ) − (log p_ref − log π_θ) − 1]``, averaged as the surrogate. Its
  gradient is that of ``KL(p_ref ‖ π_θ)`` at the sampled states, so the fixed point is not exactly
  ``p_ref·exp(r/β)``; offered because it is what GRPO implementations use.
"""

from typing import Literal

import attrs
import torch
from jaxtyping import Float
from torch import Tensor

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import ObjectiveOutput, PolicyEval, Rollouts, TargetScores
from gfnlm.objectives.base import Objective, group_mean, masked_mean


def group_normalised_advantages(reward: Float[Tensor, " B"], group: Tensor, scale: bool = True,
                                eps: float = 1e-4) -> Float[Tensor, " B"]:
    """``(r − mean_G r) / (std_G r + ε)`` within each group (``scale=False``: no division).

    The standard deviation is the unbiased one, as TRL's; a group of one has advantage 0.
    """
    centred = reward - group_mean(reward, group)
    if not scale:
        return centred
    return centred / (group_mean(centred.pow(2), group, correction=1).sqrt() + eps)


@register("objective", "grpo")
@attrs.frozen
class GRPO(Objective):
    """PPO-clipped policy gradient with group-normalised advantages of the target's reward."""

    eps_low: float = option(0.2, "PPO clip: the ratio is clipped to [1 − eps_low, 1 + eps_high]",
        converter=float)
    eps_high: float = option(0.2, "PPO clip upper bound", converter=float)
    scale_rewards: bool = option(True, "divide the group-centred rewards by the group's standard deviation")
    loss_type: Literal["token", "sequence"] = option(
        "token", "'token': mean over the batch's tokens; 'sequence': mean per response, then over responses",
        validator=attrs.validators.in_(("token", "sequence")))
    # Where r comes from: the target's log_reward (GRPO with a verifier, TTRL, EMPO through reward
    # functions), or the policy's own tokens: RENT (minus the mean token entropy) and Intuitor (the
    # mean self-certainty), both computed without gradient from the same forward pass.
    reward: Literal["target", "neg_entropy", "self_certainty"] = option(
        "target", "r: the target's log_reward, minus the mean token entropy (RENT) or the self-certainty (Intuitor)",
        validator=attrs.validators.in_(("target", "neg_entropy", "self_certainty")))
    kl_beta: float = option(0.0, "weight of the KL to the base model (0 = none, the PowerFlow paper's setting)",
        converter=float, validator=attrs.validators.ge(0.0))
    kl_estimator: Literal["k1", "k3"] = option("k1", "'k1' (in the reward) or 'k3' (in the loss) estimate of the KL",
        validator=attrs.validators.in_(("k1", "k3")))

    # The ratio ρ corrects for sampling by behaviour_logp, exactly: valid under an exploration
    # policy, not on replayed trajectories (their reward-prioritised selection has no probability).
    off_policy = "importance_weighted"

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        """Exact behaviour log-probs (for ρ); ``ref_logp`` with a KL term; per-position entropy /
        self-certainty for the RENT / Intuitor rewards."""
        needs = {"exact_behaviour_logp"} | ({"ref_logp"} if self.kl_beta else set())
        return frozenset(needs | ({"token_statistics"} if self.reward != "target" else set()))

    @property
    def min_samples_per_prompt(self) -> int:
        """Advantages are centred on the group mean: one response per prompt has advantage 0."""
        return 2

    def loss(
        self,
        rollouts: Rollouts,
        policy: PolicyEval,
        target: TargetScores,
        log_z: Float[Tensor, " B"] | None,
    ) -> ObjectiveOutput:
        reward = self.rewards(rollouts, policy, target)
        mask = rollouts.response_mask
        metrics: dict[str, float] = {}
        if self.kl_beta and self.kl_estimator == "k1":
            kl = ((rollouts.behaviour_logp - self._ref_logp(target)) * mask).sum(-1)
            metrics["kl_seq_mean"] = float(kl.mean())
            reward = reward - self.kl_beta * kl
        advantage = group_normalised_advantages(reward, rollouts.group, self.scale_rewards)[:, None]
        ratio = (policy.token_logp - rollouts.behaviour_logp).clamp(-20.0, 20.0).exp()
        clipped_ratio = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
        per_token = -torch.minimum(ratio * advantage, clipped_ratio * advantage)
        if self.kl_beta and self.kl_estimator == "k3":
            log_ratio = (self._ref_logp(target) - policy.token_logp).clamp(-20.0, 20.0)
            k3 = (log_ratio.exp() - log_ratio - 1.0) * mask
            metrics["kl_token_mean"] = float(masked_mean(k3.detach(), mask))
            per_token = per_token + self.kl_beta * k3
        if self.loss_type == "token":
            loss = masked_mean(per_token, mask)
        else:
            per_response = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)
            loss = per_response.mean()
        clipped = (ratio != clipped_ratio) & mask
        metrics |= {
            "reward_mean": float(reward.mean()),
            "reward_std": float(reward.std()) if reward.numel() > 1 else 0.0,
            "clip_frac": float(clipped.sum() / mask.sum().clamp_min(1)),
        }
        return ObjectiveOutput(loss=loss, residual=advantage.squeeze(1).detach(), metrics=metrics)

    @staticmethod
    def _ref_logp(target: TargetScores) -> Float[Tensor, "B T"]:
        if target.ref_token_logp is None:
            raise ValueError("kl_beta > 0 needs a target that reports ref_token_logp (alpha_power, reward_tilted)")
        return target.ref_token_logp.detach()

    def rewards(self, rollouts: Rollouts, policy: PolicyEval, target: TargetScores) -> Float[Tensor, " B"]:
        """``r`` per response (detached), from the source named by ``reward``."""
        if self.reward == "target":
            return target.log_reward.detach()
        statistic = policy.entropy if self.reward == "neg_entropy" else policy.self_certainty
        if statistic is None:
            raise ValueError(f"reward={self.reward!r} needs a policy that reports "
                             f"{'entropy' if self.reward == 'neg_entropy' else 'self_certainty'} at every position")
        mask = rollouts.response_mask.to(statistic.dtype)
        mean = (statistic.detach() * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return -mean if self.reward == "neg_entropy" else mean
