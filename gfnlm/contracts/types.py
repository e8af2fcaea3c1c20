"""The small attrs classes that components exchange.

Data flows one way::

    Sampler -> Rollouts -> (base scorer -> SequenceLogProbs) -> Target -> TargetScores
            \\-> policy forward -> PolicyEval ------------------------------> Objective -> loss

Conventions used everywhere (define once, use everywhere):

* Responses are right-padded to ``T`` positions; ``response_mask[b, t]`` is 1 for real tokens.
* ``lengths[b] = response_mask[b].sum()`` is ``|y|``, the number of response tokens **counting
  EOS as one token**. A truncated response (hit ``max_new_tokens`` without EOS) has no EOS token.
* ``ended_with_eos[b]`` tells the two apart. A truncated response is treated as a terminal state
  whose termination was *forced*: its probability under any policy is the product of its token
  probabilities, with no EOS factor. This is exactly the distribution of a sampler with a
  ``max_new_tokens`` limit, so every fixed point below is stated over that distribution.
* Prefix states ``s_i = (q, y_1..y_i)`` for ``i = 0..T``. Tensors ``[B, T+1]`` are indexed by ``i``.
  The number of non-EOS tokens is ``n = lengths - ended_with_eos``; states ``s_0..s_n`` are visited.
* Zero-length responses (``lengths == 0``) are not produced by any sampler (``max_new_tokens >= 1``
  is enforced); objectives that divide by ``|y|`` clamp it at 1 so a stray one cannot give NaN.
"""

from typing import Any

import attrs
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from gfnlm.contracts.shapes import check_bundle


def _validate(self: Any) -> None:
    check_bundle(self)


@attrs.frozen(kw_only=True)
class PromptBatch:
    """``N`` tokenised prompts (left-padded to ``P``), their dataset indices and texts."""

    prompt_ids: Int[Tensor, "N P"]
    prompt_mask: Bool[Tensor, "N P"]
    prompt_index: Int[Tensor, " N"]
    prompt_text: tuple[str, ...] | None = None
    # Each prompt's gold answers (None for a prompt without any), carried to the rollouts for the
    # task's grading: never looked up by text.
    labels: tuple[tuple[str, ...] | None, ...] | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def token_lists(self) -> list[list[int]]:
        """Each prompt's token ids without its padding (what a server's request carries)."""
        return [
            row[mask].tolist() for row, mask in zip(self.prompt_ids, self.prompt_mask, strict=True)
        ]


@attrs.frozen(kw_only=True)
class Rollouts:
    """A batch of ``B`` responses to ``P``-token prompts (left-padded), ``T`` response positions.

    Responses to the same prompt share ``group``; ``prompt_index`` is the prompt's index in its
    dataset (used by the per-prompt log Z table). ``behaviour_logp`` are the per-token log-probs of
    the policy that sampled them (for importance weights); ``weight_version`` is the policy version
    that produced them (staleness is covered by the importance weights).
    """

    prompt_ids: Int[Tensor, "B P"]
    prompt_mask: Bool[Tensor, "B P"]
    response_ids: Int[Tensor, "B T"]
    response_mask: Bool[Tensor, "B T"]
    lengths: Int[Tensor, " B"]
    ended_with_eos: Bool[Tensor, " B"]
    group: Int[Tensor, " B"]
    prompt_index: Int[Tensor, " B"]
    behaviour_logp: Float[Tensor, "B T"]
    weight_version: int = 0
    response_text: tuple[str, ...] | None = None
    prompt_text: tuple[str, ...] | None = None
    # each response's prompt's gold answers
    labels: tuple[tuple[str, ...] | None, ...] | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self)

    @property
    def batch_size(self) -> int:
        """``B``, the number of responses."""
        return int(self.response_ids.shape[0])

    @property
    def num_steps(self) -> Int[Tensor, " B"]:
        """Number of non-EOS tokens ``n``: states ``s_0..s_n`` are visited."""
        return self.lengths - self.ended_with_eos.long()

    def select(self, idx: Tensor) -> "Rollouts":
        """The sub-batch at ``idx`` (a 1-D index tensor); used for minibatches."""
        pick = lambda x: x[idx]
        idx_list = idx.tolist()
        return attrs.evolve(
            self,
            prompt_ids=pick(self.prompt_ids),
            prompt_mask=pick(self.prompt_mask),
            response_ids=pick(self.response_ids),
            response_mask=pick(self.response_mask),
            lengths=pick(self.lengths),
            ended_with_eos=pick(self.ended_with_eos),
            group=pick(self.group),
            prompt_index=pick(self.prompt_index),
            behaviour_logp=pick(self.behaviour_logp),
            response_text=None
            if self.response_text is None
            else tuple(self.response_text[i] for i in idx_list),
            prompt_text=None
            if self.prompt_text is None
            else tuple(self.prompt_text[i] for i in idx_list),
            labels=None if self.labels is None else tuple(self.labels[i] for i in idx_list),
        )

    def to(self, device: torch.device | str) -> "Rollouts":
        """The same rollouts with every tensor on ``device``."""
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in attrs.fields(Rollouts)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return attrs.evolve(self, **changes)


@attrs.frozen(kw_only=True)
class SequenceLogProbs:
    """Per-token log-probs of a model over the rollouts' responses (e.g. the base model).

    ``token_logp[b, t] = log p(y_{t+1} | s_t)`` (0 at padding).
    ``eos_logp[b, i] = log p(EOS | s_i)`` for every prefix state (needed for prefix rewards);
    ``None`` when not computed.
    """

    token_logp: Float[Tensor, "B T"]
    eos_logp: Float[Tensor, "B T+1"] | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self)


@attrs.frozen(kw_only=True)
class PolicyEval:
    """What ONE forward pass of the policy over prompt+response gives the objectives.

    ``token_logp``/``eos_logp`` as in :class:`SequenceLogProbs` (with gradient).
    ``entropy[b, t]`` is the policy's token entropy at state ``s_t`` (for entropy rewards and
    losses); ``None`` when no component asked for it, and then ``entropy_sample`` holds the entropy
    at a subsample of the real response positions (for logging: :meth:`mean_entropy`).
    ``prompt_hidden`` is the mean of the last hidden states over the prompt tokens (for the MLP
    log Z head); ``None`` when not requested. ``self_certainty[b, t]`` is
    ``KL(Uniform ‖ π(·|s_t)) = logsumexp(z) − mean(z) − log|V|`` (Intuitor's reward; no gradient),
    ``None`` where the policy does not provide it.
    """

    token_logp: Float[Tensor, "B T"]
    eos_logp: Float[Tensor, "B T+1"]
    entropy: Float[Tensor, "B T"] | None = None
    prompt_hidden: Float[Tensor, "B H"] | None = None
    self_certainty: Float[Tensor, "B T"] | None = None
    entropy_sample: Float[Tensor, " S"] | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def mean_entropy(self, response_mask: Bool[Tensor, "B T"]) -> float:
        """The mean token entropy over real response tokens (estimated from ``entropy_sample``
        when ``entropy`` was not computed at every position; NaN when neither is there)."""
        if self.entropy is not None:
            weights = response_mask.to(self.entropy.dtype)
            return float((self.entropy.detach() * weights).sum() / weights.sum().clamp_min(1))
        if self.entropy_sample is None or self.entropy_sample.numel() == 0:
            return float("nan")
        return float(self.entropy_sample.detach().mean())

    def sequence_logp(self, response_mask: Bool[Tensor, "B T"]) -> Float[Tensor, " B"]:
        """``log pi(y|q)`` summed over real response tokens."""
        return (self.token_logp * response_mask).sum(-1)


@attrs.frozen(kw_only=True)
class TargetScores:
    """A target's unnormalised log-density of each response, and of stopping at each prefix.

    ``log_reward[b] = log R(q, y)`` for the whole response.
    ``prefix_log_reward[b, i] = log R(s_i EOS)``, the reward of terminating right after prefix
    ``s_i``; for a truncated response the entry at ``i = n`` is the (forced-termination) sequence
    reward. ``None`` where the target cannot define prefix rewards (e.g. an end-only reward).
    ``ref_token_logp[b, t] = log p_ref(y_{t+1} | s_t)``, the reference (base) model's per-token
    log-probs, for objectives with a KL-to-reference term (the ``ref_logp`` capability); ``None``
    where the target does not run the reference model.
    """

    log_reward: Float[Tensor, " B"]
    prefix_log_reward: Float[Tensor, "B T+1"] | None = None
    ref_token_logp: Float[Tensor, "B T"] | None = None
    metrics: dict[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def select(self, idx: Tensor) -> "TargetScores":
        """The scores of the sub-batch at ``idx``, matching :meth:`Rollouts.select`."""
        prefix = None if self.prefix_log_reward is None else self.prefix_log_reward[idx]
        ref = None if self.ref_token_logp is None else self.ref_token_logp[idx]
        return attrs.evolve(
            self, log_reward=self.log_reward[idx], prefix_log_reward=prefix, ref_token_logp=ref
        )


@attrs.frozen(kw_only=True)
class ObjectiveOutput:
    """A scalar loss to minimise, the per-sample residuals (for logging) and scalar metrics."""

    loss: Float[Tensor, ""]
    residual: Float[Tensor, " B"]
    metrics: dict[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _validate(self)
