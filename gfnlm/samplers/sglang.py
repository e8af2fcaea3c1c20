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
* ``launch``: start the server itself (:mod:`gfnlm.serving.serve`), stopped on exit, errors and Ctrl-C.

Every HTTP call has one total deadline (``timeout_s``) and retries only what never reached the
server; a dead, hung or wrong server (another tokenizer, other weights) is a one-line
:class:`~gfnlm.serving.sglang_client.ServerError`. Options that need no model (the URL, the launch
interpreter and its sglang) are checked when the sampler is built, before the model loads.
"""

import math
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors.torch import save_file

from gfnlm.contracts.registry import option, register
from gfnlm.contracts.types import PromptBatch, Rollouts, SequenceLogProbs
from gfnlm.samplers.base import Sampler
from gfnlm.samplers.hf import rollouts_from_generated
from gfnlm.serving.serve import LaunchConfig, SGLangServer, resolve_launch
from gfnlm.serving.sglang_client import ServerError, SGLangClient
from gfnlm.training.config import ConfigError

_OPTION = "sampling.sampler_options"
_PROBE = "The capital of France is Paris. The capital of Italy is"


@register("sampler", "sglang")
@attrs.define
class SGLangSampler(Sampler):
    """Ancestral sampling on a SGLang server (temperature / top-p, top-k and min-p off).

    Options (``sampling.sampler_options``): ``url`` of a running server, or ``launch`` to start one
    (:class:`~gfnlm.serving.serve.LaunchConfig` fields ``python``, ``args``, ``env``, ``host``, ``port``,
    ``startup_timeout_s``, plus ``cpu: true`` for the repository's CPU recipe in
    ``tools/sglang_cpu``); ``weight_sync``, ``sync_every``, ``sync_dir``, ``weights_dtype``;
    ``timeout_s``: the deadline of one whole HTTP call, retries included (default 120 s; a call
    waiting longer than 10 s prints a progress line every 10 s); ``retries``: extra attempts for
    requests that never reached the server (connection refused) or got 502/503/504 — a request
    that timed out is never sent again; ``concurrency``; ``scores_base`` and ``base_url``;
    ``identity_tolerance``.
    """

    provides = frozenset({"response_text", "base_scores"})

    temperature: float = option(1.0, "sampling temperature (set from sampling.temperature)")
    top_p: float = option(1.0, "nucleus threshold (set from sampling.top_p); behaviour log-probs are exact only at 1")
    max_new_tokens: int = option(24, "longest response (set from sampling.max_new_tokens)")
    url: str = option("", "a running server, e.g. http://127.0.0.1:30000 ('' with launch)")
    launch: dict[str, Any] | None = option(None, "start a server: LaunchConfig fields (python, args, env, port, startup_timeout_s) or cpu: true")
    weight_sync: str = option("full", "how the policy reaches the server after each step: full, lora or none")
    sync_every: int = option(1, "push the weights every N optimiser steps")
    sync_dir: str = option("", "where weights are written for the server ('' = a temp dir); the server must read it")
    # dtype of the full weights written for the server: float32 is exact; bfloat16 halves the
    # bytes when the server computes in bf16 anyway (its usual GPU setting)
    weights_dtype: str = option("float32", "dtype of the pushed full weights: float32 (exact), bfloat16 or float16")
    timeout_s: float = option(120.0, "deadline of one whole HTTP call, retries included (seconds)")
    retries: int = option(2, "extra attempts, only for requests that never reached the server and 502/503/504")
    concurrency: int = option(8, "requests in flight at once")
    scores_base: bool = option(False, "the target's base log-probs from the server instead of the trainer")
    base_url: str = option("", "a server with the frozen base weights ('' = this server without the adapter)")
    identity_tolerance: float = option(0.1, "largest mean |Δ log p| between server and policy on a probe before refusing")

    version: int = attrs.field(default=-1, init=False)
    _policy: Any = attrs.field(default=None, init=False, repr=False)
    _client: SGLangClient | None = attrs.field(default=None, init=False, repr=False)
    _base_client: SGLangClient | None = attrs.field(default=None, init=False, repr=False)
    _server: SGLangServer | None = attrs.field(default=None, init=False, repr=False)
    _launch_config: LaunchConfig | None = attrs.field(default=None, init=False, repr=False)
    _sync_root: Path | None = attrs.field(default=None, init=False, repr=False)
    _served: Path | None = attrs.field(default=None, init=False, repr=False)
    _lora_name: str | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.url and self.launch is None:
            raise ConfigError(f"{_OPTION}.url='': give the server's URL, or launch options to start one")
        if self.url:
            _check_url(f"{_OPTION}.url", self.url)
        if self.base_url:
            _check_url(f"{_OPTION}.base_url", self.base_url)
        if self.weight_sync not in ("full", "lora", "none"):
            raise ConfigError(f"{_OPTION}.weight_sync={self.weight_sync!r}: must be one of full, lora, none")
        if self.weights_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"{_OPTION}.weights_dtype={self.weights_dtype!r}: must be one of bfloat16, float16, float32")
        for name in ("sync_every", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{_OPTION}.{name}={getattr(self, name)!r}: must be >= 1")
        if not self.timeout_s > 0 or int(self.retries) < 0:
            raise ConfigError(f"{_OPTION}.timeout_s={self.timeout_s!r}, retries={self.retries!r}: need timeout_s > 0, retries >= 0")
        if not self.temperature > 0:
            raise ConfigError(f"sampling.temperature={self.temperature!r}: must be > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p!r}: must be in (0, 1]")
        if self.scores_base and self.weight_sync == "full" and not self.base_url:
            raise ConfigError(f"{_OPTION}.scores_base=true with weight_sync=full: the server holds the policy's "
                              "weights, not the base model's; use weight_sync=lora or give base_url")
        if self.launch is not None:
            if not isinstance(self.launch, dict):
                raise ConfigError(f"{_OPTION}.launch={self.launch!r}: must be a mapping of launch options")
            # The interpreter and its sglang are checked now, before the model loads.
            self._launch_config = resolve_launch(self.launch, lambda key: f"{_OPTION}.launch.{key}")

    # ------------------------------------------------------------------ set-up and weights
    def setup(self, policy: Any) -> None:
        """Connect (or launch), check the server's tokenizer and weights, push the policy's weights.
        On failure nothing is left behind: a launched server is stopped, the weight folders go."""
        self._policy = policy
        try:
            with self._explained():
                self._connect(policy)
                self._check_tokenizer(self._client)
                self.sync(policy, 0, force=True)
                self._check_weights(policy)
        except BaseException:
            self.close()
            raise

    def _connect(self, policy: Any) -> None:
        if self._launch_config is not None:
            model_path = str(policy.transformer_config._name_or_path)
            self._server = SGLangServer(model_path, self._launch_config).start()
            self.url = self._server.url
        self._client = SGLangClient(self.url, self.timeout_s, self.retries, pool_size=self.concurrency)
        if self.base_url:
            self._base_client = SGLangClient(self.base_url, self.timeout_s, self.retries, self.concurrency)
        self._sync_root = Path(self.sync_dir or tempfile.mkdtemp(prefix="gfnlm-weights-"))
        self._sync_root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _explained(self) -> Iterator[None]:
        """A failed call to a server this sampler launched and that has died says so, with the end
        of its output (its log is deleted when it is stopped)."""
        try:
            yield
        except ServerError as error:
            server = self._server
            if server is None or server.alive():
                raise
            raise ServerError(f"{error}; the launched server exited; its last output: {server.log_tail()}") from None

    def sync(self, policy: Any, version: int, force: bool = False) -> None:
        """Push the policy's weights as ``version`` (every ``sync_every`` versions, or ``force``).

        Under ``torch.distributed`` every rank must call this (FSDP2 gathers shards); with a shared
        server (``url``) only rank 0 pushes, a server each rank launched gets its own push.
        """
        if self.weight_sync == "none" or (not force and version % self.sync_every):
            return
        weights = self._export(policy)
        if weights is not None and self.version < 0:
            self._check_architecture(weights)  # before the first push: a wrong push can kill a server
        if self._server is not None or _rank() == 0:
            with self._explained():
                if self.weight_sync == "full":
                    self._push_full(weights, version)
                else:
                    self._push_lora(policy, version)
        _barrier()
        self.version = version

    def _export(self, policy: Any) -> dict[str, torch.Tensor] | None:
        return merged_state_dict(policy.model, getattr(torch, self.weights_dtype)) if self.weight_sync == "full" else None

    def _publish(self, folder: str, write: Any) -> Path:
        """``write(staging_dir)``, then rename it to ``sync_root/folder``: the server only ever sees
        a complete folder."""
        assert self._sync_root is not None
        staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=self._sync_root))
        write(staging)
        final = self._sync_root / folder
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        return final

    def _retire(self, final: Path) -> None:
        """Remember ``final`` as the served folder and delete the one served before it."""
        previous, self._served = self._served, final
        if previous is not None and previous != final:
            shutil.rmtree(previous, ignore_errors=True)

    def _push_full(self, weights: dict[str, torch.Tensor], version: int) -> None:
        assert self._client is not None
        config = Path(str(self._policy.transformer_config._name_or_path)) / "config.json"

        def write(staging: Path) -> None:
            save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
            if config.is_file():
                shutil.copy(config, staging / "config.json")

        final = self._publish(f"v{version:06d}", write)
        self._client.update_weights_from_disk(str(final), version)
        self._retire(final)

    def _push_lora(self, policy: Any, version: int) -> None:
        assert self._client is not None
        final = self._publish(f"lora{version:06d}", policy.model.save_pretrained)
        name = f"gfnlm-v{version}"
        self._client.load_lora_adapter(name, str(final))
        previous, self._lora_name = self._lora_name, name
        if previous is not None and previous != name:
            self._client.unload_lora_adapter(previous)
        self._retire(final)

    # ------------------------------------------------------------------ identity checks
    def _check_tokenizer(self, client: SGLangClient) -> None:
        """The server tokenises a probe text as the trainer does (else: another tokenizer)."""
        local = self._policy.tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
        answer = client.generate({"text": _PROBE, "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                                  "return_logprob": True, "logprob_start_len": 0}, "tokenizer check")[0]
        served = [int(entry[1]) for entry in answer["meta_info"]["input_token_logprobs"]]
        if served[-len(local):] != local:
            raise ServerError(f"SGLang server {client.url} tokenises differently from model.path "
                              f"(probe ids {served[:6]}… vs {local[:6]}…): it serves another tokenizer")

    def _check_architecture(self, weights: dict[str, torch.Tensor]) -> None:
        """The server has parameters of the same names and sizes (the first and last 1-D ones, e.g.
        the first and final norms): else it serves another architecture, and pushing would fail."""
        vectors = [name for name, value in weights.items() if value.dim() == 1]
        for name in dict.fromkeys([vectors[0], vectors[-1]] if vectors else []):
            served = self._client.weight_size(name)
            if served != weights[name].numel():
                there = "no such parameter" if served is None else f"{served} values"
                raise ServerError(f"SGLang server {self.url} serves another architecture: {name!r} has {there} "
                                  f"there, {weights[name].numel()} here; weights not pushed")

    def _check_weights(self, policy: Any) -> None:
        """The server's log-probs on a probe equal the local policy's (else: another model)."""
        ids = policy.tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
        answer = self._client.generate(self._scoring_request(ids, 1, with_eos=False, lora=True),
                                       "weight check")[0]
        served = torch.tensor([e[0] for e in answer["meta_info"]["input_token_logprobs"][1:]], dtype=torch.float64)
        model = policy.model
        with policy.decoding():
            logits = model(input_ids=torch.tensor([ids], device=policy.device)).logits[0, :-1].double()
        local = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:], device=logits.device)[:, None]).squeeze(1).cpu()
        gap = float((served - local).abs().mean())
        if not gap <= self.identity_tolerance:
            raise ServerError(f"SGLang server {self.url} does not serve the policy's weights: mean |Δ log p| "
                              f"= {gap:.3f} on a probe (tolerance {self.identity_tolerance}); another model?")

    # ------------------------------------------------------------------ sampling
    def sample(self, prompts: PromptBatch, n: int) -> Rollouts:
        policy = self._policy
        prompt_ids = [row[mask].tolist() for row, mask in zip(prompts.prompt_ids, prompts.prompt_mask, strict=True)]
        params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": -1, "min_p": 0.0, "min_new_tokens": 0, "ignore_eos": False,
                  "stop_token_ids": [policy.eos_token_id], "skip_special_tokens": False}
        requests = [{"input_ids": [ids] * n, "sampling_params": params, "return_logprob": True,
                     "logprob_start_len": -1, **self._adapter()} for ids in prompt_ids]
        answers = self._map(self._client, requests, "generate")
        width = max(1, max(len(a["meta_info"]["output_token_logprobs"]) for group in answers for a in group))
        pad = policy.tokenizer.pad_token_id
        generated = torch.full((len(prompt_ids) * n, width), pad, dtype=torch.long)
        behaviour = torch.zeros(len(prompt_ids) * n, width)
        for row, answer in enumerate(a for group in answers for a in group):
            tokens = answer["meta_info"]["output_token_logprobs"]
            generated[row, : len(tokens)] = torch.tensor([int(t[1]) for t in tokens], dtype=torch.long)
            behaviour[row, : len(tokens)] = torch.tensor([_finite(t[0]) for t in tokens])
        rollouts = rollouts_from_generated(policy, prompts, n, generated, behaviour)
        return attrs.evolve(rollouts, weight_version=max(self.version, 0))

    def _adapter(self) -> dict[str, Any]:
        return {"lora_path": self._lora_name} if self.weight_sync == "lora" and self._lora_name else {}

    def _map(self, client: SGLangClient, requests: list[dict[str, Any]], operation: str) -> list[list[dict[str, Any]]]:
        """Send the requests concurrently; answers in request order."""
        with self._explained(), ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: client.generate(r, operation), requests))

    # ------------------------------------------------------------------ base scoring
    def _scoring_request(self, ids: list[int], prompt_len: int, with_eos: bool, lora: bool) -> dict[str, Any]:
        request = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
                   "return_logprob": True, "logprob_start_len": max(prompt_len - 1, 0)}
        if with_eos:
            request["token_ids_logprob"] = [self._policy.eos_token_id]
        return {**request, **(self._adapter() if lora else {})}

    def score_base(self, rollouts: Rollouts, need_eos_logp: bool) -> SequenceLogProbs:
        """The base model's per-token (and EOS) log-probs of the responses, computed by the server
        (no adapter, or ``base_url``): the same values as ``policy.score_base``, without a local pass."""
        client = self._base_client or self._client
        requests = []
        for b in range(rollouts.batch_size):
            prompt = rollouts.prompt_ids[b][rollouts.prompt_mask[b]].tolist()
            response = rollouts.response_ids[b][rollouts.response_mask[b]].tolist()
            requests.append(self._scoring_request(prompt + response, len(prompt), need_eos_logp, lora=False))
        answers = [group[0] for group in self._map(client, requests, "base scoring")]
        batch, width = rollouts.response_ids.shape
        token_logp = torch.zeros(batch, width, dtype=torch.float32)
        eos_logp = torch.zeros(batch, width + 1, dtype=torch.float32) if need_eos_logp else None
        for b, answer in enumerate(answers):
            meta, length = answer["meta_info"], int(rollouts.lengths[b])
            scored = meta["input_token_logprobs"][1:]  # the first entry is the last prompt token's (null)
            token_logp[b, :length] = torch.tensor([_finite(e[0]) for e in scored[:length]])
            if eos_logp is not None:
                prefixes = [entry[0][0] for entry in meta["input_token_ids_logprobs"][1:]]
                prefixes.append(meta["output_token_ids_logprobs"][0][0][0])
                eos_logp[b, : length + 1] = torch.tensor([_finite(v) for v in prefixes[: length + 1]])
        device = rollouts.response_ids.device
        return SequenceLogProbs(token_logp=token_logp.to(device),
                                eos_logp=None if eos_logp is None else eos_logp.to(device))

    def close(self) -> None:
        """Stop a launched server and delete the weight folders written for it."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        root, self._sync_root, self._served = self._sync_root, None, None
        if root is not None and not self.sync_dir:
            shutil.rmtree(root, ignore_errors=True)


def merged_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's weights under their Hugging Face names, LoRA deltas merged in (the model is
    not modified), as ``dtype`` CPU tensors; FSDP2 shards are gathered (every rank must call)."""
    from gfnlm.training.policy import full_tensor

    peft = hasattr(model, "peft_config")
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = full_tensor(param.detach())
            if peft:
                if ".lora_" in name:
                    continue
                name = name.removeprefix("base_model.model.")
                if ".base_layer." in name:
                    layer = modules["base_model.model." + name.split(".base_layer.")[0]]
                    if name.endswith(".weight") and not getattr(layer, "merged", False):
                        for adapter in layer.active_adapters:
                            value = value + full_tensor(layer.get_delta_weight(adapter))
                    name = name.replace(".base_layer.", ".")
            out[name] = value.to(dtype=dtype, device="cpu").contiguous().clone()
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if tied:
        out.pop("lm_head.weight", None)
    return out


def _check_url(name: str, url: str) -> None:
    """``url`` is ``http(s)://HOST[:PORT][/PATH]``: a typo fails now, not after the model loaded."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError:
        parts, port = None, 0
    bad = (parts is None or any(c.isspace() for c in url) or parts.scheme not in ("http", "https")
           or not parts.hostname or port == 0 or parts.query or parts.fragment)
    if bad:
        raise ConfigError(f"{name}={url!r}: not a server URL; allowed: http://HOST[:PORT] or "
                          "https://HOST[:PORT] with PORT in 1-65535, e.g. http://127.0.0.1:30000")


def _finite(value: float | None) -> float:
    """SGLang writes -inf as -999999999.0 (or null): both become -inf."""
    if value is None or value <= -1e8:
        return -math.inf
    return float(value)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
