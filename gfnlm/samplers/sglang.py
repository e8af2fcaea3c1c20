"""Rollouts from a SGLang server over its native HTTP API, with the server's weights kept equal to
the policy's.

* ``sample``: ``/generate`` with ``input_ids`` (the trainer's own tokenisation) and every sampling
  parameter explicit; each prompt's ``n`` copies go in one request, requests run concurrently.
  EOS vs truncation comes from the returned tokens (SGLang includes the matched EOS); behaviour
  log-probs are the server's (after temperature, before top-p: exact for ``top_p = 1``).
* ``sync``: after every ``sync_every``-th optimiser step the policy's weights go to the server:
  ``full`` (merged LoRA or all weights as safetensors, written atomically to a fresh folder, then
  ``/update_weights_from_disk``) or ``lora`` (the PEFT adapter folder, ``/load_lora_adapter``, and
  ``lora_path`` on every request). Each rollout records the weight version that produced it; the
  GFlowNet objectives are off-policy (any full-support sampler is valid) and GRPO's ratio uses
  the recorded behaviour log-probs, so staleness is covered.
* ``score_base``: the base model's log-probs from the server (teacher-forced ``/generate`` with
  ``logprob_start_len``), from a request without the adapter (``lora``) or from ``base_url``.
* ``launch``: start the server itself (:mod:`gfnlm.serving.serve`), stopped on exit, errors and
  Ctrl-C.

The options, the sync mechanics, the deadlines and the identity probe are the server samplers'
(:mod:`gfnlm.samplers.server`); a dead, hung or wrong server (another tokenizer, other weights,
another architecture) is a one-line :class:`~gfnlm.serving.sglang_client.ServerError`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import PromptBatch, Rollouts, SequenceLogProbs
from gfnlm.models.decoding import rollouts_from_generated
from gfnlm.models.weights import merged_state_dict
from gfnlm.samplers.server import PROBE, ServerSampler, finite_logp
from gfnlm.serving.serve import LaunchConfig, SGLangServer, resolve_launch
from gfnlm.serving.sglang_client import ServerError, SGLangClient

__all__ = ["SGLangSampler", "merged_state_dict"]


@register("sampler", "sglang")
@attrs.define
class SGLangSampler(ServerSampler):
    """Ancestral sampling on a SGLang server (temperature / top-p, top-k and min-p off).

    Options (``sampling.sampler_options``): ``url`` of a running server, or ``launch`` to start one
    (:class:`~gfnlm.serving.serve.LaunchConfig` fields ``python``, ``args``, ``env``, ``host``,
    ``port``, ``startup_timeout_s``, plus ``cpu: true`` for the repository's CPU recipe in
    ``tools/sglang_cpu``); ``weight_sync``, ``sync_every``, ``sync_dir``, ``weights_dtype``;
    ``timeout_s``: the deadline of one whole HTTP call, retries included (default 120 s; a call
    waiting longer than 10 s prints a progress line every 10 s); ``retries``: extra attempts for
    requests that never reached the server (connection refused) or got 502/503/504 — a request
    that timed out is never sent again; ``concurrency``; ``scores_base`` with ``base_url`` or
    ``base_launch``; ``identity_tolerance``.
    """

    top_p: float = option(
        1.0, "nucleus threshold (set from sampling.top_p); behaviour log-probs are exact only at 1"
    )

    engine = "SGLang"

    @property
    def behaviour_logp_is_exact(self) -> bool:
        """SGLang's log-probs are taken after temperature, before top-p and min-p: the exact
        probability the rollout was sampled with only when both are off."""
        return self._unfiltered

    def _resolve_launch(self, options: dict[str, Any], field: Callable[[str], str]) -> LaunchConfig:
        return resolve_launch(options, field)

    def _new_server(
        self, model_path: str, launch: LaunchConfig, adapters: bool = True
    ) -> SGLangServer:
        return SGLangServer(model_path, launch)

    def _new_client(self, url: str) -> SGLangClient:
        return SGLangClient(url, self.timeout_s, self.retries, pool_size=self.concurrency)

    def _load_full(self, folder: Path, version: int) -> None:
        self._client.update_weights_from_disk(str(folder), version)

    def _load_lora(self, name: str, folder: Path) -> None:
        self._client.load_lora_adapter(name, str(folder))

    def _unload_lora(self, name: str) -> None:
        self._client.unload_lora_adapter(name)

    # ------------------------------------------------------------------ identity checks
    def _check_tokenizer(self, client: SGLangClient) -> None:
        """The server tokenises a probe text as the trainer does (else: another tokenizer)."""
        local = self._policy.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        answer = client.generate(
            {
                "text": PROBE,
                "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_logprob": True,
                "logprob_start_len": 0,
            },
            "tokenizer check",
        )[0]
        served = [int(entry[1]) for entry in answer["meta_info"]["input_token_logprobs"]]
        if served[-len(local) :] != local:
            raise ServerError(
                f"SGLang server {client.url} tokenises differently from model.path "
                f"(probe ids {served[:6]}… vs {local[:6]}…): it serves another tokenizer"
            )

    def _check_architecture(self, weights: dict[str, torch.Tensor]) -> None:
        """The server has parameters of the same names and sizes (the first and last 1-D ones, e.g.
        the first and final norms): else it serves another architecture, and pushing would fail."""
        vectors = [name for name, value in weights.items() if value.dim() == 1]
        for name in dict.fromkeys([vectors[0], vectors[-1]] if vectors else []):
            served = self._client.weight_size(name)
            if served != weights[name].numel():
                there = "no such parameter" if served is None else f"{served} values"
                raise ServerError(
                    f"SGLang server {self.url} serves another architecture: {name!r} has {there} "
                    f"there, {weights[name].numel()} here; weights not pushed"
                )

    def _served_logp(self, ids: list[int]) -> torch.Tensor:
        return self._probe_logp(self._client, ids, lora=True, operation="weight check")

    def _served_base_logp(self, ids: list[int]) -> torch.Tensor:
        return self._probe_logp(self._base_client, ids, lora=False, operation="base weight check")

    def _probe_logp(
        self, client: SGLangClient, ids: list[int], lora: bool, operation: str
    ) -> torch.Tensor:
        answer = client.generate(
            self._scoring_request(ids, 1, with_eos=False, lora=lora), operation
        )[0]
        return torch.tensor(
            [e[0] for e in answer["meta_info"]["input_token_logprobs"][1:]], dtype=torch.float64
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        prompt_ids = prompts.token_lists()
        params = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.draw_temperature,
            "top_p": self.top_p,
            "top_k": -1,
            "min_p": self.min_p,
            "min_new_tokens": 0,
            "ignore_eos": False,
            "stop_token_ids": [policy.eos_token_id],
            "skip_special_tokens": False,
        }
        requests = [
            {
                "input_ids": [ids] * n,
                "sampling_params": params,
                "return_logprob": True,
                "logprob_start_len": -1,
                **self._adapter(),
            }
            for ids in prompt_ids
        ]
        answers = self._generate_all(self._client, requests, "generate")
        width = max(
            1, max(len(a["meta_info"]["output_token_logprobs"]) for group in answers for a in group)
        )
        pad = policy.tokenizer.pad_token_id
        generated = torch.full((len(prompt_ids) * n, width), pad, dtype=torch.long)
        behaviour = torch.zeros(len(prompt_ids) * n, width)
        for row, answer in enumerate(a for group in answers for a in group):
            tokens = answer["meta_info"]["output_token_logprobs"]
            generated[row, : len(tokens)] = torch.tensor(
                [int(t[1]) for t in tokens], dtype=torch.long
            )
            behaviour[row, : len(tokens)] = torch.tensor([finite_logp(t[0]) for t in tokens])
        rollouts = rollouts_from_generated(policy, prompts, n, generated, behaviour)
        return attrs.evolve(rollouts, weight_version=max(self.version, 0))

    def _adapter(self) -> dict[str, Any]:
        return (
            {"lora_path": self._lora_name} if self.weight_sync == "lora" and self._lora_name else {}
        )

    def _generate_all(
        self, client: SGLangClient, requests: list[dict[str, Any]], operation: str
    ) -> list[list[dict[str, Any]]]:
        """Send the requests concurrently; answers in request order."""
        return self._map(lambda request: client.generate(request, operation), requests)

    # ------------------------------------------------------------------ base scoring
    def _scoring_request(
        self, ids: list[int], prompt_len: int, with_eos: bool, lora: bool
    ) -> dict[str, Any]:
        request = {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
            "return_logprob": True,
            "logprob_start_len": max(prompt_len - 1, 0),
        }
        if with_eos:
            request["token_ids_logprob"] = [self._policy.eos_token_id]
        return {**request, **(self._adapter() if lora else {})}

    def score_base(self, rollouts: Rollouts, need_eos_logp: bool) -> SequenceLogProbs:
        """The base model's per-token (and EOS) log-probs of the responses, computed by the server
        (no adapter, or ``base_url``): the same values as ``policy.score_base``, without a local
        pass."""
        client = self._base_client or self._client
        requests = []
        for b in range(rollouts.batch_size):
            prompt = rollouts.prompt_ids[b][rollouts.prompt_mask[b]].tolist()
            response = rollouts.response_ids[b][rollouts.response_mask[b]].tolist()
            requests.append(
                self._scoring_request(prompt + response, len(prompt), need_eos_logp, lora=False)
            )
        answers = [group[0] for group in self._generate_all(client, requests, "base scoring")]
        batch, width = rollouts.response_ids.shape
        token_logp = torch.zeros(batch, width, dtype=torch.float32)
        eos_logp = torch.zeros(batch, width + 1, dtype=torch.float32) if need_eos_logp else None
        for b, answer in enumerate(answers):
            meta, length = answer["meta_info"], int(rollouts.lengths[b])
            scored = meta["input_token_logprobs"][
                1:
            ]  # the first entry is the last prompt token's (null)
            token_logp[b, :length] = torch.tensor([finite_logp(e[0]) for e in scored[:length]])
            if eos_logp is not None:
                prefixes = [entry[0][0] for entry in meta["input_token_ids_logprobs"][1:]]
                prefixes.append(meta["output_token_ids_logprobs"][0][0][0])
                eos_logp[b, : length + 1] = torch.tensor(
                    [finite_logp(v) for v in prefixes[: length + 1]]
                )
        device = rollouts.response_ids.device
        return SequenceLogProbs(
            token_logp=token_logp.to(device),
            eos_logp=None if eos_logp is None else eos_logp.to(device),
        )
