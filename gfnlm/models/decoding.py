"""Batched decoding with a KV cache on a Hugging Face causal LM: the token distribution (softmax of
logits / temperature, then top-p, then min-p), the decoding loops that prefill each prompt once and
share its cache with its samples, and the :class:`~gfnlm.contracts.types.Rollouts` they yield.

Two loops draw the same tokens: :func:`decode_with_cache` (a ``DynamicCache`` that drops finished
rows: the least work, the choice on CPU) and :func:`decode_with_static_cache` (fixed shapes, so that
on CUDA each one-token step is one CUDA graph launch instead of hundreds of operator launches, which
is what bounds small-batch decoding on a GPU). :func:`decode` picks one.

Rows are grouped by prompt: the ``n`` samples of prompt ``i`` are rows ``i*n … i*n+n-1``. The
expansion from prompts to samples is written with einops (``"prompt ... -> (prompt sample) ..."``),
which names that layout where ``repeat_interleave`` leaves it implicit.
"""

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import einops
import torch
from transformers import DynamicCache, MinPLogitsWarper, StaticCache
from transformers.cache_utils import StaticLayer

from gfnlm.contracts.errors import ConfigError
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


# A graph capture: run the step once (a real step), record it, and return that run's logits and a
# replay function, or None where it cannot record (see :func:`capture_cuda_graph`).
Capture = Callable[
    [Callable[[], torch.Tensor]], tuple[torch.Tensor, Callable[[], torch.Tensor] | None]
]

DECODING_MODES = ("auto", "dynamic", "static")
# Attention implementations that accept the prepared 4D mask the static path passes.
STATIC_ATTENTION = ("sdpa", "eager")


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
    draw = partial(
        next_tokens,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        min_p=min_p,
        exploration=exploration,
    )
    cache, logits, mask, next_position = prefill(model, prompt_ids, prompt_mask)
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits, mask, next_position = (per_sample(x, n) for x in (logits, mask, next_position))
    tokens, logps = _outputs(mask.shape[0], max_new_tokens, pad_token_id, logits)
    rows = torch.arange(mask.shape[0], device=mask.device)  # output row of each live batch row
    width = 0
    for step in range(max_new_tokens):
        token, logp = draw(logits)
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


@torch.no_grad()
def decode_with_static_cache(
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
    graph: Capture | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`decode_with_cache` returns, with the same distribution and the same random draws
    (under one seed, the same tokens up to the float rounding of the logits), decoded with fixed
    shapes: a ``transformers`` ``StaticCache`` of ``prompt + max_new_tokens`` slots for every row,
    and one-token steps that always run all ``B*n`` rows (a finished row keeps being fed, and its
    output ignored, so that no shape changes from step to step).

    Fixed shapes let the one-token step be recorded once and replayed: ``graph`` is a
    :data:`Capture` (on CUDA :func:`capture_cuda_graph`: one launch per step instead of one per
    operator); ``None`` runs every step eagerly (on CPU). The prompt pass is
    :func:`decode_with_cache`'s (each prompt once), copied into the static cache ``n`` times. LoRA
    adapters stay unmerged: merging them into the weights for sampling and out after would not give
    the same weights back in floating point, and the behaviour log-probs must be the policy's.
    """
    draw = partial(
        next_tokens,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        min_p=min_p,
        exploration=exploration,
    )
    prompt_cache, logits, mask, next_position = prefill(model, prompt_ids, prompt_mask)
    prompt_len = mask.shape[1]
    cache = static_cache_from(prompt_cache, model.config, n, prompt_len + max_new_tokens)
    del prompt_cache
    logits, mask, next_position = (per_sample(x, n) for x in (logits, mask, next_position))
    batch = mask.shape[0]
    # The step's inputs live in fixed buffers, updated in place: a replayed graph reads them there.
    slots = prompt_len + max_new_tokens
    attend = torch.zeros(batch, 1, 1, slots, dtype=torch.bool, device=mask.device)
    attend[:, 0, 0, :prompt_len] = mask.bool()
    step_ids = torch.full((batch, 1), pad_token_id, dtype=torch.long, device=mask.device)
    step_positions = next_position[:, None].clone()
    attention_mask = attention_mask_for(model, attend)

    def forward() -> torch.Tensor:
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask(),
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1]

    step_logits = forward if graph is None else _GraphedStep(forward, graph, cache)
    tokens, logps = _outputs(batch, max_new_tokens, pad_token_id, logits)
    rows = torch.arange(batch, device=mask.device)  # the rows still generating
    width = 0
    for step in range(max_new_tokens):
        # Only the live rows are drawn, in order, as decode_with_cache does: the same random stream.
        token, logp = draw(logits[rows])
        tokens[rows, step], logps[rows, step] = token, logp
        width = step + 1
        alive = token != eos_token_id
        if step == max_new_tokens - 1 or not (alive.any() or synced):
            break
        if not alive.all() and not synced:
            rows, token = rows[alive], token[alive]
        step_ids[rows, 0] = token
        attend[:, 0, 0, prompt_len + step] = True
        logits = step_logits()
        step_positions += 1
    return tokens[:, :width], logps[:, :width]


def decode(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    n: int,
    *,
    decoding: str = "auto",
    synced: bool = False,
    **settings: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_with_cache` or :func:`decode_with_static_cache`, as ``decoding`` says (one of
    :data:`DECODING_MODES`): ``dynamic`` the first, ``static`` the second (with a CUDA graph on
    CUDA, unless ``synced``), ``auto`` the static path with a graph on CUDA where the model allows
    it (:func:`static_decoding_unsupported`) and the dynamic one elsewhere. ``settings``: the
    keyword arguments both take (``max_new_tokens``, ``eos_token_id``, the distribution's)."""
    static, graph = decoding_plan(decoding, model, prompt_ids.device, synced)
    if not static:
        return decode_with_cache(model, prompt_ids, prompt_mask, n, synced=synced, **settings)
    capture = capture_cuda_graph if graph else None
    return decode_with_static_cache(
        model, prompt_ids, prompt_mask, n, synced=synced, graph=capture, **settings
    )


def decoding_plan(
    decoding: str, model: torch.nn.Module, device: torch.device, synced: bool
) -> tuple[bool, bool]:
    """``(static cache, CUDA graph)`` for a ``decoding`` mode (see :func:`decode`). A graph is
    never captured under ``synced`` decoding: FSDP2 gathers weights with collectives inside the
    forward pass."""
    cuda = device.type == "cuda" and not synced
    if decoding == "dynamic":
        return False, False
    if decoding == "static":
        return True, cuda
    if decoding == "auto":
        use = cuda and static_decoding_unsupported(model) is None
        return use, use
    raise ConfigError(f"decoding={decoding!r}: must be one of {', '.join(DECODING_MODES)}")


def static_decoding_unsupported(model: torch.nn.Module) -> str | None:
    """Why :func:`decode_with_static_cache` cannot run ``model`` (``None``: it can). It needs every
    layer to keep a full static cache (no sliding window or linear-attention layers) and an
    attention implementation that takes a prepared 4D mask."""
    config = model.config
    attention = getattr(config, "_attn_implementation", None)
    if attention not in STATIC_ATTENTION:
        return f"attention implementation {attention!r} (the static path needs sdpa or eager)"
    layers = StaticCache(config=config, max_cache_len=1).layers  # allocates nothing yet
    kinds = sorted({type(layer).__name__ for layer in layers if type(layer) is not StaticLayer})
    if kinds:
        return f"the model's cache has {', '.join(kinds)} layers (the static path needs full ones)"
    return None


def prefill(
    model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the left-padded prompts: their ``DynamicCache``, the next-token logits
    ``[N, V]``, the mask ``[N, P]`` (long) and the position of each prompt's next token ``[N]``."""
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
    return cache, out.logits[:, -1], mask, positions[:, -1] + 1


def static_cache_from(
    prompt_cache: DynamicCache, config: Any, n: int, max_cache_len: int
) -> StaticCache:
    """A ``StaticCache`` of ``max_cache_len`` slots holding each prompt's keys and values ``n``
    times (rows grouped by prompt), filled up to the prompt length; one layer is copied at a time,
    so the repeated copy never exists for the whole model at once."""
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    for static, prompt in zip(cache.layers, prompt_cache.layers, strict=True):
        static.update(per_sample(prompt.keys, n), per_sample(prompt.values, n))
    return cache


def attention_mask_for(model: torch.nn.Module, attend: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The 4D mask the model's attention takes, from the boolean ``attend`` ``[B, 1, 1, L]`` (True:
    the slot is seen): sdpa takes it as it is; eager adds it to the scores, so it gets 0 / the most
    negative value. A 4D mask is passed to the model as it is, so no mask is built inside the step
    (which would read the cache's length on the host)."""
    if model.config._attn_implementation != "eager":
        return lambda: attend
    dtype = model.get_input_embeddings().weight.dtype
    seen = torch.zeros((), dtype=dtype, device=attend.device)
    unseen = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=attend.device)
    return lambda: torch.where(attend, seen, unseen)


def capture_cuda_graph(
    forward: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, Callable[[], torch.Tensor] | None]:
    """Run ``forward()`` once on a side stream (a real decoding step, which also warms up cuBLAS
    and the allocator outside the capture), then record it as a CUDA graph; returns that run's
    output and ``replay()``, which launches the whole step at once and returns the graph's output
    tensor (overwritten by the next replay), or ``None`` with a warning where the step cannot be
    captured (an operator that waits on the host, say).

    ``torch.cuda.graphs`` directly rather than ``torch.compile(mode="reduce-overhead")``: a graph
    replays the very kernels of the eager step, so the behaviour log-probs are the eager model's
    (a compiled step fuses operators and rounds differently), capture takes one pass instead of
    minutes of compilation for each new shape, and nothing recompiles when an adapter is switched
    off. The graph lives for one decoding call only: the weights cannot change under it, which also
    makes it safe to read autocast's cached half-precision weights.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        first = forward()
    torch.cuda.current_stream().wait_stream(stream)
    first.record_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    try:
        # thread_local: CUDA calls another thread makes meanwhile do not invalidate the capture.
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            output = forward()  # recorded, not run: the cache is where the first run left it
    except RuntimeError as error:
        warnings.warn(f"decoding runs without a CUDA graph: capture failed ({error})", stacklevel=2)
        return first, None

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return first, replay


class _GraphedStep:
    """The one-token step replayed from a graph: the first call runs it and captures it, the
    second replays it and checks the replay against an eager run of the same step (the cache
    rewound by one slot in between), later calls replay. Without a replay (the capture failed, or
    the check did), the steps run eagerly."""

    def __init__(self, forward: Callable[[], torch.Tensor], capture: Capture, cache: StaticCache):
        self.forward, self.capture, self.cache = forward, capture, cache
        self.replay: Callable[[], torch.Tensor] | None = None
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            first, self.replay = self.capture(self.forward)
            return first
        if self.replay is None:
            return self.forward()
        if self.calls == 2:
            return self._checked_replay(self.replay)
        return self.replay()

    def _checked_replay(self, replay: Callable[[], torch.Tensor]) -> torch.Tensor:
        replayed = wide(replay()).clone()
        for layer in self.cache.layers:  # the eager run writes the replayed slot again
            layer.cumulative_length.sub_(1)
        eager = self.forward()
        # A loose bound: it catches a graph that reads stale inputs, not rounding.
        if not torch.allclose(replayed, wide(eager), rtol=1e-2, atol=1e-2):
            gap = float((replayed - wide(eager)).abs().max())
            warnings.warn(f"decoding runs without a CUDA graph: its replay differs by {gap:.3g}")
            self.replay = None
        return eager


def _outputs(
    batch: int, max_new_tokens: int, pad_token_id: int, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated ids (pad) and behaviour log-probs (0), ``[batch, max_new_tokens]`` each."""
    tokens = torch.full(
        (batch, max_new_tokens), pad_token_id, dtype=torch.long, device=logits.device
    )
    return tokens, torch.zeros(tokens.shape, dtype=wide(logits).dtype, device=logits.device)


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
