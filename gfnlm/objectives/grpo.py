"""Group-relative policy optimisation (Shao et al. 2024, "DeepSeekMath"), the RL baseline family
of the PowerFlow paper (Chen et al. 2026, arXiv:2603.18363): GRPO with a verifier reward, and with
label-free rewards TTRL, EMPO, Intuitor and RENT. The reward is the target's ``log_reward`` (use the
``reward`` target, whose ``log R = r``).

Advantages (``scale_rewards``) over the responses of each prompt's group ``G(q)``, with ``std``
the unbiased standard deviation and ``ε = 1e-4``:

.. math::

    A_i = \\frac{r_i - \\operatorname{mean}_{G(q)} r}{s + \\epsilon},\\qquad
    s = \\operatorname{std}_{G(q)} r \\ (\\texttt{group}),\\quad
    \\operatorname{std}_{\\text{batch}} r \\ (\\texttt{batch}),\\qquad
    A_i = r_i - \\operatorname{mean}_{G(q)} r \\ (\\texttt{none}).

With ``ℓ_{i,t} = −min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) A_i)``,
``ρ_{i,t} = π_θ(y_{i,t}|…) / π_old(y_{i,t}|…)``, ``B`` responses and ``K`` the kept ones (all,
or those that ended with EOS under ``mask_truncated``), the three shapes (``loss_type``) are

.. math::

    \\mathcal{L}_{\\text{token}} = \\frac{\\sum_{i \\in K} \\sum_{t \\le |y_i|} \\ell_{i,t}}
        {\\sum_{i \\in K} |y_i|},\\qquad
    \\mathcal{L}_{\\text{sequence}} = \\frac{1}{|K|} \\sum_{i \\in K} \\frac{1}{|y_i|}
        \\sum_{t \\le |y_i|} \\ell_{i,t},\\qquad
    \\mathcal{L}_{\\text{dr\\_grpo}} = \\frac{1}{B \\cdot L_{max}} \\sum_{i \\in K}
        \\sum_{t \\le |y_i|} \\ell_{i,t}

``sequence`` is the original GRPO (Shao et al. 2024): the per-response mean weights a token of a
short response more, so it favours short correct and long wrong answers. ``token`` is DAPO's
token-level loss (Yu et al. 2025, arXiv:2503.14476). ``dr_grpo`` (Liu et al. 2025, "Understanding
R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783) divides by a constant, so no
response's length changes its tokens' weight; the paper pairs it with ``scale_rewards='none'``
(the std division up-weights prompts whose rewards barely differ). ``L_max`` is
``max_completion_length``, by default the padded width of the batch's response tensor; the
samplers pad only to the batch's longest response, so set it to ``sampling.max_new_tokens`` for a
constant that does not change from step to step (TRL's).

``mask_truncated`` gives the responses that hit the length limit without EOS zero weight (DAPO's
overlong filtering) and removes them from the token count (``token``) and the response count
(``sequence``); ``dr_grpo`` keeps ``B·L_max``. Their rewards still enter the group statistics, as
TRL computes advantages before it masks.

The same settings in TRL 1.16's ``GRPOConfig`` (checked against its source; advantages and
aggregation as above):

* ``loss_type='token'`` ↔ ``loss_type="dapo"`` (TRL's default; also accepted here as ``'dapo'``);
  gfnlm takes one optimiser step per minibatch, so the token count is the minibatch's, and TRL's
  ``"bnpo"`` is the same loss.
* ``loss_type='sequence'`` ↔ ``loss_type="grpo"`` (also accepted as ``'grpo'``). With
  ``mask_truncated`` TRL still divides by ``B``; gfnlm divides by ``|K|``.
* ``loss_type='dr_grpo'`` ↔ ``loss_type="dr_grpo"``; ``max_completion_length`` ↔ the same name.
* ``scale_rewards='group'`` / ``'batch'`` / ``'none'`` ↔ the same values (``true`` / ``false``
  are read as ``'group'`` / ``'none'``, as TRL and earlier gfnlm configs spell them).
* ``mask_truncated`` ↔ ``mask_truncated_completions``.
* ``eps_low``, ``eps_high`` ↔ ``epsilon``, ``epsilon_high``; ``kl_beta`` with ``k3`` ↔ ``beta``.

Group and batch statistics are those of the (mini)batch the loss is given.

``ρ`` reads ``behaviour_logp`` as the exact sampling probability, so GRPO requires a sampler that
provides ``exact_behaviour_logp``; it is valid under an exploration policy (whose probabilities are
exact) but not on replayed trajectories (``off_policy = "importance_weighted"``).
It converges to no particular distribution: it maximises the expected reward (for a 0/1 verifier,
towards a deterministic policy on a correct answer); the shapes and scalings change how responses
and prompts are weighted on the way, not that maximiser. By default there is no KL term
(``kl_beta=0``, as in the EMPO/TTRL recipes the paper follows).

KL to the reference (base) model, ``kl_beta = β > 0``, needs a target that reports the reference's
per-token log-probs (``ref_logp``: ``alpha_power``, ``reward_tilted``). Two estimators:

* ``kl_estimator='k1'`` (default): in the reward, sequence level (Ziegler et al. 2019):
  ``r_i ← r_i − β·Σ_t [log π_old(y_{i,t}|…) − log p_ref(y_{i,t}|…)]``. This is the policy
  gradient of ``E_π[r] − β·KL(π ‖ p_ref)``, whose maximiser is ``p_ref·exp(r/β)``: with the reward
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
from gfnlm.contracts.validators import one_of
from gfnlm.objectives.base import Objective, group_mean, masked_mean

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["token", "sequence", "dr_grpo"]
TRL_LOSS_TYPES = {"dapo": "token", "grpo": "sequence"}  # TRL's names of the same shapes


def scale_rewards_name(value: object) -> object:
    """``true`` / ``false`` (TRL's and earlier gfnlm configs' boolean) read as 'group' / 'none'."""
    return ("group" if value else "none") if isinstance(value, bool) else value


def loss_type_name(value: object) -> object:
    """TRL's spellings ``dapo`` and ``grpo`` read as ``token`` and ``sequence``."""
    return TRL_LOSS_TYPES.get(value, value) if isinstance(value, str) else value


def group_normalised_advantages(
    reward: Float[Tensor, " B"],
    group: Tensor,
    scale: ScaleRewards | bool = "group",
    eps: float = 1e-4,
) -> Float[Tensor, " B"]:
    """``(r − mean_G r) / (s + ε)`` within each group: ``s`` the group's standard deviation
    ('group'), that of all rewards ('batch'), or no division ('none').

    The standard deviations are the unbiased ones, as TRL's; a group of one has advantage 0.
    """
    scale = scale_rewards_name(scale)
    centred = reward - group_mean(reward, group)
    if scale == "none":
        return centred
    if scale == "batch":
        std = reward.std() if reward.numel() > 1 else reward.new_zeros(())
    else:
        std = group_mean(centred.pow(2), group, correction=1).sqrt()
    return centred / (std + eps)


@register("objective", "grpo")
@attrs.frozen
class GRPO(Objective):
    """PPO-clipped policy gradient with group-normalised advantages of the target's reward."""

    eps_low: float = option(
        0.2, "PPO clip: the ratio is clipped to [1 − eps_low, 1 + eps_high]", converter=float
    )
    eps_high: float = option(0.2, "PPO clip upper bound", converter=float)
    scale_rewards: ScaleRewards = option(
        "group",
        "divide the group-centred rewards by the std of the group ('group'), of the batch "
        "('batch') or not at all ('none'); true/false read as 'group'/'none'",
        converter=scale_rewards_name,
        validator=one_of("group", "batch", "none"),
    )
    loss_type: LossType = option(
        "token",
        "'token' (TRL's 'dapo'): mean over the batch's tokens; 'sequence' (TRL's 'grpo'): "
        "mean per response, then over responses; 'dr_grpo': sum over tokens / (B × "
        "max_completion_length)",
        converter=loss_type_name,
        validator=one_of("token", "sequence", "dr_grpo", also=" (or TRL's names dapo, grpo)"),
    )
    max_completion_length: int | None = option(
        None,
        "constant L_max of loss_type='dr_grpo' (set it to sampling.max_new_tokens); None: "
        "the padded width of the batch's responses",
        validator=attrs.validators.optional(
            [attrs.validators.instance_of(int), attrs.validators.ge(1)]
        ),
    )
    mask_truncated: bool = option(
        False,
        "responses cut at the length limit (no EOS) get no weight in the loss and leave "
        "its normaliser (TRL's mask_truncated_completions); their rewards still count in the "
        "advantages",
        validator=attrs.validators.instance_of(bool),
    )
    # Where r comes from: the target's log_reward (GRPO with a verifier, TTRL, EMPO through reward
    # functions), or the policy's own tokens: RENT (minus the mean token entropy) and Intuitor (the
    # mean self-certainty), both computed without gradient from the same forward pass.
    reward: Literal["target", "neg_entropy", "self_certainty"] = option(
        "target",
        "r: the target's log_reward, minus the mean token entropy (RENT) "
        "or the self-certainty (Intuitor)",
        validator=attrs.validators.in_(("target", "neg_entropy", "self_certainty")),
    )
    kl_beta: float = option(
        0.0,
        "weight of the KL to the base model (0 = none, the PowerFlow paper's setting)",
        converter=float,
        validator=attrs.validators.ge(0.0),
    )
    kl_estimator: Literal["k1", "k3"] = option(
        "k1",
        "'k1' (in the reward) or 'k3' (in the loss) estimate of the KL",
        validator=attrs.validators.in_(("k1", "k3")),
    )

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
        loss = self.aggregate(per_token, rollouts)
        clipped = (ratio != clipped_ratio) & mask
        metrics |= {
            "reward_mean": float(reward.mean()),
            "reward_std": float(reward.std()) if reward.numel() > 1 else 0.0,
            "clip_frac": float(clipped.sum() / mask.sum().clamp_min(1)),
        }
        return ObjectiveOutput(loss=loss, residual=advantage.squeeze(1).detach(), metrics=metrics)

    def aggregate(self, per_token: Float[Tensor, "B T"], rollouts: Rollouts) -> Tensor:
        """The ``loss_type`` shape of the per-token losses (see the module), over the responses
        kept (all, or under ``mask_truncated`` those that ended with EOS)."""
        eos = rollouts.ended_with_eos
        kept = eos if self.mask_truncated else torch.ones_like(eos)
        mask = rollouts.response_mask & kept[:, None]
        summed = (per_token * mask).sum(-1)
        if self.loss_type == "token":
            return summed.sum() / mask.sum().clamp_min(1)
        if self.loss_type == "sequence":
            return (summed / mask.sum(-1).clamp_min(1)).sum() / kept.sum().clamp_min(1)
        longest, width = int(rollouts.lengths.max()), self.max_completion_length or mask.shape[1]
        if longest > width:
            raise ValueError(
                f"max_completion_length={width}: a response has {longest} tokens; "
                "set it to sampling.max_new_tokens"
            )
        return summed.sum() / (rollouts.batch_size * width)

    @staticmethod
    def _ref_logp(target: TargetScores) -> Float[Tensor, "B T"]:
        if target.ref_token_logp is None:
            raise ValueError(
                "kl_beta > 0 needs a target that reports ref_token_logp "
                "(alpha_power, reward_tilted)"
            )
        return target.ref_token_logp.detach()

    def rewards(
        self, rollouts: Rollouts, policy: PolicyEval, target: TargetScores
    ) -> Float[Tensor, " B"]:
        """``r`` per response (detached), from the source named by ``reward``."""
        if self.reward == "target":
            return target.log_reward.detach()
        statistic = policy.entropy if self.reward == "neg_entropy" else policy.self_certainty
        if statistic is None:
            raise ValueError(
                f"reward={self.reward!r} needs a policy that reports "
                f"{'entropy' if self.reward == 'neg_entropy' else 'self_certainty'} "
                "at every position"
            )
        mask = rollouts.response_mask.to(statistic.dtype)
        mean = (statistic.detach() * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return -mean if self.reward == "neg_entropy" else mean
