"""Batched decoding with a KV cache on a Hugging Face causal LM: the token distribution (softmax of
logits / temperature, then top-p, then min-p), the decoding loop that prefills each prompt once and
shares its cache with its samples, and the :class:`~gfnlm.contracts.types.Rollouts` it yields.

Rows are grouped by prompt: the ``n`` samples of prompt ``i`` are rows ``i*n … i*n+n-1``. The
expansion from prompts to samples is written with einops (``"prompt ... -> (prompt sample) ..."``),
which names that layout where ``repeat_interleave`` leaves it implicit.
"""

from typing import Any

import einops
import torch
from transformers import DynamicCache, MinPLogitsWarper

from gfnlm.contracts.types import PromptBatch, Rollouts
from gfnlm.models.chunked_logps import wide


def responses_from_generation(
    sequences: torch.Tensor, prompt_len: int, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Response ids (padding after the first EOS), mask (EOS included), lengths, ended-with-EOS."""
    generated = sequences[:, prompt_len:]
    is_eos = generated == eos_token_id
    ended = is_eos.any(-1)
    # Index of the first EOS; rows without one keep every generated position (truncated).
    last_kept = torch.where(ended, is_eos.long().argmax(-1), generated.shape[1] - 1)
    positions = torch.arange(generated.shape[1], device=generated.device)
    mask = positions[None, :] <= last_kept[:, None]
    response_ids = torch.where(mask, generated, torch.full_like(generated, pad_token_id))
    return response_ids, mask, mask.sum(-1), ended


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as ``transformers``' TopPLogitsWarper: drop the least likely tokens whose
    cumulative probability is <= 1 - top_p (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -torch.inf)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p truncation (Nguyen et al. 2024) by ``transformers``' MinPLogitsWarper, the one
    ``generate`` applies: drop the tokens whose probability is below ``min_p`` times the most likely
    token's (the most likely token always stays); 0 = off."""
    if min_p <= 0.0:
        return logits
    return MinPLogitsWarper(min_p=min_p)(None, logits)


def next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    greedy: bool,
    min_p: float = 0.0,
    exploration: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step from ``[B, V]`` logits: tokens and their log-probs under the processed
    distribution (temperature, top-p, then min-p, the order of ``generate``; 0 for greedy: the
    choice is deterministic). An ``exploration`` component maps the processed distribution to the
    one actually sampled (and whose log-probs are returned)."""
    if greedy:
        return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
    logp = min_p_filter(top_p_filter(wide(logits) / temperature, top_p), min_p).log_softmax(-1)
    if exploration is not None:
        logp = exploration.behaviour_log_probs(logp)
    tokens = torch.multinomial(logp.exp(), 1).squeeze(1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(1)


@torch.no_grad()
def decode_with_cache(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    n: int,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    min_p: float = 0.0,
    synced: bool = False,
    exploration: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` continuations of each left-padded prompt: generated ids ``[B*n, W]`` (pad after EOS;
    rows grouped by prompt) and their behaviour log-probs, ``W <= max_new_tokens``.

    The prompts are prefilled once and the cache repeated ``n`` times; finished rows are dropped
    from the cache, so each step runs only the rows still generating. ``synced``: always run
    ``max_new_tokens`` steps on every row (FSDP2: every rank must make the same forward passes).
    ``exploration``: see :func:`next_tokens`.
    """
    mask = prompt_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=prompt_ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits = per_sample(out.logits[:, -1], n)
    mask = per_sample(mask, n)
    next_position = per_sample(positions[:, -1], n) + 1
    rows = torch.arange(mask.shape[0], device=mask.device)  # output row of each live batch row
    tokens = torch.full(
        (mask.shape[0], max_new_tokens), pad_token_id, dtype=torch.long, device=mask.device
    )
    logps = torch.zeros(tokens.shape, dtype=wide(logits).dtype, device=mask.device)
    width = 0
    for step in range(max_new_tokens):
        token, logp = next_tokens(logits, temperature, top_p, greedy, min_p, exploration)
        tokens[rows, step], logps[rows, step] = token, logp
        width = step + 1
        alive = token != eos_token_id
        if step == max_new_tokens - 1 or not (alive.any() or synced):
            break
        if not alive.all() and not synced:
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, mask, next_position = (
                rows[keep],
                token[keep],
                mask[keep],
                next_position[keep],
            )
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position[:, None],
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return tokens[:, :width], logps[:, :width]


def per_sample(per_prompt: torch.Tensor, n: int) -> torch.Tensor:
    """A per-prompt tensor repeated for each of the prompt's ``n`` samples, rows grouped by
    prompt."""
    return einops.repeat(per_prompt, "prompt ... -> (prompt sample) ...", sample=n)


def rollouts_from_generated(
    policy: Any, prompts: PromptBatch, n: int, generated: torch.Tensor, behaviour: torch.Tensor
) -> Rollouts:
    """The :class:`Rollouts` of ``n`` generated continuations per prompt (rows grouped by prompt):
    ``generated`` ``[N*n, W]`` may hold anything after a row's first EOS; ``behaviour`` holds the
    per-token log-probs to record (zeroed past each response)."""
    device, pad = policy.device, policy.tokenizer.pad_token_id
    prompt_ids = per_sample(prompts.prompt_ids.to(device), n)
    prompt_mask = per_sample(prompts.prompt_mask.to(device), n)
    response_ids, mask, lengths, ended = responses_from_generation(
        torch.cat([prompt_ids, generated.to(device)], 1),
        prompt_ids.shape[1],
        policy.eos_token_id,
        pad,
    )
    texts = tuple(
        policy.tokenizer.batch_decode(
            response_ids.masked_fill(~mask, pad), skip_special_tokens=True
        )
    )
    prompt_text = (
        None
        if prompts.prompt_text is None
        else tuple(t for t in prompts.prompt_text for _ in range(n))
    )
    labels = None if prompts.labels is None else tuple(a for a in prompts.labels for _ in range(n))
    return Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.bool(),
        response_ids=response_ids,
        response_mask=mask,
        lengths=lengths,
        ended_with_eos=ended,
        group=per_sample(torch.arange(len(prompts), device=device), n),
        prompt_index=per_sample(prompts.prompt_index.to(device), n),
        behaviour_logp=behaviour.to(device).masked_fill(~mask, 0.0),
        response_text=texts,
        prompt_text=prompt_text,
        labels=labels,
    )
