"""A small client for the endpoints of a vLLM server that a rollout sampler needs, on the shared
plumbing of :class:`~gfnlm.serving.sglang_client.ServerClient` (one total deadline per call,
retries only for requests that never reached the server, progress lines, one-line errors).

* ``/v1/completions`` (OpenAI-compatible) with token-id prompts, ``return_tokens_as_token_ids``
  and log-probs: rollouts, and the teacher-forced log-probs of a sequence (``prompt_logprobs``).
* ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (a server started with
  ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``).
* ``/collective_rpc`` with ``reload_weights`` and ``/reset_prefix_cache`` (a server started with
  ``VLLM_SERVER_DEV_MODE=1``): the full weights reloaded in place from a folder of safetensors,
  then no cached prefix computed with the old weights survives.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gfnlm.serving.sglang_client import ServerClient, ServerError


class VLLMClient(ServerClient):
    """The endpoints of one vLLM server; ``model`` is the served model's name (``/v1/models``),
    found on first use unless given."""

    engine = "vLLM"

    def __init__(self, url: str, *args: Any, model: str = "", **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self._model = model

    @property
    def model(self) -> str:
        """The served base model's name (the first entry of ``/v1/models`` that is no adapter)."""
        if not self._model:
            answer = self._request("GET", "/v1/models", "models")
            names = [entry["id"] for entry in answer.get("data", []) if not entry.get("parent")]
            if not names:
                raise ServerError(
                    f"vLLM server {self.url}/v1/models lists no model: {str(answer)[:200]}"
                )
            self._model = names[0]
        return self._model

    def completions(
        self, payload: dict[str, Any], operation: str = "completions"
    ) -> list[dict[str, Any]]:
        """``POST /v1/completions`` (``model`` defaults to the base model); the answer's choices,
        in order."""
        answer = self._request(
            "POST", "/v1/completions", operation, json={"model": self.model, **payload}
        )
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise ServerError(
                f"vLLM server {self.url}/v1/completions sent no choices for {operation}: "
                f"{str(answer)[:200]}"
            )
        return sorted(choices, key=lambda choice: choice.get("index", 0))

    def load_lora_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter folder under ``name`` (then requests name it as their ``model``),
        replacing an adapter of that name (another run's); the server answers in plain text."""
        with _hint_on_404("start it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"):
            self._request(
                "POST",
                "/v1/load_lora_adapter",
                f"load_lora_adapter ({name})",
                text=True,
                json={"lora_name": name, "lora_path": path, "load_inplace": True},
            )

    def unload_lora_adapter(self, name: str) -> None:
        """Drop the adapter ``name`` from the server."""
        self._request(
            "POST",
            "/v1/unload_lora_adapter",
            f"unload_lora_adapter ({name})",
            text=True,
            json={"lora_name": name},
        )

    def reload_weights(self, path: str, version: int) -> None:
        """Reload every weight in place from the safetensors in ``path``, then drop the prefix cache
        (its keys and values were computed with the old weights). Both answer in plain text."""
        with _hint_on_404("start it with VLLM_SERVER_DEV_MODE=1, or use weight_sync=lora"):
            self._request(
                "POST",
                "/collective_rpc",
                f"reload_weights (version {version})",
                json={"method": "reload_weights", "kwargs": {"weights_path": path}},
            )
            self._request(
                "POST", "/reset_prefix_cache", f"reset_prefix_cache (version {version})", text=True
            )


@contextmanager
def _hint_on_404(hint: str) -> Iterator[None]:
    """An endpoint the server does not have (HTTP 404) says how to start a server that has it."""
    try:
        yield
    except ServerError as error:
        if "HTTP 404" not in str(error):
            raise
        raise ServerError(f"{error}; the server lacks this endpoint: {hint}") from None
