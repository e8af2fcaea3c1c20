"""Power sampling by Metropolis-Hastings (Karan & Du 2025), an inference-time baseline: sample
from ``p_base(y|q)^α`` with no training, at several times the tokens of one sample.

Proposal ``q`` = token sampling at temperature ``1/α``. The response grows in blocks of
``block_size`` tokens; after each block, ``mh_steps`` Metropolis-Hastings steps each pick a
position ``i`` uniformly in the current response, resample the suffix from ``i`` up to the block's
end (or EOS) from ``q``, and accept with

.. math::

    \\log A = \\alpha\\,[\\log p(x'_{i:}) - \\log p(x_{i:})] + \\log q(x_{i:}) - \\log q(x'_{i:})
             + \\log|x| - \\log|x'|.

The last two terms are not in the published formula: they are the Hastings correction for drawing
``i`` uniformly from the *current* length, which matters once EOS lets ``x'`` and ``x`` differ in
length. Without them the chain's stationary distribution is not ``p^α`` (the exact test in
``tests/test_power_mh.py`` measured TV 4.5e-5 on a peaked target, with wrong masses by a factor
of 2 on the low-probability responses; with them it agrees to 1e-9).
Once the last block reaches ``max_new_tokens`` the chain's stationary distribution is
``p^α`` over all responses (truncation at the cap counts as termination), checked exactly on an
enumerable model in ``tests/test_power_mh.py``. The published setting is 16 blocks and 10 MH steps
per block (``block_size = max_new_tokens / 16``).
"""

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import PromptBatch, Rollouts
from gfnlm.models.decoding import decode_with_cache, rollouts_from_generated
from gfnlm.samplers.base import Sampler

# propose(prefix, max_tokens) -> (suffix tokens, log q of each): ancestral sampling at T = 1/α,
# stopping after EOS or max_tokens tokens.
Propose = Callable[[list[int], int], tuple[list[int], list[float]]]
# base_logp(prefix, suffix) -> log p_base of each suffix token given what precedes it.
BaseLogp = Callable[[list[int], list[int]], list[float]]


def log_acceptance(
    alpha: float,
    new_logp: Sequence[float],
    old_logp: Sequence[float],
    new_logq: Sequence[float],
    old_logq: Sequence[float],
    old_len: int,
    new_len: int,
) -> float:
    """``α[log p(x') − log p(x)] + log q(x) − log q(x') + log|x| − log|x'|`` over the resampled
    suffixes; the last two terms correct for the position being drawn uniformly from the current
    length (they cancel when the lengths are equal)."""
    return (
        alpha * (sum(new_logp) - sum(old_logp))
        + sum(old_logq)
        - sum(new_logq)
        + math.log(old_len)
        - math.log(new_len)
    )


@attrs.define
class DecodingCost:
    """What an inference-time sampler decoded for what it returned (MH's proposals, SMC's
    particles): the counts two samplers are compared on at equal compute."""

    tokens_generated: int = 0
    tokens_returned: int = 0

    @property
    def token_cost(self) -> float:
        """Tokens generated per token returned."""
        return self.tokens_generated / max(self.tokens_returned, 1)


@attrs.define
class MHStats(DecodingCost):
    """What a power-sampling call cost: tokens (proposals included), proposals, acceptances."""

    proposals: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed MH moves."""
        return self.accepted / max(self.proposals, 1)


def power_sample(
    propose: Propose,
    base_logp: BaseLogp,
    eos_id: int,
    alpha: float,
    max_new_tokens: int,
    block_size: int,
    mh_steps: int,
    rng: random.Random,
    stats: MHStats | None = None,
) -> tuple[list[int], list[float]]:
    """One response from block-wise MH targeting ``p^α``: its tokens and their ``log p_base``."""
    stats = stats if stats is not None else MHStats()
    tokens: list[int] = []
    logp: list[float] = []
    logq: list[float] = []
    while len(tokens) < max_new_tokens and not (tokens and tokens[-1] == eos_id):
        end = min(len(tokens) + block_size, max_new_tokens)
        suffix, suffix_logq = propose(tokens, end - len(tokens))
        stats.tokens_generated += len(suffix)
        tokens, logp, logq = tokens + suffix, logp + base_logp(tokens, suffix), logq + suffix_logq
        for _ in range(mh_steps):
            i = rng.randrange(len(tokens))
            new, new_logq = propose(tokens[:i], end - i)
            stats.tokens_generated += len(new)
            new_logp = base_logp(tokens[:i], new)
            stats.proposals += 1
            log_a = log_acceptance(
                alpha, new_logp, logp[i:], new_logq, logq[i:], len(tokens), i + len(new)
            )
            if log_a >= 0 or rng.random() < math.exp(log_a):
                stats.accepted += 1
                tokens, logp, logq = tokens[:i] + new, logp[:i] + new_logp, logq[:i] + new_logq
    stats.tokens_returned += len(tokens)
    return tokens, logp


@register("sampler", "power_mh")
@attrs.define
class PowerMHSampler(Sampler):
    """Block-wise MH power sampling from the policy's base model (an inference-time baseline).

    ``behaviour_logp`` of the returned rollouts holds ``log p_base`` per token (the chain's output
    has no tractable sampling probability), so it never provides ``exact_behaviour_logp``:
    objectives that importance-weight by it (``la_tb``, ``grpo``) are rejected with it.
    ``last_stats`` holds the acceptance rate and token cost of the latest call.
    """

    alpha: float = option(4.0, "α of the power distribution sampled by Metropolis–Hastings")
    max_new_tokens: int = option(24, "longest response (set from sampling.max_new_tokens)")
    block_size: int = option(
        0,
        "tokens added per block before the MH steps "
        "(0: max_new_tokens / 16, the published 16 blocks)",
    )
    mh_steps: int = option(10, "MH steps per block")
    seed: int = option(0, "seed of the sampler's own random numbers")
    temperature: float = option(
        1.0, "unused: the proposal runs at 1/alpha (accepted like every sampler's)"
    )
    top_p: float = option(
        1.0, "unused: the proposal samples the whole vocabulary (accepted like every sampler's)"
    )
    _policy: Any = attrs.field(default=None, init=False, repr=False)
    last_stats: MHStats = attrs.field(factory=MHStats, init=False)

    def withheld(self) -> dict[str, str]:
        """Why this sampler offers neither exact behaviour log-probs nor an exploration hook."""
        fixed = "the MH chain's proposals are fixed at temperature 1/alpha"
        return {
            "exact_behaviour_logp": "its behaviour_logp holds log p_base, "
            "the MH chain's output has no tractable sampling probability",
            "behaviour_transform": fixed,
            "tempered_sampling": fixed,
        }

    def setup(self, policy: Any) -> None:
        self._policy = policy

    @torch.no_grad()
    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        rng = random.Random(self.seed)
        block = self.block_size or max(1, self.max_new_tokens // 16)
        self.last_stats = MHStats()
        responses = []
        with policy.base_model() as base, policy.decoding(base):
            for row in range(len(prompts)):
                prompt = prompts.prompt_ids[row][prompts.prompt_mask[row]].tolist()
                propose, base_logp = _hf_functions(base, policy, prompt, self.alpha)
                for _ in range(n):
                    responses.append(
                        power_sample(
                            propose,
                            base_logp,
                            policy.eos_token_id,
                            self.alpha,
                            self.max_new_tokens,
                            block,
                            self.mh_steps,
                            rng,
                            self.last_stats,
                        )
                    )
        width = max(len(tokens) for tokens, _ in responses)
        generated = torch.full(
            (len(responses), width), policy.tokenizer.pad_token_id, dtype=torch.long
        )
        logps = torch.zeros(len(responses), width)
        for row, (tokens, logp) in enumerate(responses):
            generated[row, : len(tokens)] = torch.tensor(tokens)
            logps[row, : len(logp)] = torch.tensor(logp)
        return rollouts_from_generated(policy, prompts, n, generated, logps)


def _hf_functions(
    model: Any, policy: Any, prompt: list[int], alpha: float
) -> tuple[Propose, BaseLogp]:
    """Proposal and base log-prob functions over one prompt (called inside ``policy.decoding``)."""
    device = policy.device
    eos, pad = policy.eos_token_id, policy.tokenizer.pad_token_id

    def propose(prefix: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        ids = torch.tensor([prompt + prefix], device=device)
        tokens, logq = decode_with_cache(
            model,
            ids,
            torch.ones_like(ids, dtype=torch.bool),
            1,
            max_new_tokens=max_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            temperature=1.0 / alpha,
        )
        out, out_logq = [], []
        for token, value in zip(tokens[0].tolist(), logq[0].tolist(), strict=True):
            out.append(token)
            out_logq.append(value)
            if token == eos:
                break
        return out, out_logq

    def base_logp(prefix: list[int], suffix: list[int]) -> list[float]:
        if not suffix:
            return []
        ids = torch.tensor([prompt + prefix + suffix], device=device)
        logits = model(input_ids=ids, logits_to_keep=len(suffix) + 1).logits[0, :-1].float()
        chosen = torch.tensor(suffix, device=device)
        return (logits.log_softmax(-1).gather(-1, chosen[:, None]).squeeze(1)).tolist()

    return propose, base_logp


def tabular_proposal(
    log_p: torch.Tensor, vocab_size: int, eos: int, alpha: float, rng: random.Random
) -> tuple[Propose, BaseLogp]:
    """``propose`` (ancestral sampling at T = 1/α) and ``base_logp`` of :func:`power_sample` on an
    enumerable model: ``log_p[state]`` is the next-token log-distribution (``vocab_size`` tokens
    and EOS = ``eos``) of each prefix, the prefixes of length ``l`` numbered after those shorter
    (offset ``Σ_{j<l} V^j``) in base-``V`` order."""
    vocab = vocab_size
    log_q = (alpha * log_p).log_softmax(-1)
    q_rows, p_rows = log_q.tolist(), log_p.tolist()
    cumulative = log_q.exp().cumsum(-1).tolist()
    actions = list(range(vocab + 1))

    def state(prefix: list[int]) -> tuple[int, int]:
        offset, index = 0, 0
        for position, token in enumerate(prefix):
            offset, index = offset + vocab**position, index * vocab + token
        return offset, index

    def propose(prefix: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        (offset, index), out, logq = state(prefix), [], []
        for position in range(len(prefix), len(prefix) + max_tokens):
            token = rng.choices(actions, cum_weights=cumulative[offset + index])[0]
            out.append(token)
            logq.append(q_rows[offset + index][token])
            if token == eos:
                break
            offset, index = offset + vocab**position, index * vocab + token
        return out, logq

    def base_logp(prefix: list[int], suffix: list[int]) -> list[float]:
        (offset, index), values = state(prefix), []
        for position, token in enumerate(suffix, start=len(prefix)):
            values.append(p_rows[offset + index][token])
            offset, index = offset + vocab**position, index * vocab + token
        return values

    return propose, base_logp
