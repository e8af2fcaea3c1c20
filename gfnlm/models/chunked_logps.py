"""Log-probs of chosen tokens without materialising ``[B, T, V]`` logits.

A causal LM's update needs, at each of the ``N = B·(T+1)`` positions that predict a response token
(or EOS after the last one), three numbers: the chosen token's log-prob, EOS's log-prob and (when
asked) the entropy. The plain way gets them from the full logits tensor, ``N × V`` values (fp32 at
``B = 8``, ``T = 3,000``, ``V = 151,936``: 14.6 GB), and autograd keeps it and its widened copies
for the backward pass.

Here the final hidden states ``h`` (``N × H``) go through the output layer ``W`` (``V × H``) ``C``
positions at a time. For each chunk the logits ``z = h_c Wᵀ`` are computed, reduced to
``logsumexp(z)``, ``z[y] − lse`` and ``z[EOS] − lse`` (and ``lse − Σ p·z`` for the entropy), and
dropped, but for the last chunk's; only ``[N]`` vectors survive of the others. The backward pass
recomputes each other chunk's logits from the saved ``h`` and ``W``, reads the kept last chunk's
(as its probabilities where no entropy was asked for), and applies the closed-form gradient of
those reductions,

    ∂/∂z_j  = g_tok·(1[j = y] − p_j) + g_eos·(1[j = EOS] − p_j) − g_ent·p_j·(log p_j + H),

then ``∂h_c = (∂z) W`` and ``∂W += (∂z)ᵀ h_c``. Memory: the live logits are ``C × V`` (plus two or
three temporaries of that size), independent of ``T``, against ``N × V`` and several copies for the
plain path; at ``C = 512``, ``V = 151,936`` a fp32 chunk is 311 MB. What is saved for backward is
``h`` (``N × H``, which the model's graph holds anyway), ``[N]`` vectors and the last chunk's
``C × V`` buffer. The price is one more ``(N − C) × H × V`` matmul in the backward pass (the
recomputed logits): none where every position fits in one chunk (a short-response batch, as the
default config's), at most a third more output-layer work than the plain path's forward + backward.

The output layer is read from the model (``get_output_embeddings()``, a plain ``nn.Linear``; tied
embeddings are the same tensor), so full fine-tuning gets ``W``'s gradient, LoRA (whose adapter does
not touch the output layer) does not compute it, and DDP / FSDP2 see the gradient arrive on the
parameter as from the model's own ``lm_head``. Under autocast the chunk's matmul runs in the
autocast dtype as ``lm_head`` does, and the reductions in float32 (float64 stays float64).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfnlm.contracts.errors import RunError


def wide(tensor: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 logits are widened; float64 stays float64)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _chunk_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, torch.dtype]:
    """One chunk's logits widened to ≥ float32, and the dtype the layer produced them in."""
    logits = F.linear(hidden, weight, bias)
    return wide(logits), logits.dtype


def _chunk_forward(
    logits: Tensor, targets: Tensor, eos_token_id: int, statistics: bool, keep: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """``log p(target)``, ``log p(EOS)``, ``lse`` and (``statistics``) entropy ``lse − Σ p·z`` and
    self-certainty ``KL(U ‖ π) = lse − mean(z) − log|V|`` of one chunk's logits (one temporary of
    the chunk's size at most, with ``statistics``). Without ``statistics`` the logits are
    overwritten: by their probabilities where ``keep``, else by scratch."""
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    eos = logits[:, eos_token_id].clone()
    top = logits.amax(-1)
    entropy = certainty = None
    if statistics:
        lse = logits.logsumexp(-1)
        certainty = lse - logits.mean(-1) - math.log(logits.shape[-1])
        entropy = lse - (logits - lse.unsqueeze(-1)).exp_().mul_(logits).sum(-1)
    elif keep:  # the probabilities exp(z − lse), as the backward pass computes them from the logits
        lse = logits.logsumexp(-1)
        logits.sub_(lse.unsqueeze(-1)).exp_()
    else:  # logsumexp in place: max, then exp of the shifted logits
        lse = logits.sub_(top.unsqueeze(-1)).exp_().sum(-1).log_().add_(top)
    return chosen - lse, eos - lse, lse, entropy, certainty


class _ChunkedLogProbs(torch.autograd.Function):
    """``(h, W, b, targets)`` → per-position ``log p(target)``, ``log p(EOS)`` and, with
    ``statistics``, entropy and self-certainty (the last without gradient); chunks of ``C`` rows."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        eos_token_id: int,
        chunk_size: int,
        statistics: bool,
    ) -> tuple[Tensor, ...]:
        rows = hidden.shape[0]
        token_logp = eos_logp = lse_all = entropy = certainty = None
        last = (rows - 1) // chunk_size * chunk_size
        # The last chunk's logits (or probabilities) stay for the backward pass, which then need
        # not recompute them: one chunk-sized buffer held in between, one output-layer matmul saved.
        keep_last = any(ctx.needs_input_grad[:3])
        ctx.kept = None
        for start in range(0, rows, chunk_size):
            part = slice(start, start + chunk_size)
            logits, ctx.produced = _chunk_logits(hidden[part], weight, bias)
            if token_logp is None:
                token_logp, eos_logp, lse_all = (logits.new_empty(rows) for _ in range(3))
                if statistics:
                    entropy, certainty = logits.new_empty(rows), logits.new_empty(rows)
            keep = keep_last and start == last
            values = _chunk_forward(logits, targets[part], eos_token_id, statistics, keep)
            if keep:
                ctx.kept = logits
            del logits
            token_logp[part], eos_logp[part], lse_all[part] = values[:3]
            if statistics:
                entropy[part], certainty[part] = values[3:]
        if entropy is None:
            entropy = certainty = token_logp.new_empty(0)
        ctx.set_materialize_grads(
            False
        )  # an unused output (e.g. a logged entropy) costs no backward work
        ctx.save_for_backward(hidden, weight, bias, targets, lse_all, entropy)
        ctx.eos_token_id, ctx.chunk_size, ctx.statistics, ctx.last = (
            eos_token_id,
            chunk_size,
            statistics,
            last,
        )
        ctx.mark_non_differentiable(certainty)
        return token_logp, eos_logp, entropy, certainty

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(
        ctx,
        grad_token: Tensor | None,
        grad_eos: Tensor | None,
        grad_entropy: Tensor | None,
        _grad_certainty: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse_all, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=wide(weight).dtype, device=weight.device)
            if need_weight
            else None
        )
        grad_bias = (
            torch.zeros(bias.shape, dtype=wide(bias).dtype, device=bias.device)
            if need_bias
            else None
        )
        with_entropy = grad_entropy is not None and entropy.numel() > 0
        for start in reversed(
            range(0, hidden.shape[0], ctx.chunk_size)
        ):  # the kept last chunk first, then freed
            part = slice(start, start + ctx.chunk_size)
            if (
                start == ctx.last and ctx.kept is not None
            ):  # the forward pass's buffer, used once, in place
                logits, ctx.kept = ctx.kept, None
                is_probs = not ctx.statistics  # the forward pass left probabilities there
            else:
                logits, is_probs = _chunk_logits(hidden[part], weight, bias)[0], False
            values = logits if is_probs else logits.sub_(lse_all[part].unsqueeze(-1))
            grad_logits = _chunk_logit_grad(
                values,
                is_probs,
                targets[part],
                lse_all[part],
                ctx.eos_token_id,
                None if grad_token is None else grad_token[part],
                None if grad_eos is None else grad_eos[part],
                entropy[part] if with_entropy else None,
                grad_entropy[part] if with_entropy else None,
            )
            del logits, values
            grad_logits = grad_logits.to(ctx.produced)
            if need_hidden:
                grad_hidden[part] = grad_logits @ weight.to(ctx.produced)
            if need_weight:
                grad_weight += (grad_logits.T @ hidden[part].to(ctx.produced)).to(grad_weight.dtype)
            if need_bias:
                grad_bias += grad_logits.sum(0).to(grad_bias.dtype)
            del (
                grad_logits
            )  # before the next chunk's logits exist: one chunk-sized buffer at a time
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _chunk_logit_grad(
    values: Tensor,
    is_probs: bool,
    targets: Tensor,
    lse: Tensor,
    eos_token_id: int,
    grad_token: Tensor | None,
    grad_eos: Tensor | None,
    entropy: Tensor | None,
    grad_entropy: Tensor | None,
) -> Tensor:
    """∂loss/∂z for one chunk, in ≥ float32, from its log-probs ``values`` (or, ``is_probs``, its
    probabilities, where the entropy has no gradient). Built in their buffer (plus one temporary
    when the entropy has a gradient)."""
    zero = lse.new_zeros(lse.shape)
    g_token = zero if grad_token is None else grad_token.to(lse.dtype)
    g_eos = zero if grad_eos is None else grad_eos.to(lse.dtype)
    g_probs = (g_token + g_eos).unsqueeze(-1)
    if grad_entropy is None:
        grad = (values if is_probs else values.exp_()).mul_(-g_probs)
    else:  # ∂H/∂z_j = −p_j (log p_j + H)
        assert not is_probs, "an entropy gradient needs the chunk's log-probs"
        log_probs = values
        probs = log_probs.exp()
        grad = log_probs.add_(entropy.unsqueeze(-1)).mul_(-grad_entropy.to(lse.dtype).unsqueeze(-1))
        grad.sub_(g_probs).mul_(probs)
        del probs
    grad.scatter_add_(-1, targets.unsqueeze(-1), g_token.unsqueeze(-1))
    grad[:, eos_token_id] += g_eos
    return grad


def chunked_logps(
    hidden: Tensor,
    output_layer: nn.Linear,
    targets: Tensor,
    eos_token_id: int,
    chunk_size: int,
    statistics: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-position log-probs of ``targets`` and of EOS from final hidden states ``[..., H]``.

    ``targets`` has the leading shape of ``hidden``. Returns ``(token_logp, eos_logp, entropy,
    self_certainty)`` shaped like ``targets``; the last two are ``None`` unless ``statistics``
    (self-certainty never carries a gradient). Gradients flow to ``hidden`` and to the output
    layer's weight and bias where they require it, recomputing each chunk's logits.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: must be >= 1")
    shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    token_logp, eos_logp, entropy, certainty = _ChunkedLogProbs.apply(
        flat_hidden,
        output_layer.weight,
        output_layer.bias,
        targets.reshape(-1),
        eos_token_id,
        chunk_size,
        statistics,
    )
    if not statistics:
        return token_logp.view(shape), eos_logp.view(shape), None, None
    return token_logp.view(shape), eos_logp.view(shape), entropy.view(shape), certainty.view(shape)


def output_layer_of(model: nn.Module) -> nn.Linear:
    """The model's output projection (under a PEFT wrapper: the wrapped model's), which must be a
    plain ``nn.Linear`` for the chunked path (e.g. not a LoRA-adapted ``lm_head``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer = inner.get_output_embeddings()
    if type(layer) is not nn.Linear:
        raise RunError(
            f"the model's output layer is a {type(layer).__name__}, not a plain Linear: chunked "
            f"log-probs cannot run on it; set model.logp_chunk_size=0"
        )
    return layer


@contextmanager
def final_hidden_states(model: nn.Module) -> Iterator[list[Tensor]]:
    """Inside the block, every forward pass of ``model`` appends its decoder's output (the
    normalised final hidden states ``[B, S, H]`` that the output layer reads) to the yielded
    list."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    captured: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        captured.append(
            output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        )

    handle = inner.get_decoder().register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def check_output_layer(logits: Tensor, hidden: Tensor, output_layer: nn.Linear) -> None:
    """The model's own logits at a position equal its output layer applied to the captured hidden
    state there; otherwise the model transforms logits further (soft-capping, scaling) and the
    chunked path would compute something else."""
    with torch.no_grad():
        recomputed = output_layer(hidden)
        if not torch.allclose(wide(recomputed), wide(logits), rtol=1e-3, atol=1e-3):
            raise RunError(
                "the model's logits are not its output layer applied to its final hidden states "
                "(logit soft-capping or scaling?): set model.logp_chunk_size=0"
            )
