"""How the tests and benchmarks start SGLang on a CPU machine (test tooling, not the library).

SGLang's PyPI package targets CUDA. ``make sglang-cpu`` builds ``.bench-venvs/sglang`` (torch CPU,
SGLang's pure-Python dependencies, ``sglang==0.5.23`` without its CUDA dependencies), and the two
import-only stubs in ``stubs/`` (``sgl_kernel``, ``torchvision``) let its CPU engine import. Pinned
to one SGLang version because the recipe relies on its internals. On a GPU machine use the
ordinary ``pip install sglang==0.5.23`` and no stubs.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().parent / "stubs"
PYTHON = Path(
    os.environ.get("GFNLM_SGLANG_PYTHON", ROOT / ".bench-venvs" / "sglang" / "bin" / "python")
)


def cpu_launch(dtype: str = "float32", max_total_tokens: int = 8192, **overrides) -> dict:
    """``sampler_options.launch`` for the CPU recipe (float32 by default: exact comparisons).

    ``overrides`` replace fields; the interpreter (``python``, default this repository's
    ``.bench-venvs/sglang``) must exist. ``gfnlm serve --cpu`` and the launch option ``cpu: true``
    use this function too.
    """
    launch = {
        "python": str(PYTHON),
        "args": [
            "--device",
            "cpu",
            "--attention-backend",
            "torch_native",
            "--disable-overlap-schedule",
            "--sampling-backend",
            "pytorch",
            "--dtype",
            dtype,
            "--tp",
            "1",
            "--max-total-tokens",
            str(max_total_tokens),
            "--skip-server-warmup",
            "--sleep-on-idle",
        ],
        "env": {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": str(STUBS)},
        "startup_timeout_s": 600.0,
    }
    launch = {**launch, **overrides}
    if not Path(launch["python"]).exists():
        raise FileNotFoundError(
            f"{launch['python']}: no SGLang CPU venv; build it with `make sglang-cpu`"
        )
    return launch
