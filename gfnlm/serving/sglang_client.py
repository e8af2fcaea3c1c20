"""A small client for an inference server's HTTP API (:class:`ServerClient`: deadlines, retries,
progress lines, one-line errors) and SGLang's native endpoints on top of it (:class:`SGLangClient`;
vLLM's are in :mod:`gfnlm.serving.vllm_client`): the calls a rollout sampler needs, each under one
total deadline, and every failure as one line naming the URL, the operation and the deadline.

Built on ``requests``: the standard, well-kept synchronous HTTP client, already a dependency of
``transformers``; requests run in a thread pool for concurrency, so no event loop leaks into the
trainer.

Retries are only for requests that provably did not reach the server (the connection was refused
or could not be opened) and for 502/503/504 (a proxy or a server not ready yet). A request that
timed out while the server was reading or answering it is never sent again: ``/generate`` and the
weight updates are not idempotent, and the server may still be working on it.

While a call waits longer than :data:`PROGRESS_EVERY_S`, one line per interval goes to stderr
(``waiting for SGLang server URL/generate (generate): 20 s of 120 s``), so a silent server is
visible instead of a silent hang.
"""

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from gfnlm.contracts.errors import RunError

PROGRESS_EVERY_S = 10.0  # how often a waiting call reports itself on stderr
RETRY_STATUSES = (502, 503, 504)


class ServerError(RunError):
    """An inference server (SGLang, vLLM) did not answer, answered with an error, or is not the
    server we expect."""


def print_progress(line: str) -> None:
    """Write a progress line to stderr without breaking a tqdm bar that may be on screen."""
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover (tqdm comes with transformers)
        print(line, file=sys.stderr, flush=True)


class _Waits:
    """The calls in flight. One daemon thread (alive only while calls are in flight) reports the
    longest-waiting call every ``every_s``: one line per interval, however many requests run
    concurrently, so a slow batch of 8 requests is not 8 lines every 10 s."""

    def __init__(
        self, every_s: float, report: Callable[[str], None], engine: str = "SGLang"
    ) -> None:
        self.every_s = every_s
        self.report = report
        self.engine = engine
        self._lock = threading.Lock()
        self._calls: dict[object, tuple[str, str, float, float]] = {}
        self._watcher: threading.Thread | None = None

    @contextmanager
    def track(self, where: str, operation: str, deadline_s: float) -> Iterator[None]:
        token = object()
        with self._lock:
            self._calls[token] = (where, operation, time.monotonic(), deadline_s)
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="server-waits", daemon=True
                )
                self._watcher.start()
        try:
            yield
        finally:
            with self._lock:
                del self._calls[token]

    def _watch(self) -> None:
        reported: tuple[object, int] = (None, 0)  # (call, intervals already reported)
        while True:
            time.sleep(min(0.5, self.every_s / 4))
            with self._lock:
                if not self._calls:
                    self._watcher = None  # a later call starts a new watcher
                    return
                token, (where, operation, started, deadline_s) = min(
                    self._calls.items(), key=lambda c: c[1][2]
                )
                count = len(self._calls)
            waited = time.monotonic() - started
            intervals = int(waited // self.every_s)
            done = reported[1] if reported[0] is token else 0
            if intervals > done:
                reported = (token, intervals)
                others = f" ({count} requests in flight)" if count > 1 else ""
                self.report(
                    f"waiting for {self.engine} server {where} ({operation}): "
                    f"{intervals * self.every_s:g} s of {deadline_s:g} s{others}"
                )


class ServerClient:
    """The HTTP plumbing shared by the server clients: ``/health`` and JSON requests.

    ``timeout_s`` is the deadline of a whole call, retries included: a dead, hung or silent server
    fails within ``timeout_s`` seconds (plus at most one connect timeout of a few seconds).
    ``retries`` bounds the extra attempts for requests that never reached the server (connection
    refused) and for 502/503/504; a read timeout is final (see the module docstring).
    """

    engine = "SGLang"  # how messages name the server (a subclass for another engine sets its own)

    def __init__(
        self,
        url: str,
        timeout_s: float = 120.0,
        retries: int = 2,
        pool_size: int = 16,
        report: Callable[[str], None] = print_progress,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.report = report
        self.session = requests.Session()
        # No urllib3 retries at all: every retry is decided below, where the deadline is known.
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._waits = _Waits(PROGRESS_EVERY_S, report, self.engine)

    def _request(
        self,
        method: str,
        endpoint: str,
        operation: str,
        timeout_s: float | None = None,
        text: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One call; the answer's JSON (``text``: its text, for endpoints that answer in plain
        text)."""
        deadline_s = self.timeout_s if timeout_s is None else float(timeout_s)
        where = f"{self.url}{endpoint}"
        with self._waits.track(where, operation, deadline_s):
            response = self._send(method, where, operation, deadline_s, **kwargs)
        if response.status_code != 200:
            body = response.text.strip().replace("\n", " ")[:200]
            raise ServerError(
                f"{self.engine} server {where} refused {operation}: "
                f"HTTP {response.status_code} {body}"
            )
        if text:
            return response.text
        try:
            return response.json() if response.content else None
        except ValueError:
            raise ServerError(
                f"{self.engine} server {where} sent non-JSON for {operation}: "
                f"{response.text[:120]!r}"
            ) from None

    def _send(
        self, method: str, where: str, operation: str, deadline_s: float, **kwargs: Any
    ) -> requests.Response:
        """One request, re-sent only when it provably did not reach the server or got 502/503/504,
        at most ``retries`` times and never past the deadline."""
        end = time.monotonic() + deadline_s
        for attempt in range(self.retries + 1):
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                # Each socket read may wait for what is left of the deadline (the servers answer
                # a non-streaming request in one piece, so this bounds the whole answer).
                response = self.session.request(
                    method, where, timeout=(min(left, 10.0), left), **kwargs
                )
            except requests.exceptions.ReadTimeout:
                break  # the server has the request: sending it again could run it twice
            except requests.exceptions.RequestException as exc:
                if not _never_sent(exc) or attempt == self.retries:
                    raise ServerError(
                        f"{self.engine} server {where} unreachable during {operation}: "
                        f"{_short_reason(exc)}"
                    ) from None
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return response
            time.sleep(min(0.2 * 2**attempt, max(end - time.monotonic(), 0.0)))
        raise ServerError(
            f"{self.engine} server {where} did not answer {operation} within its deadline of "
            f"{deadline_s:g} s (sampling.sampler_options.timeout_s); the request was not sent again"
        )

    # ------------------------------------------------------------------ readiness and identity
    def healthy(self, timeout_s: float = 5.0) -> bool:
        """Whether ``GET /health`` answers 200 now (no retries, at most ``timeout_s``)."""
        try:
            return (
                requests.get(
                    f"{self.url}/health", timeout=(min(2.0, timeout_s), timeout_s)
                ).status_code
                == 200
            )
        except requests.exceptions.RequestException:
            return False

    def wait_healthy(self, timeout_s: float, alive: Callable[[], bool] | None = None) -> None:
        """Poll ``/health`` until it answers or ``timeout_s`` passes, with a progress line every
        :data:`PROGRESS_EVERY_S`; ``alive()`` (optional) says whether the server process still
        runs, so a crashed launch fails at once."""
        end = time.monotonic() + timeout_s
        with self._waits.track(f"{self.url}/health", "start-up", timeout_s):
            while (left := end - time.monotonic()) > 0:
                if self.healthy(min(5.0, left)):
                    return
                if alive is not None and not alive():
                    raise ServerError(
                        f"{self.engine} server {self.url} exited before /health answered"
                    )
                time.sleep(min(0.5, max(end - time.monotonic(), 0.0)))
        raise ServerError(
            f"{self.engine} server {self.url}/health did not answer within the start-up "
            f"deadline of {timeout_s:g} s (launch option startup_timeout_s)"
        )


class SGLangClient(ServerClient):
    """The native endpoints of one SGLang server (``/generate``, ``/health``, ``/model_info``,
    ``/update_weights_from_disk``, ``/load_lora_adapter``, ``/unload_lora_adapter``)."""

    def model_info(self) -> dict[str, Any]:
        """``GET /model_info`` (the served model's path, among others)."""
        return self._request("GET", "/model_info", "model_info")

    # ------------------------------------------------------------------ generation
    def generate(
        self, payload: dict[str, Any], operation: str = "generate", timeout_s: float | None = None
    ) -> list[dict[str, Any]]:
        """``POST /generate``; always a list of per-request answers."""
        answer = self._request("POST", "/generate", operation, timeout_s=timeout_s, json=payload)
        return answer if isinstance(answer, list) else [answer]

    # ------------------------------------------------------------------ weights
    def weight_size(self, name: str) -> int | None:
        """How many values the served parameter ``name`` has (flattened), ``None`` if the server
        has no parameter of that name (``GET /get_weights_by_name``)."""
        try:
            values = self._request(
                "GET",
                "/get_weights_by_name",
                f"get_weights_by_name ({name})",
                json={"name": name, "truncate_size": 1 << 30},
            )
        except ServerError as error:
            if "HTTP 400" in str(error):
                return None
            raise
        count = 0
        stack = [values]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            else:
                count += 1
        return count

    def update_weights_from_disk(self, model_path: str, version: int) -> None:
        """Reload the served weights from a folder of safetensors (``flush_cache``: no stale KV)."""
        answer = self._request(
            "POST",
            "/update_weights_from_disk",
            f"update_weights_from_disk (version {version})",
            json={"model_path": model_path, "flush_cache": True, "weight_version": str(version)},
        )
        if not (isinstance(answer, dict) and answer.get("success", False)):
            raise ServerError(
                f"SGLang server {self.url}/update_weights_from_disk failed for version "
                f"{version}: {str(answer)[:200]}"
            )

    def load_lora_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter folder under ``name`` (the server must run with LoRA enabled)."""
        answer = self._request(
            "POST",
            "/load_lora_adapter",
            f"load_lora_adapter ({name})",
            json={"lora_name": name, "lora_path": path},
        )
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ServerError(
                f"SGLang server {self.url}/load_lora_adapter refused {name!r}: "
                f"{str(answer.get('error_message', answer))[:200]}"
            )

    def unload_lora_adapter(self, name: str) -> None:
        """Drop the adapter ``name`` from the server."""
        self._request(
            "POST",
            "/unload_lora_adapter",
            f"unload_lora_adapter ({name})",
            json={"lora_name": name},
        )


def _never_sent(exc: Exception) -> bool:
    """Whether a failed request provably never reached the server: the connection could not be
    opened (refused, unresolvable name, connect timeout). A reset or a closed connection after
    sending does not count: the server may have read the request."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "Connection reset",
        "Remote end closed",
    ):
        if marker in text:
            return marker
    return type(exc).__name__
