"""A Hugging Face causal LM as a policy: one forward pass →
:class:`~gfnlm.contracts.types.PolicyEval`, and the base model's log-probs (adapter disabled, or a
frozen copy) → :class:`SequenceLogProbs`.

Log-probs are computed only at the ``T+1`` positions that predict response tokens, so the output
layer never runs over the prompt. By default (``model.logp_chunk_size`` > 0) the final hidden states
go through the output layer a chunk of positions at a time (:mod:`gfnlm.models.chunked_logps`), so
``[B, T+1, V]`` logits never exist; entropy and self-certainty are computed at every position only
when a component asks for them (``token_statistics``, ``entropy_grad``), otherwise on an evenly
spaced subsample of positions for logging. ``logp_chunk_size=0`` is the plain path: full logits
from the model, reduced by a gather and a logsumexp.
"""

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from gfnlm.contracts.errors import ConfigError, RunError
from gfnlm.contracts.types import PolicyEval, Rollouts, SequenceLogProbs
from gfnlm.models.chunked_logps import (
    check_output_layer,
    chunked_logps,
    final_hidden_states,
    output_layer_of,
    wide,
)
from gfnlm.models.loading import load_tokenizer
from gfnlm.models.packing import pack
from gfnlm.models.weights import full_tensor, place_like
from gfnlm.training.checkpoint import ADAPTER_DIR
from gfnlm.training.config import ModelConfig


class CausalLMPolicy(nn.Module):
    """The trainable policy (optionally LoRA) and access to its base model."""

    # What the policy's evaluation offers beyond log-probs, for components that require it.
    provides: ClassVar[frozenset[str]] = frozenset(
        {"prompt_hidden", "entropy_grad", "token_statistics"}
    )

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        device: torch.device,
        keep_base: bool = True,
        entropy_grad: bool = False,
        token_statistics: bool = False,
    ) -> None:
        """``keep_base=False``: without LoRA, no frozen copy of the base model is made (half the
        memory; :meth:`base_model` and :meth:`score_base` are then unavailable), e.g. for export.
        ``entropy_grad`` and ``token_statistics``: see :meth:`evaluate` (what an objective
        requires)."""
        super().__init__()
        self.config = config
        self.device = device
        self.tokenizer = tokenizer
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.use_bf16 = device.type == "cuda" and config.dtype in ("auto", "bfloat16")
        if config.dtype == "bfloat16" and device.type == "cpu":
            model = model.to(torch.bfloat16)
        if config.dtype == "float64":  # exactness checks (e.g. distributed parity tests)
            model = model.to(torch.float64)
        frozen_base = None
        if config.lora:
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets),
                task_type="CAUSAL_LM",
            )
            with warnings.catch_warnings():
                # peft reads transformers' deprecated is_gradient_checkpointing alias: a
                # FutureWarning on every run that is neither the user's nor gfnlm's to act on.
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                model = get_peft_model(model, lora)
        elif keep_base:
            frozen_base = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = model.to(device)
        # Kept outside the module tree so it is never saved, optimised or counted as the policy.
        self._frozen_base = [frozen_base.to(device)] if frozen_base is not None else []
        # The update's pass layout: "packed" (one pass, see gfnlm.models.packing) or "buckets".
        self.logp_pass = _logp_pass(config, device, self.model)
        self._checkpointed_layers = _checkpointing_layers(self.model, config)
        # Bucket passes: one pass over each distinct prompt, shared by its samples (off under
        # gradient checkpointing, which recomputes layers without a KV cache).
        self.share_prompts = not config.gradient_checkpointing
        # Decode max_new_tokens steps on every row (FSDP2: every rank must run the same passes).
        self.synced_decoding = False
        # Keep the graph of PolicyEval.entropy (the "entropy_grad" capability, for objectives that
        # minimise it); off by default, where entropy is a no-grad statistic for logging and
        # rewards.
        self.entropy_grad = entropy_grad
        # Entropy and self-certainty at every response position (e.g. for a reward made of them);
        # off by default, where the chunked path estimates the logged entropy from a subsample.
        self.token_statistics = token_statistics
        self.logp_chunk_size = config.logp_chunk_size
        if self.logp_chunk_size:
            with self.decoding():
                _check_chunkable(self.model, self.eos_token_id)

    @classmethod
    def from_config(
        cls, config: ModelConfig, model_dir: Path, device: torch.device, **options: bool
    ) -> "CausalLMPolicy":
        """Load the folder's weights (fp32) and wrap them as configured (``options``: see
        ``__init__``)."""
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return cls(model, tokenizer, config, device, **options)

    @property
    def hidden_size(self) -> int:
        """The model's hidden size (the input width of the MLP log Z head)."""
        return int(self.transformer_config.hidden_size)

    @property
    def transformer_config(self):
        """The underlying Hugging Face model config."""
        return self.model.config

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (the LoRA adapter, or all weights)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only what training changes (the adapter with LoRA, all weights without), as full tensors
        (FSDP2 shards are gathered: every rank must call this)."""
        return {
            n: full_tensor(p.detach()).cpu()
            for n, p in self.model.named_parameters()
            if p.requires_grad
        }

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; fails if a trainable tensor is missing."""
        params = dict(self.model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        if missing:
            raise RunError(
                f"the checkpoint lacks {len(missing)} of the policy's trainable tensors, e.g. "
                f"{missing[0]!r}: it was written for another model.path or LoRA setting"
            )
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(place_like(value, params[name]))

    def adapter_writer(
        self, state: dict[str, Tensor] | None = None
    ) -> Callable[[Path], None] | None:
        """With LoRA, a function that writes the adapter in PEFT's format into ``folder/adapter``
        (``extra_files`` of :func:`gfnlm.training.checkpoint.save_checkpoint`); ``None`` without
        LoRA. ``state`` is :meth:`trainable_state_dict`'s result when the caller has it (already
        gathered under FSDP2, so only rank 0 needs to write)."""
        if not isinstance(self.model, PeftModel):
            return None
        return lambda folder: self.save_adapter(Path(folder) / ADAPTER_DIR, state)

    def save_adapter(
        self, folder: Path, state: dict[str, Tensor] | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Write the LoRA adapter as ``PeftModel.save_pretrained`` does (``adapter_config.json``
        and ``adapter_model.safetensors``; no model card), loadable with
        ``PeftModel.from_pretrained(base, folder)``. ``state``: the trainable tensors (default: the
        policy's own); ``dtype``: cast them."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        if not isinstance(self.model, PeftModel):
            raise RunError(
                "the policy has no LoRA adapter (model.lora=false): there is no adapter to save"
            )
        state = self.trainable_state_dict() if state is None else state
        tensors = get_peft_model_state_dict(
            self.model, state_dict=state, adapter_name="default", save_embedding_layers=False
        )
        tensors = {
            k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
            for k, v in tensors.items()
        }
        config = copy.deepcopy(self.model.peft_config["default"])
        config.inference_mode = True
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = str(self.transformer_config._name_or_path) or None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(str(folder))

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast on CUDA (unless ``model.dtype`` says otherwise); a no-op on CPU."""
        if self.use_bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    @contextlib.contextmanager
    def decoding(self, model: nn.Module | None = None) -> Iterator[None]:
        """Sampling from ``model`` (default: the policy): eval mode (no dropout), no gradient,
        autocast as configured; the training flag is restored afterwards."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast():
                yield
        finally:
            model.train(was_training)

    @contextlib.contextmanager
    def base_model(self) -> Iterator[nn.Module]:
        """The base model: the policy with its adapter disabled, or the frozen copy."""
        if self._frozen_base:
            yield self._frozen_base[0]
        else:
            if not isinstance(self.model, PeftModel):
                raise RunError(
                    "this policy was built with keep_base=False: it has no copy of the base model"
                )
            with self.model.disable_adapter():
                yield self.model

    def evaluate(self, rollouts: Rollouts, need_prompt_hidden: bool = False) -> PolicyEval:
        """One forward pass of the policy (with gradient) over prompt + response; ``entropy`` keeps
        its gradient only when :attr:`entropy_grad` is set (by the trainer, for an objective that
        requires ``entropy_grad``)."""
        if not self.logp_chunk_size:
            return self._evaluate_full_logits(rollouts, need_prompt_hidden)
        statistics = self.token_statistics or self.entropy_grad
        with self.autocast(), self._checkpointing(rollouts):
            final, hidden = self._final_hidden(self.model, rollouts, need_prompt_hidden)
            token_logp, eos_logp, entropy, self_certainty = _chunked_response_logps(
                final, self.model, rollouts, self.eos_token_id, self.logp_chunk_size, statistics
            )
            entropy_sample = (
                None
                if statistics
                else _entropy_sample(final, self.model, rollouts, self.logp_chunk_size)
            )
        if statistics:
            entropy = entropy if self.entropy_grad else entropy.detach()
            entropy, self_certainty = (
                entropy * rollouts.response_mask,
                self_certainty * rollouts.response_mask,
            )
        return PolicyEval(
            token_logp=token_logp,
            eos_logp=eos_logp,
            entropy=entropy,
            prompt_hidden=_prompt_hidden(hidden, rollouts) if need_prompt_hidden else None,
            self_certainty=self_certainty,
            entropy_sample=entropy_sample,
        )

    def _evaluate_full_logits(self, rollouts: Rollouts, need_prompt_hidden: bool) -> PolicyEval:
        """:meth:`evaluate` from the model's full ``[B, T+1, V]`` logits (``logp_chunk_size=0``)."""
        with self.autocast(), self._checkpointing(rollouts):
            logits, hidden = _response_logits(
                self.model, rollouts, need_prompt_hidden, self.share_prompts
            )
        token_logp, eos_logp, lse = _gather_logps(logits, rollouts, self.eos_token_id)
        with contextlib.nullcontext() if self.entropy_grad else torch.no_grad():
            entropy, self_certainty = _token_statistics(logits[:, :-1], lse[:, :-1])
            entropy, self_certainty = (
                entropy * rollouts.response_mask,
                self_certainty * rollouts.response_mask,
            )
        self_certainty = self_certainty.detach()
        return PolicyEval(
            token_logp=token_logp,
            eos_logp=eos_logp,
            entropy=entropy,
            prompt_hidden=_prompt_hidden(hidden, rollouts) if need_prompt_hidden else None,
            self_certainty=self_certainty,
        )

    def _final_hidden(
        self, model: nn.Module, rollouts: Rollouts, need_hidden: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The final hidden states at the ``T+1`` predicting positions ``[B, T+1, H]`` and
        (``need_hidden``) the last layer's over the prompts ``[B, P, H]``, by the configured pass
        layout."""
        if self.logp_pass == "packed":
            return _packed_final_hidden(model, rollouts, need_hidden, self._mask_dtype(model))
        return _response_logits(model, rollouts, need_hidden, self.share_prompts, final_hidden=True)

    def _mask_dtype(self, model: nn.Module) -> torch.dtype:
        """The dtype of the attention's queries, which an additive attention mask must share."""
        return torch.bfloat16 if self.use_bf16 else next(model.parameters()).dtype

    @contextlib.contextmanager
    def _checkpointing(self, rollouts: Rollouts) -> Iterator[None]:
        """Gradient checkpointing on for this update pass when configured
        (``model.gradient_checkpointing``), or when a packed batch's longest response reaches
        ``model.gradient_checkpointing_from`` tokens. The decoder layers (not their submodules:
        dropout is unchanged) are put in training mode for the pass, as transformers checkpoints
        only then and a model loaded without LoRA is in eval mode, and restored afterwards."""
        threshold = self.config.gradient_checkpointing_from
        on = self.config.gradient_checkpointing or (
            self.logp_pass == "packed"
            and threshold > 0
            and int(rollouts.lengths.max()) >= threshold
        )
        if not on or not self._checkpointed_layers:
            yield
            return
        saved = [
            (layer.gradient_checkpointing, layer.training) for layer in self._checkpointed_layers
        ]
        for layer in self._checkpointed_layers:
            layer.gradient_checkpointing = layer.training = True
        try:
            yield
        finally:
            for layer, (flag, training) in zip(self._checkpointed_layers, saved, strict=True):
                layer.gradient_checkpointing, layer.training = flag, training

    @torch.no_grad()
    def score_base(self, rollouts: Rollouts, need_eos_logp: bool) -> SequenceLogProbs:
        """The base model's log-probs over the responses, one forward pass, no gradient."""
        with self.base_model() as base, self.autocast():
            if self.logp_chunk_size:
                final, _ = self._final_hidden(base, rollouts, need_hidden=False)
                token_logp, eos_logp, _, _ = _chunked_response_logps(
                    final, base, rollouts, self.eos_token_id, self.logp_chunk_size, statistics=False
                )
            else:
                logits, _ = _response_logits(
                    base, rollouts, need_hidden=False, share_prompts=self.share_prompts
                )
                token_logp, eos_logp, _ = _gather_logps(logits, rollouts, self.eos_token_id)
        return SequenceLogProbs(token_logp=token_logp, eos_logp=eos_logp if need_eos_logp else None)


# Positions whose entropy is logged when no component needs it at every position.
ENTROPY_SAMPLE_POSITIONS = 256
# Attention implementations that read a custom 4D additive mask (the packed pass's).
PACKED_ATTENTION = ("sdpa", "eager")


def _logp_pass(config: ModelConfig, device: torch.device, model: nn.Module) -> str:
    """``model.logp_pass`` resolved: ``auto`` is packed on CUDA and buckets on CPU; packed needs
    an attention that reads a 4D mask, and the chunked log-prob path.

    Packed cuts the operator calls of an update ~5× (benchmarks/kernel_count_update.py, 24 narrow
    layers, 4 prompts × 8 responses of 8–64 tokens: 28,185 → 5,237 calls, 21,756 → 4,073 launches),
    which is what a GPU pays per step. On 2 CPU cores the matrix products dominate instead, and
    the same update measured 35.5 s (28.1–50.1) bucketed vs 29.3 s (16.0–35.5) packed on a
    loaded machine, 3 updates each: no clear gain, so CPU keeps the layout tuned there."""
    attention = getattr(model.config, "_attn_implementation", None)
    packable = attention in PACKED_ATTENTION and config.logp_chunk_size > 0
    if config.logp_pass == "packed" and not packable:
        raise ConfigError(
            f"model.logp_pass='packed' needs attention {' or '.join(PACKED_ATTENTION)} (this "
            f"model's: {attention!r}) and model.logp_chunk_size > 0 (is "
            f"{config.logp_chunk_size}); use model.logp_pass=buckets"
        )
    if config.logp_pass == "auto":
        return "packed" if device.type == "cuda" and packable else "buckets"
    return config.logp_pass


def _checkpointing_layers(model: nn.Module, config: ModelConfig) -> list[nn.Module]:
    """Make gradient checkpointing ready (off) and return the decoder layers that
    :meth:`CausalLMPolicy._checkpointing` turns it on for, pass by pass; none where it is never
    asked for or the model does not support it."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not (config.gradient_checkpointing or config.gradient_checkpointing_from):
        return []
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        return []
    inner.activation_checkpointing_enable({"use_reentrant": False})
    # Non-reentrant checkpoints compute the gradients of the parameters inside them without an
    # input that requires grad: the embedding hook added for reentrant ones would only add work.
    inner.disable_input_require_grads()
    layers = [m for m in inner.modules() if isinstance(m, GradientCheckpointingLayer)]
    for module in inner.modules():
        # Off everywhere until a pass turns the layers on. The model-level flag must stay off: in
        # training mode transformers reads it to force use_cache=False (with a warning) on every
        # forward, which would drop the sampler's and the prompt pass's KV caches.
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = False
    return layers


def _check_chunkable(model: nn.Module, eos_token_id: int) -> None:
    """Fail at load (one two-token forward) if the model's logits are not its output layer applied
    to its decoder's output, which the chunked path relies on."""
    layer = output_layer_of(model)
    ids = torch.full((1, 2), eos_token_id, dtype=torch.long, device=layer.weight.device)
    with torch.no_grad(), final_hidden_states(model) as captured:
        out = model(input_ids=ids, logits_to_keep=1, use_cache=False)
    check_output_layer(out.logits[:, -1], captured[-1][:, -1], layer)


def _chunked_response_logps(
    final: Tensor,
    model: nn.Module,
    rollouts: Rollouts,
    eos_token_id: int,
    chunk_size: int,
    statistics: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Token log-probs [B, T], EOS log-probs [B, T+1] and (``statistics``) entropy and
    self-certainty [B, T] from the final hidden states at the T+1 predicting positions. The output
    layer runs at the positions a row's response reaches (``k ≤ |y|``) only; the others, padding
    that every consumer masks, are zeros."""
    eos_column = torch.full_like(rollouts.response_ids[:, :1], eos_token_id)
    targets = torch.cat([rollouts.response_ids, eos_column], dim=1)
    reached = torch.arange(targets.shape[1], device=targets.device) <= rollouts.lengths[:, None]
    values = chunked_logps(
        final[reached],
        output_layer_of(model),
        targets[reached],
        eos_token_id,
        chunk_size,
        statistics,
    )
    token_logp, eos_logp, entropy, certainty = (
        None if value is None else value.new_zeros(targets.shape).index_put((reached,), value)
        for value in values
    )
    token_logp = token_logp[:, :-1] * rollouts.response_mask
    if statistics:
        entropy, certainty = entropy[:, :-1], certainty[:, :-1]
    return token_logp, eos_logp, entropy, certainty


@torch.no_grad()
def _entropy_sample(final: Tensor, model: nn.Module, rollouts: Rollouts, chunk_size: int) -> Tensor:
    """The policy's entropy at up to :data:`ENTROPY_SAMPLE_POSITIONS` response positions, evenly
    spaced over the batch's real tokens (deterministic: no draw from the run's random stream)."""
    rows, cols = rollouts.response_mask.nonzero(as_tuple=True)
    if rows.numel() > ENTROPY_SAMPLE_POSITIONS:
        keep = torch.linspace(
            0, rows.numel() - 1, ENTROPY_SAMPLE_POSITIONS, device=rows.device
        ).long()
        rows, cols = rows[keep], cols[keep]
    chosen = final[rows, cols]
    _, _, entropy, _ = chunked_logps(
        chosen,
        output_layer_of(model),
        rollouts.response_ids[rows, cols],
        0,
        chunk_size,
        statistics=True,
    )
    return entropy


# Rows are sorted by response length into at most this many buckets, each run as its own response
# pass no wider than its longest response (left-over padding is where the time would go otherwise:
# in a group of sampled responses the longest is often several times the median).
LENGTH_BUCKETS = 4
# The distinct prompts' common prefix (a chat template's system prompt, shared instructions) runs
# once, in a pass of its own, when that saves more than this many prompt positions: a pass costs
# about as much as 64 positions before its first (SmolLM2-135M on 2 cores: ≈75 ms a pass, reading
# every weight once; ≈1.2 ms a position).
SHARED_PREFIX_MIN_SAVING = 64


def _response_logits(
    model: nn.Module,
    rollouts: Rollouts,
    need_hidden: bool,
    share_prompts: bool = True,
    final_hidden: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Logits at the T+1 positions predicting y_1..y_T and EOS after the last token: [B, T+1, V],
    and (``need_hidden``) the last layer's hidden states over the prompt, [B, P, H]. With
    ``final_hidden``: the final hidden states at those positions, [B, T+1, H], instead of logits
    (the model's output layer then runs on one position per pass only).

    Rows that share a prompt (the ``G`` samples of a group) share ONE forward pass over it: the
    distinct prompts run first with a KV cache (their common prefix once, see
    :func:`_prompt_cache`), which is then indexed out to every row (gradients flow through it), and
    the responses run on top, in up to :data:`LENGTH_BUCKETS` passes of rows of similar length,
    each as wide as its longest response; positions past a row's response (padding, masked by every
    consumer) are zeros. With a chat template's system prompt, sharing halves the tokens a step
    computes, and the buckets skip most of the padding. Without repeated prompts it is one plain
    forward pass.
    """
    prompts, row_prompt = torch.unique(rollouts.prompt_ids, dim=0, return_inverse=True)
    if not share_prompts or prompts.shape[0] == rollouts.batch_size:
        return _full_sequence_logits(model, rollouts, need_hidden, final_hidden)
    rows = torch.arange(rollouts.batch_size, device=row_prompt.device)
    first_row = torch.full_like(row_prompt[: prompts.shape[0]], rollouts.batch_size).scatter_reduce(
        0, row_prompt, rows, "amin"
    )
    with _final_hidden_if(model, final_hidden) as captured:
        no_logits = _no_logits(prompts.device)  # final_hidden: the caller runs the output layer
        prompt_cache, cache_mask, prompt_out = _prompt_cache(
            model,
            prompts,
            rollouts.prompt_mask[first_row].long(),
            need_hidden,
            no_logits if final_hidden else 1,
        )
        first = (
            captured[-1][:, -1:] if final_hidden else prompt_out.logits
        )  # [prompts, 1, ·], predicts y_1
        prompt_lengths = rollouts.prompt_mask.sum(1)
        order = torch.argsort(rollouts.lengths, stable=True)
        parts = []
        for bucket in order.chunk(min(LENGTH_BUCKETS, rollouts.batch_size)):
            width = max(1, int(rollouts.lengths[bucket].max()))
            cache = DynamicCache(config=model.config)
            for index, layer in enumerate(prompt_cache.layers):
                cache.update(
                    layer.keys[row_prompt[bucket]], layer.values[row_prompt[bucket]], index
                )
            attention_mask = torch.cat(
                [cache_mask[row_prompt[bucket]], rollouts.response_mask[bucket, :width].long()],
                dim=1,
            )
            positions = prompt_lengths[bucket, None] + torch.arange(width, device=prompts.device)
            response_out = model(
                input_ids=rollouts.response_ids[bucket, :width],
                attention_mask=attention_mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=no_logits if final_hidden else 0,
            )
            response = captured[-1] if final_hidden else response_out.logits
            values = torch.cat([first[row_prompt[bucket]], response], dim=1)
            parts.append(
                F.pad(values, (0, 0, 0, rollouts.response_ids.shape[1] + 1 - values.shape[1]))
            )
    values = torch.cat(parts)[torch.argsort(order)]
    hidden = prompt_out.hidden_states[-1][row_prompt] if need_hidden else None
    return values, hidden


def _packed_final_hidden(
    model: nn.Module, rollouts: Rollouts, need_hidden: bool, mask_dtype: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    """:func:`_response_logits` (``final_hidden``) as ONE pass over the packed batch
    (:func:`gfnlm.models.packing.pack`): every prompt once per row it shares with its samples'
    responses, no padding but a row's tail, one attention mask for every layer."""
    packed = pack(
        rollouts.prompt_ids,
        rollouts.prompt_mask,
        rollouts.response_ids,
        rollouts.lengths,
        mask_dtype,
    )
    with final_hidden_states(model) as captured:
        out = model(
            input_ids=packed.input_ids,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
            use_cache=False,
            logits_to_keep=_no_logits(packed.input_ids.device),
            output_hidden_states=need_hidden,
        )
    width = captured[-1].shape[-1]
    final = captured[-1].reshape(-1, width)[packed.predicting]
    hidden = (
        out.hidden_states[-1].reshape(-1, width)[packed.prompt_positions] if need_hidden else None
    )
    return final, hidden


def _prompt_cache(
    model: nn.Module, prompts: Tensor, mask: Tensor, need_hidden: bool, logits_to_keep: int | Tensor
) -> tuple[DynamicCache, Tensor, CausalLMOutputWithPast]:
    """KV cache of the distinct left-padded prompts [N, P], its attention mask [N, K], and the
    model's output at the prompts' last tokens (logits as ``logits_to_keep`` says). When it saves
    more than :data:`SHARED_PREFIX_MIN_SAVING` positions, the prompts' common prefix runs once, as
    one row, and the rest of each prompt on top of it, left-padded (the cache then holds prefix,
    padding, rest: attention follows the mask and each key's rotary position, not where the key
    sits)."""
    lengths = mask.sum(1)
    width = prompts.shape[1]
    starts = width - lengths
    real = torch.where(mask.bool(), prompts, -1)
    aligned = torch.stack(
        [row.roll(-int(start)) for row, start in zip(real, starts)]
    )  # right-padded
    same = (aligned == aligned[:1]).all(0).long().cumprod(0)
    common = min(
        int(same.sum()), int(lengths.min()) - 1
    )  # every prompt keeps a token to predict y_1 from
    cache = DynamicCache(config=model.config)
    if need_hidden or (prompts.shape[0] - 1) * common <= SHARED_PREFIX_MIN_SAVING:
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = model(
            input_ids=prompts,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_hidden_states=need_hidden,
        )
        return cache, mask, out
    model(
        input_ids=aligned[:1, :common],
        cache=cache,
        use_cache=True,
        logits_to_keep=_no_logits(prompts.device),
    )
    rest = int(lengths.max()) - common
    suffix_mask = (
        torch.arange(width - rest, width, device=mask.device) >= (starts + common)[:, None]
    ).long()
    expanded = DynamicCache(config=model.config)
    for index, layer in enumerate(cache.layers):
        expanded.update(
            layer.keys.expand(prompts.shape[0], -1, -1, -1),
            layer.values.expand(prompts.shape[0], -1, -1, -1),
            index,
        )
    cache_mask = torch.cat([torch.ones_like(mask[:, :common]), suffix_mask], dim=1)
    positions = common + (suffix_mask.cumsum(-1) - 1).clamp_min(0)
    out = model(
        input_ids=prompts[:, width - rest :],
        attention_mask=cache_mask,
        position_ids=positions,
        cache=expanded,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return expanded, cache_mask, out


def _no_logits(device: torch.device) -> Tensor:
    """``logits_to_keep`` of a pass whose logits nobody reads (no positions): the output layer is
    the largest matrix product of a small model's pass (SmolLM2: 49,152 × 576), and on a slice of
    the last positions PyTorch runs it as a batched product over copies of its weight."""
    return torch.empty(0, dtype=torch.long, device=device)


def _full_sequence_logits(
    model: nn.Module, rollouts: Rollouts, need_hidden: bool, final_hidden: bool = False
) -> tuple[Tensor, Tensor | None]:
    """:func:`_response_logits` as one forward pass over every row's prompt + response."""
    input_ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    attention_mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1).long()
    # Left-padded prompts: positions count real tokens only, as generate() does.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    num_positions = rollouts.response_ids.shape[1] + 1
    keep = _no_logits(input_ids.device) if final_hidden else num_positions
    with _final_hidden_if(model, final_hidden) as captured:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            output_hidden_states=need_hidden,
            use_cache=False,
        )
    hidden = out.hidden_states[-1] if need_hidden else None
    return (captured[-1][:, -num_positions:] if final_hidden else out.logits), hidden


def _final_hidden_if(
    model: nn.Module, capture: bool
) -> contextlib.AbstractContextManager[list[Tensor]]:
    """:func:`~gfnlm.models.chunked_logps.final_hidden_states` when ``capture``, else an unused
    list."""
    return final_hidden_states(model) if capture else contextlib.nullcontext([])


def _gather_logps(
    logits: Tensor, rollouts: Rollouts, eos_token_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Chosen-token log-probs [B, T], EOS log-probs at every prefix [B, T+1], and logsumexp."""
    logits = wide(logits)
    lse = logits.logsumexp(-1)  # [B, T+1]
    chosen = logits[:, :-1].gather(-1, rollouts.response_ids.unsqueeze(-1)).squeeze(-1)
    token_logp = (chosen - lse[:, :-1]) * rollouts.response_mask
    eos_logp = logits[..., eos_token_id] - lse
    return token_logp, eos_logp, lse


def _token_statistics(logits: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Entropy ``lse − Σ p·z`` and self-certainty ``KL(U ‖ π) = lse − mean(z) − log|V|`` per
    position, from one widened copy of the logits."""
    logits = wide(logits)
    probs = (logits - lse.unsqueeze(-1)).exp()
    entropy = lse - (probs * logits).sum(-1)
    return entropy, lse - logits.mean(-1) - math.log(logits.shape[-1])


def _prompt_hidden(hidden: Tensor, rollouts: Rollouts) -> Tensor:
    """The mean last-layer hidden state over each row's real prompt tokens, [B, H]."""
    return _masked_mean(hidden[:, : rollouts.prompt_ids.shape[1]], rollouts.prompt_mask)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TrainableModule(torch.nn.Module):
    """Everything the optimiser updates (the policy and log Z) behind ONE forward call, so that
    DDP sees one forward per backward and averages every gradient, log Z's included."""

    def __init__(self, policy: CausalLMPolicy, logz: torch.nn.Module | None) -> None:
        super().__init__()
        self.policy = policy
        self.logz = logz

    def forward(
        self, rollouts: Rollouts, need_prompt_hidden: bool
    ) -> tuple[Any, torch.Tensor | None]:
        """The policy's evaluation of ``rollouts`` and log Z of their prompts (``None`` without
        log Z)."""
        evaluation = self.policy.evaluate(rollouts, need_prompt_hidden=need_prompt_hidden)
        log_z = (
            None
            if self.logz is None
            else self.logz(rollouts.prompt_index, evaluation.prompt_hidden)
        )
        return evaluation, log_z
