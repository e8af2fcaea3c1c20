"""A small client for SGLang's native HTTP API: the calls a rollout sampler needs, each with a
timeout and bounded retries, and every failure as one line naming the URL and the operation.

Built on ``requests`` (with urllib3's ``Retry`` for connection-level retries): the standard,
well-kept synchronous HTTP client, already a dependency of ``transformers``; requests run in a
thread pool for concurrency, so no event loop leaks into the trainer.
"""

import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class ServerError(RuntimeError):
    """A SGLang server did not answer, answered with an error, or is not the server we expect."""


class SGLangClient:
    """The native endpoints of one server (``/generate``, ``/health``, ``/model_info``,
    ``/update_weights_from_disk``, ``/load_lora_adapter``, ``/unload_lora_adapter``).

    ``timeout_s`` bounds each attempt (connect and read); ``retries`` bounds the extra attempts on
    connection errors and 502/503/504, so a dead or hung server fails within about
    ``(retries + 1) * timeout_s`` seconds.
    """

    def __init__(self, url: str, timeout_s: float = 120.0, retries: int = 2, pool_size: int = 16) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        retry = Retry(total=retries, connect=retries, read=False, status=retries, backoff_factor=0.2,
                      status_forcelist=(502, 503, 504), allowed_methods=None, raise_on_status=False)
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _request(self, method: str, endpoint: str, operation: str, timeout_s: float | None = None,
                 **kwargs: Any) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        where = f"{self.url}{endpoint}"
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                response = self.session.request(method, where, timeout=(min(timeout, 10.0), timeout), **kwargs)
                break
            except requests.exceptions.ReadTimeout:
                # A hung server: one more full wait is allowed, no more (bounded time).
                if attempt + 1 == attempts:
                    raise ServerError(f"SGLang server {where} did not answer {operation} within "
                                      f"{timeout:g} s ({attempts} attempts)") from None
            except requests.exceptions.RequestException as exc:
                reason = _short_reason(exc)
                raise ServerError(f"SGLang server {where} unreachable during {operation}: {reason}") from None
        if response.status_code != 200:
            body = response.text.strip().replace("\n", " ")[:200]
            raise ServerError(f"SGLang server {where} refused {operation}: HTTP {response.status_code} {body}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise ServerError(f"SGLang server {where} sent non-JSON for {operation}: "
                              f"{response.text[:120]!r}") from None

    # ------------------------------------------------------------------ readiness and identity
    def healthy(self) -> bool:
        """Whether ``GET /health`` answers 200 now (no retries, short timeout)."""
        try:
            return requests.get(f"{self.url}/health", timeout=(2.0, 5.0)).status_code == 200
        except requests.exceptions.RequestException:
            return False

    def wait_healthy(self, timeout_s: float, alive: Any = None) -> None:
        """Poll ``/health`` until it answers or ``timeout_s`` passes; ``alive()`` (optional) says
        whether the server process still runs, so a crashed launch fails at once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if alive is not None and not alive():
                raise ServerError(f"SGLang server {self.url} exited before /health answered")
            time.sleep(0.5)
        raise ServerError(f"SGLang server {self.url}/health did not answer within {timeout_s:g} s")

    def model_info(self) -> dict[str, Any]:
        """``GET /model_info`` (the served model's path, among others)."""
        return self._request("GET", "/model_info", "model_info")

    # ------------------------------------------------------------------ generation
    def generate(self, payload: dict[str, Any], operation: str = "generate",
                 timeout_s: float | None = None) -> list[dict[str, Any]]:
        """``POST /generate``; always a list of per-request answers."""
        answer = self._request("POST", "/generate", operation, timeout_s=timeout_s, json=payload)
        return answer if isinstance(answer, list) else [answer]

    # ------------------------------------------------------------------ weights
    def weight_size(self, name: str) -> int | None:
        """How many values the served parameter ``name`` has (flattened), ``None`` if the server
        has no parameter of that name (``GET /get_weights_by_name``)."""
        try:
            values = self._request("GET", "/get_weights_by_name", f"get_weights_by_name ({name})",
                                   json={"name": name, "truncate_size": 1 << 30})
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
        answer = self._request("POST", "/update_weights_from_disk", f"update_weights_from_disk (version {version})",
                               json={"model_path": model_path, "flush_cache": True,
                                     "weight_version": str(version)})
        if not (isinstance(answer, dict) and answer.get("success", False)):
            raise ServerError(f"SGLang server {self.url}/update_weights_from_disk failed for version "
                              f"{version}: {str(answer)[:200]}")

    def load_lora_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter folder under ``name`` (the server must run with LoRA enabled)."""
        answer = self._request("POST", "/load_lora_adapter", f"load_lora_adapter ({name})",
                               json={"lora_name": name, "lora_path": path})
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ServerError(f"SGLang server {self.url}/load_lora_adapter refused {name!r}: "
                              f"{str(answer.get('error_message', answer))[:200]}")

    def unload_lora_adapter(self, name: str) -> None:
        """Drop the adapter ``name`` from the server."""
        self._request("POST", "/unload_lora_adapter", f"unload_lora_adapter ({name})", json={"lora_name": name})


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Connection reset", "Remote end closed"):
        if marker in text:
            return marker
    return type(exc).__name__
