"""In-process sampler: batched Hugging Face ``generate`` with KV cache."""

from typing import Any

import attrs
import torch
from transformers import GenerationConfig

from gfnlm.registry import register
from gfnlm.samplers.base import Sampler
from gfnlm.types import PromptBatch, Rollouts


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


@register("sampler", "hf")
@attrs.define
class HFSampler(Sampler):
    """``generate`` with do_sample, explicit temperature / top-p (top-k off), behaviour log-probs
    from the processed scores (the distribution actually sampled from)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 0  # max sequences per generate call; 0 = all at once
    _policy: Any = attrs.field(default=None, init=False, repr=False)

    def setup(self, policy: Any) -> None:
        self._policy = policy

    def generation_config(self) -> GenerationConfig:
        """The ``GenerationConfig`` used for sampling (pure ancestral sampling at the set temperature/top-p)."""
        tokenizer = self._policy.tokenizer
        return GenerationConfig(
            do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
            max_new_tokens=self.max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
            eos_token_id=self._policy.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            output_scores=True, return_dict_in_generate=True,
        )

    @torch.no_grad()
    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        device = policy.device
        prompt_ids = prompts.prompt_ids.repeat_interleave(n, 0).to(device)
        prompt_mask = prompts.prompt_mask.repeat_interleave(n, 0).to(device)
        chunk = self.batch_size or prompt_ids.shape[0]
        pieces = [self._generate(prompt_ids[i : i + chunk], prompt_mask[i : i + chunk])
                  for i in range(0, prompt_ids.shape[0], chunk)]
        width = max(p[0].shape[1] for p in pieces)
        pad = policy.tokenizer.pad_token_id
        response_ids = torch.cat([_pad_right(p[0], width, pad) for p in pieces])
        behaviour = torch.cat([_pad_right(p[1], width, 0.0) for p in pieces])
        response_ids, mask, lengths, ended = responses_from_generation(
            torch.cat([prompt_ids, response_ids], 1), prompt_ids.shape[1], policy.eos_token_id, pad)
        groups = torch.arange(len(prompts), device=device).repeat_interleave(n)
        texts = tuple(policy.tokenizer.batch_decode(response_ids.masked_fill(~mask, pad), skip_special_tokens=True))
        prompt_text = None if prompts.prompt_text is None else tuple(t for t in prompts.prompt_text for _ in range(n))
        return Rollouts(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask.bool(), response_ids=response_ids,
            response_mask=mask, lengths=lengths, ended_with_eos=ended, group=groups,
            prompt_index=prompts.prompt_index.to(device).repeat_interleave(n),
            behaviour_logp=behaviour.masked_fill(~mask, 0.0), response_text=texts, prompt_text=prompt_text,
        )

    def _generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self._policy
        was_training = policy.model.training
        policy.model.eval()
        try:
            with policy.autocast():
                out = policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                                            generation_config=self.generation_config())
        finally:
            policy.model.train(was_training)
        generated = out.sequences[:, prompt_ids.shape[1]:]
        scores = torch.stack(out.scores, 1).float()  # [B, T, V], after temperature / top-p
        behaviour = scores.log_softmax(-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        return generated, behaviour


def _pad_right(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
