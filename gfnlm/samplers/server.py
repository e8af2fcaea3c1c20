"""What every rollout sampler backed by an inference server shares (``sglang``, ``vllm``).

:class:`ServerSampler` holds the options, their early checks, the server's lifetime (connect, or
launch and supervise), the weight sync (full weights or a LoRA adapter written atomically to a
fresh folder, every ``sync_every`` versions, rank 0 only for a shared server), the identity probe
(the server's log-probs on a probe text equal the policy's) and the clean-up. A subclass names its
engine and says how to talk to it: its client and server classes, how a folder of weights or an
adapter is loaded, and how rollouts and base scores are requested.

Every HTTP call has one total deadline (``timeout_s``) and retries only what never reached the
server; a dead, hung or wrong server is a one-line
:class:`~gfnlm.serving.sglang_client.ServerError`. Options that need no model (the URL, the launch
interpreter and its server package) are checked when the sampler is built, before the model loads.
"""

import math
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from safetensors.torch import save_file

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import component_name, option
from gfnlm.models.weights import merged_state_dict
from gfnlm.samplers.base import Sampler, check_sampling_settings
from gfnlm.serving.serve import LaunchConfig, ManagedServer
from gfnlm.serving.sglang_client import ServerClient, ServerError

OPTION = "sampling.sampler_options"
PROBE = "The capital of France is Paris. The capital of Italy is"


@attrs.define
class ServerSampler(Sampler):
    """The options and mechanics shared by the server samplers (see the module docstring)."""

    engine: ClassVar[str] = "server"  # how messages name the engine
    # How the server is reached or started, not what it computes: a resumed run may change them.
    runtime_options: ClassVar[frozenset[str]] = frozenset(
        {
            "url",
            "base_url",
            "launch",
            "base_launch",
            "sync_dir",
            "timeout_s",
            "retries",
            "concurrency",
        }
    )
    overlaps_training: ClassVar[bool] = True  # the server samples with its own copy of the weights
    # A full push after the first may carry only the weights training changes (changing_weights):
    # the engine's reload must keep the weights a folder does not name.
    pushes_changed_weights: ClassVar[bool] = False

    temperature: float = option(1.0, "sampling temperature (set from sampling.temperature)")
    top_p: float = option(1.0, "nucleus threshold (set from sampling.top_p)")
    min_p: float = option(0.0, "min-p threshold (set from sampling.min_p; 0 = off)")
    max_new_tokens: int = option(24, "longest response (set from sampling.max_new_tokens)")
    url: str = option("", "a running server, e.g. http://127.0.0.1:30000 ('' with launch)")
    launch: dict[str, Any] | None = option(
        None,
        "start a server: LaunchConfig fields (python, args, env, port, startup_timeout_s) "
        "or cpu: true",
    )
    weight_sync: str = option(
        "full", "how the policy reaches the server after each step: full, lora or none"
    )
    sync_every: int = option(1, "push the weights every N optimiser steps")
    sync_dir: str = option(
        "", "where weights are written for the server ('' = a temp dir); the server must read it"
    )
    # dtype of the full weights written for the server: float32 is exact; bfloat16 halves the
    # bytes when the server computes in bf16 anyway (its usual GPU setting)
    weights_dtype: str = option(
        "float32", "dtype of the pushed full weights: float32 (exact), bfloat16 or float16"
    )
    timeout_s: float = option(120.0, "deadline of one whole HTTP call, retries included (seconds)")
    retries: int = option(
        2, "extra attempts, only for requests that never reached the server and 502/503/504"
    )
    concurrency: int = option(8, "requests in flight at once")
    scores_base: bool = option(
        False, "the target's base log-probs from the server instead of the trainer"
    )
    base_url: str = option(
        "", "a server with the frozen base weights ('' = this server without the adapter)"
    )
    base_launch: dict[str, Any] | None = option(
        None,
        "start a server with the frozen base weights for scores_base "
        "(options as launch; no adapter, no sync)",
    )
    identity_tolerance: float = option(
        0.1, "largest mean |Δ log p| between server and policy on a probe before refusing"
    )

    version: int = attrs.field(default=-1, init=False)
    _policy: Any = attrs.field(default=None, init=False, repr=False)
    _client: Any = attrs.field(default=None, init=False, repr=False)
    _base_client: Any = attrs.field(default=None, init=False, repr=False)
    _server: ManagedServer | None = attrs.field(default=None, init=False, repr=False)
    _base_server: ManagedServer | None = attrs.field(default=None, init=False, repr=False)
    _launch_config: LaunchConfig | None = attrs.field(default=None, init=False, repr=False)
    _base_launch_config: LaunchConfig | None = attrs.field(default=None, init=False, repr=False)
    _sync_root: Path | None = attrs.field(default=None, init=False, repr=False)
    _served: Path | None = attrs.field(default=None, init=False, repr=False)
    _lora_name: str | None = attrs.field(default=None, init=False, repr=False)
    # Adapter names carry a tag drawn once per sampler (rank 0's, shared with the other ranks), so
    # that trainers sharing one server never load, name or unload each other's adapters.
    _lora_tag: str = attrs.field(default="", init=False, repr=False)
    # None: no push of changed weights only has been checked yet; then whether the first was
    # served right.
    _changed_only_ok: bool | None = attrs.field(default=None, init=False, repr=False)
    # A tempered exploration's T (explore_with): tokens are drawn at temperature × T.
    _temperature_factor: float = attrs.field(default=1.0, init=False, repr=False)

    @property
    def behaviour_logp_is_exact(self) -> bool:
        """Whether the server's log-probs are the exact probability each token was sampled with."""
        raise NotImplementedError

    @property
    def provides(self) -> frozenset[str]:  # type: ignore[override]
        """``exact_behaviour_logp`` only where :attr:`behaviour_logp_is_exact` holds;
        ``tempered_sampling`` where, besides, neither top-p nor min-p filters (a tempered
        exploration is then a temperature the server applies)."""
        exact = frozenset({"exact_behaviour_logp"}) if self.behaviour_logp_is_exact else frozenset()
        if exact and self._unfiltered:
            exact |= {"tempered_sampling"}
        return frozenset({"response_text", "base_scores"}) | exact

    @property
    def _unfiltered(self) -> bool:
        """Neither top-p nor min-p filters the next-token distribution."""
        return self.top_p >= 1.0 and self.min_p <= 0.0

    def withheld(self) -> dict[str, str]:
        """Why ``exact_behaviour_logp`` or ``tempered_sampling`` may be missing, and why there is
        no ``behaviour_transform``."""
        reasons = {
            "behaviour_transform": "the server samples each token itself (of the explorations, it "
            "applies exploration.name=tempered); use sampling.sampler=hf"
        }
        if not self.behaviour_logp_is_exact:
            reasons["exact_behaviour_logp"] = (
                f"top_p={self.top_p:g}, min_p={self.min_p:g}: the {self.engine} server "
                "reports log-probs taken before top-p and min-p; use top_p=1 and min_p=0"
            )
        if not self._unfiltered:
            reasons["tempered_sampling"] = (
                f"top_p={self.top_p:g}, min_p={self.min_p:g}: a tempered exploration applies "
                f"after top-p and min-p, and the {self.engine} server's temperature before them; "
                "use top_p=1 and min_p=0"
            )
        return reasons

    def explore_with(self, exploration: Any) -> None:
        """Draw at ``temperature × T`` for a ``tempered`` exploration (composition has checked
        that this sampler provides ``tempered_sampling``); the server's log-probs are then those
        of the tempered distribution, the exact behaviour log-probs."""
        factor = getattr(exploration, "temperature_factor", None)
        if factor is None:
            label = component_name(exploration)
            raise ConfigError(
                f"exploration.name={label!r}: the {self.engine} server samples each token itself "
                "and applies only a temperature; allowed: exploration.name=tempered or none, or "
                "sampling.sampler=hf"
            )
        self._temperature_factor = float(factor)

    @property
    def draw_temperature(self) -> float:
        """The temperature tokens are drawn at: ``temperature`` times a tempered exploration's T."""
        return self.temperature * self._temperature_factor

    def __attrs_post_init__(self) -> None:
        if not self.url and self.launch is None:
            raise ConfigError(
                f"{OPTION}.url='': give the server's URL, or launch options to start one"
            )
        if self.url:
            check_url(f"{OPTION}.url", self.url)
        if self.base_url:
            check_url(f"{OPTION}.base_url", self.base_url)
        if self.weight_sync not in ("full", "lora", "none"):
            raise ConfigError(
                f"{OPTION}.weight_sync={self.weight_sync!r}: must be one of full, lora, none"
            )
        if self.weights_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(
                f"{OPTION}.weights_dtype={self.weights_dtype!r}: "
                "must be one of bfloat16, float16, float32"
            )
        for name in ("sync_every", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{OPTION}.{name}={getattr(self, name)!r}: must be >= 1")
        if not self.timeout_s > 0 or int(self.retries) < 0:
            raise ConfigError(
                f"{OPTION}.timeout_s={self.timeout_s!r}, retries={self.retries!r}: "
                "need timeout_s > 0, retries >= 0"
            )
        check_sampling_settings(self.temperature, self.top_p, self.min_p)
        if self.base_launch is not None and (self.base_url or not self.scores_base):
            raise ConfigError(
                f"{OPTION}.base_launch={self.base_launch!r}: starts a server for scores_base=true "
                "only, and not beside base_url "
                f"(scores_base={self.scores_base}, base_url={self.base_url!r})"
            )
        if (
            self.scores_base
            and self.weight_sync == "full"
            and not (self.base_url or self.base_launch is not None)
        ):
            raise ConfigError(
                f"{OPTION}.scores_base=true with weight_sync=full: the server holds the policy's "
                "weights, not the base model's; use weight_sync=lora, "
                "or give base_url or base_launch"
            )
        # The interpreter and its server package are checked now, before the model loads.
        self._launch_config = self._checked_launch("launch", self.launch)
        self._base_launch_config = self._checked_launch("base_launch", self.base_launch)

    def _checked_launch(self, name: str, options: Any) -> LaunchConfig | None:
        if options is None:
            return None
        if not isinstance(options, dict):
            raise ConfigError(f"{OPTION}.{name}={options!r}: must be a mapping of launch options")
        return self._resolve_launch(options, lambda key: f"{OPTION}.{name}.{key}")

    # ------------------------------------------------------------------ what a subclass gives
    def _resolve_launch(self, options: dict[str, Any], field: Callable[[str], str]) -> LaunchConfig:
        raise NotImplementedError

    def _new_server(
        self, model_path: str, launch: LaunchConfig, adapters: bool = True
    ) -> ManagedServer:
        """A server of ``model_path``; ``adapters``: ready for this sampler's LoRA sync, if it has
        one."""
        raise NotImplementedError

    def _new_client(self, url: str) -> ServerClient:
        raise NotImplementedError

    def _check_tokenizer(self, client: Any) -> None:
        """The server tokenises :data:`PROBE` as the trainer does (else: another tokenizer)."""
        raise NotImplementedError

    def _check_architecture(self, weights: dict[str, torch.Tensor]) -> None:
        """Before the first full push: the server has parameters of these names and sizes."""

    def _served_logp(self, ids: list[int]) -> torch.Tensor:
        """The served policy's log-probs of ``ids[1:]`` given their prefixes (float64)."""
        raise NotImplementedError

    def _served_base_logp(self, ids: list[int]) -> torch.Tensor:
        """The base server's (``base_url``, ``base_launch``) log-probs of ``ids[1:]`` (float64)."""
        raise NotImplementedError

    def _load_full(self, folder: Path, version: int) -> None:
        raise NotImplementedError

    def _load_lora(self, name: str, folder: Path) -> None:
        raise NotImplementedError

    def _unload_lora(self, name: str) -> None:
        raise NotImplementedError

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
                if self._base_client is not None:
                    self._check_tokenizer(self._base_client)
                    self._check_base_weights(policy)
        except BaseException:
            self.close()
            raise

    def _connect(self, policy: Any) -> None:
        if self._launch_config is not None:
            model_path = str(policy.transformer_config._name_or_path)
            self._server = self._new_server(model_path, self._launch_config).start()
            self.url = self._server.url
        self._client = self._new_client(self.url)
        if self._base_launch_config is not None:
            model_path = str(policy.transformer_config._name_or_path)
            self._base_server = self._new_server(
                model_path, self._base_launch_config, adapters=False
            ).start()
            self.base_url = self._base_server.url
        if self.base_url:
            self._base_client = self._new_client(self.base_url)
        self._sync_root = Path(self.sync_dir or tempfile.mkdtemp(prefix="gfnlm-weights-"))
        self._sync_root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _explained(self) -> Iterator[None]:
        """A failed call to a server this sampler launched and that has died says so, with the end
        of its output and the path of its log (kept when the server stops, since it failed)."""
        try:
            yield
        except ServerError as error:
            for which, server in (
                ("launched server", self._server),
                ("launched base server", self._base_server),
            ):
                if server is not None and not server.alive():
                    note = server.failure_note()
                    raise ServerError(f"{error}; the {which} exited; {note}") from None
            raise

    def sync(self, policy: Any, version: int, force: bool = False) -> None:
        """Push the policy's weights as ``version`` (every ``sync_every`` versions, or ``force``).

        Under ``torch.distributed`` every rank must call this (FSDP2 gathers shards); with a shared
        server (``url``) only rank 0 pushes, a server each rank launched gets its own push.
        """
        if self.weight_sync == "none" or (not force and version % self.sync_every):
            return
        if self.weight_sync == "lora" and not self._lora_tag:
            self._lora_tag = _shared_tag()
        changed_only = self._pushes_changed_only()
        weights = self._export(policy, changed_only)
        if weights is not None and self.version < 0:
            self._check_architecture(
                weights
            )  # before the first push: a wrong push can kill a server
        self._push(policy, weights, version)
        if changed_only and self._changed_only_ok is None:
            self._check_changed_only_push(policy, version)

    def _push(self, policy: Any, weights: dict[str, torch.Tensor] | None, version: int) -> None:
        if self._server is not None or _rank() == 0:
            with self._explained():
                if self.weight_sync == "full":
                    self._push_full(weights, version)
                else:
                    self._push_lora(policy, version)
        _barrier()
        self.version = version
        if (
            self.weight_sync == "lora"
        ):  # every rank names the adapter rank 0 (or its own server) loaded
            self._lora_name = self._adapter_name(version)

    def _pushes_changed_only(self) -> bool:
        """A full push after the first one carries only the changing weights, where the engine keeps
        the rest and a first such push was served right (or has not happened yet)."""
        return (
            self.weight_sync == "full"
            and self.pushes_changed_weights
            and self.version >= 0
            and self._changed_only_ok is not False
        )

    def _check_changed_only_push(self, policy: Any, version: int) -> None:
        """After the first push of changed weights only, the server must serve the policy exactly as
        after a full push; if not (an engine that packs layers of different modules together), every
        later push carries all weights, starting with this version's again."""
        try:
            with self._explained():
                self._check_weights(policy)
            self._changed_only_ok = True
        except ServerError as error:
            self._changed_only_ok = False
            print(
                f"gfnlm: {self.engine} server did not serve the policy after a push of its "
                f"changing weights only ({error}); pushing all weights from now on",
                file=sys.stderr,
                flush=True,
            )
            self._push(policy, self._export(policy, changed_only=False), version)

    def _export(self, policy: Any, changed_only: bool = False) -> dict[str, torch.Tensor] | None:
        if self.weight_sync != "full":
            return None
        return merged_state_dict(
            policy.model, getattr(torch, self.weights_dtype), changing_only=changed_only
        )

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
        config = Path(str(self._policy.transformer_config._name_or_path)) / "config.json"

        def write(staging: Path) -> None:
            save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
            if config.is_file():
                shutil.copy(config, staging / "config.json")

        final = self._publish(f"v{version:06d}", write)
        self._load_full(final, version)
        self._retire(final)

    def _adapter_name(self, version: int) -> str:
        """The name under which the adapter of policy version ``version`` is loaded on the
        server."""
        return f"gfnlm-{self._lora_tag}-v{version}"

    def _push_lora(self, policy: Any, version: int) -> None:
        final = self._publish(f"lora{version:06d}", policy.model.save_pretrained)
        name = self._adapter_name(version)
        self._load_lora(name, final)
        if self._lora_name is not None and self._lora_name != name:
            self._unload_lora(self._lora_name)
        self._retire(final)

    # ------------------------------------------------------------------ identity check
    def _check_weights(self, policy: Any) -> None:
        """The server's log-probs on a probe equal the local policy's (else: another model)."""
        ids = policy.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        self._compare_probe(
            policy.model, ids, self._served_logp(ids), self.url, "the policy's weights"
        )

    def _check_base_weights(self, policy: Any) -> None:
        """The base server's log-probs on a probe equal the local base model's (else: another
        model)."""
        ids = policy.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        with policy.base_model() as base:
            self._compare_probe(
                base, ids, self._served_base_logp(ids), self.base_url, "the base model's weights"
            )

    def _compare_probe(
        self, model: torch.nn.Module, ids: list[int], served: torch.Tensor, url: str, what: str
    ) -> None:
        policy = self._policy
        with policy.decoding(model):
            logits = (
                model(input_ids=torch.tensor([ids], device=policy.device)).logits[0, :-1].double()
            )
        local = (
            logits.log_softmax(-1)
            .gather(-1, torch.tensor(ids[1:], device=logits.device)[:, None])
            .squeeze(1)
            .cpu()
        )
        gap = float((served - local).abs().mean())
        if not gap <= self.identity_tolerance:
            raise ServerError(
                f"{self.engine} server {url} does not serve {what}: mean |Δ log p| "
                f"= {gap:.3f} on a probe (tolerance {self.identity_tolerance}); another model?"
            )

    # ------------------------------------------------------------------ requests
    def _map(
        self, call: Callable[[Any], Any], requests: list[Any], concurrency: int | None = None
    ) -> list[Any]:
        """``call(request)`` for every request, ``concurrency`` (default: the option) at a time;
        answers in request order."""
        workers = min(concurrency or self.concurrency, len(requests))
        with self._explained(), ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(call, requests))

    def close(self) -> None:
        """Stop a launched server and delete the weight folders written for it."""
        for server in (self._server, self._base_server):
            if server is not None:
                server.stop()
        self._server = self._base_server = None
        root, self._sync_root, self._served = self._sync_root, None, None
        if root is not None and not self.sync_dir:
            shutil.rmtree(root, ignore_errors=True)


def _shared_tag() -> str:
    """A short random tag, rank 0's on every rank under ``torch.distributed`` (a collective
    call)."""
    import uuid

    tag = [uuid.uuid4().hex[:8]]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(tag, src=0)
    return tag[0]


def check_url(name: str, url: str) -> None:
    """``url`` is ``http(s)://HOST[:PORT][/PATH]``: a typo fails now, not after the model loaded."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError:
        parts, port = None, 0
    bad = (
        parts is None
        or any(c.isspace() for c in url)
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == 0
        or parts.query
        or parts.fragment
    )
    if bad:
        raise ConfigError(
            f"{name}={url!r}: not a server URL; allowed: http://HOST[:PORT] or "
            "https://HOST[:PORT] with PORT in 1-65535, e.g. http://127.0.0.1:30000"
        )


def finite_logp(value: float | None) -> float:
    """A log-prob from a server's JSON: SGLang writes -inf as -999999999.0 (or null), vLLM as null
    or a very large negative number; all become -inf."""
    if value is None or value <= -1e8:
        return -math.inf
    return float(value)


def _rank() -> int:
    return (
        torch.distributed.get_rank()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else 0
    )


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
