"""In-process sampler: batched decoding with a KV cache on the policy's own Hugging Face model.

Two engines draw from the same distribution (softmax of logits / temperature, then top-p, then
min-p):

* ``cached`` (default): each prompt is prefilled ONCE and its KV cache shared by its ``n`` samples;
  rows that emitted EOS leave the batch, so short answers stop costing compute. Behaviour
  log-probs are gathered per step from the processed logits (never a ``[B, T, V]`` stack).
* ``generate``: ``model.generate(do_sample=True, output_scores=True)``, the reference path.

The ``cached`` engine decodes in one of two ways (``decoding``), which draw the same tokens: a
``dynamic`` cache that drops finished rows (least work: the CPU's choice), or a ``static`` cache of
fixed shapes whose one-token step is captured once as a CUDA graph and replayed (on a GPU, decoding
is bound by launching hundreds of small kernels a step, not by computing them). ``auto`` takes the
static path on CUDA and the dynamic one elsewhere.

Rows are grouped by prompt: the ``n`` samples of prompt ``i`` are rows ``i*n … i*n+n-1``. The
expansion from prompts to samples is written with einops (``"prompt ... -> (prompt sample) ..."``),
which names that layout where ``repeat_interleave`` leaves it implicit; elementwise broadcasting
elsewhere stays ``x[:, None]``, which is as clear.
"""

from typing import Any

import attrs
import torch
from transformers import GenerationConfig

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import PromptBatch, Rollouts
from gfnlm.models.chunked_logps import wide
from gfnlm.models.decoding import (
    DECODING_MODES,
    decode,
    per_sample,
    rollouts_from_generated,
    static_decoding_unsupported,
)
from gfnlm.samplers.base import Sampler, check_sampling_settings


@register("sampler", "hf")
@attrs.define
class HFSampler(Sampler):
    """Ancestral sampling from the policy at an explicit temperature / top-p / min-p (top-k off),
    with behaviour log-probs of the distribution actually sampled from. ``engine``: ``cached``
    (our KV-cache loop, default) or ``generate`` (``model.generate``); both sample the same
    distribution.

    Its ``behaviour_logp`` is always the exact sampling log-probability (taken after temperature,
    top-p and any exploration), so it provides ``exact_behaviour_logp``. The ``cached`` engine also
    applies an exploration component (:mod:`gfnlm.exploration`) to each step's distribution
    (``behaviour_transform``); ``generate`` cannot.
    """

    temperature: float = option(1.0, "sampling temperature (set from sampling.temperature)")
    top_p: float = option(1.0, "nucleus threshold (set from sampling.top_p; 1 = off)")
    max_new_tokens: int = option(24, "longest response (set from sampling.max_new_tokens)")
    min_p: float = option(
        0.0, "min-p threshold relative to the most likely token (set from sampling.min_p; 0 = off)"
    )
    batch_size: int = option(
        0, "most sequences per decoding call (0 = all at once)"
    )  # max sequences per decoding call; 0 = all at once
    engine: str = option(
        "cached",
        "'cached' (our KV-cache loop) or 'generate' (model.generate); the same distribution",
    )
    decoding: str = option(
        "auto",
        "the cached engine's loop: 'dynamic' (drops finished rows), 'static' (fixed shapes, one "
        "CUDA graph launch a step on CUDA) or 'auto' (static on CUDA, dynamic elsewhere)",
    )
    version: int = attrs.field(default=0, init=False)  # the policy's step, recorded on the rollouts
    _policy: Any = attrs.field(default=None, init=False, repr=False)
    _exploration: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def provides(self) -> frozenset[str]:  # type: ignore[override]
        transform = (
            frozenset({"behaviour_transform", "tempered_sampling"})
            if self.engine == "cached"
            else frozenset()
        )
        return frozenset({"response_text", "exact_behaviour_logp"}) | transform

    def withheld(self) -> dict[str, str]:
        """Why ``behaviour_transform`` and ``tempered_sampling`` are missing with
        ``engine='generate'``."""
        if self.engine == "cached":
            return {}
        why = "engine='generate' samples inside model.generate; use engine='cached'"
        return {"behaviour_transform": why, "tempered_sampling": why}

    def explore_with(self, exploration: Any) -> None:
        """Draw every token from ``exploration.behaviour_log_probs`` of the policy's
        distribution."""
        self._exploration = exploration

    def __attrs_post_init__(self) -> None:
        if self.engine not in ("cached", "generate"):
            raise ConfigError(
                f"sampling.sampler_options.engine={self.engine!r}: must be one of cached, generate"
            )
        if self.decoding not in DECODING_MODES:
            raise ConfigError(
                f"sampling.sampler_options.decoding={self.decoding!r}: must be one of "
                f"{', '.join(DECODING_MODES)}"
            )
        if self.engine == "generate" and self.decoding != "auto":
            raise ConfigError(
                f"sampling.sampler_options.decoding={self.decoding!r}: applies to "
                "engine='cached' only (leave it 'auto' with engine='generate')"
            )
        check_sampling_settings(self.temperature, self.top_p, self.min_p)

    def setup(self, policy: Any) -> None:
        if self.decoding == "static":
            reason = static_decoding_unsupported(policy.model)
            if reason is not None:
                raise ConfigError(
                    f"sampling.sampler_options.decoding='static': {reason}; use 'auto' or 'dynamic'"
                )
        self._policy = policy

    def sync(self, policy: Any, version: int, force: bool = False) -> None:
        self.version = version  # in-process: always the current weights

    def generation_config(self) -> GenerationConfig:
        """The ``GenerationConfig`` of the ``generate`` engine (pure ancestral sampling)."""
        tokenizer = self._policy.tokenizer
        return GenerationConfig(
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0,
            min_p=self.min_p or None,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            repetition_penalty=1.0,
            eos_token_id=self._policy.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )

    @torch.no_grad()
    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        device = policy.device
        prompt_ids, prompt_mask = prompts.prompt_ids.to(device), prompts.prompt_mask.to(device)
        chunk = max(1, (self.batch_size or len(prompts) * n) // n)  # whole prompts per call
        pieces = [
            self._decode(prompt_ids[i : i + chunk], prompt_mask[i : i + chunk], n)
            for i in range(0, len(prompts), chunk)
        ]
        width = max(p[0].shape[1] for p in pieces)
        generated = torch.cat(
            [_pad_right(p[0], width, policy.tokenizer.pad_token_id) for p in pieces]
        )
        behaviour = torch.cat([_pad_right(p[1], width, 0.0) for p in pieces])
        return attrs.evolve(
            rollouts_from_generated(policy, prompts, n, generated, behaviour),
            weight_version=self.version,
        )

    def _decode(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self._policy
        with policy.decoding():
            if self.engine == "cached":
                return decode(
                    policy.model,
                    prompt_ids,
                    prompt_mask,
                    n,
                    decoding=self.decoding,
                    max_new_tokens=self.max_new_tokens,
                    eos_token_id=policy.eos_token_id,
                    pad_token_id=policy.tokenizer.pad_token_id,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    min_p=self.min_p,
                    synced=policy.synced_decoding,
                    exploration=self._exploration,
                )
            return self._generate(per_sample(prompt_ids, n), per_sample(prompt_mask, n))

    def _generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._policy.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask.long(),
            generation_config=self.generation_config(),
        )
        generated = out.sequences[:, prompt_ids.shape[1] :]
        # One step's [B, V] scores (after temperature / top-p / min-p) at a time: no widened
        # [B, T, V] stack.
        behaviour = [
            wide(step_scores).log_softmax(-1).gather(-1, generated[:, i, None]).squeeze(-1)
            for i, step_scores in enumerate(out.scores)
        ]
        return generated, torch.stack(behaviour, 1)


def _pad_right(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
