"""What bfloat16 does on this CPU: matrix-product throughput in float32 and bfloat16, the time of
one SmolLM2 decode step's matrix products alone (what bounds any engine's sampling step on this
CPU), and the default PowerFlow step's parts (HF sampling, base pass, update) in float32, under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (float32 weights cast at every product) and with
``model.dtype=bfloat16`` (the model's weights stored in bfloat16; PEFT keeps the LoRA adapter in
float32). The trainer computes in float32 on CPU by default; this measures what it leaves on the
table where the CPU has native bfloat16 (AVX512-BF16 or AMX).

    python benchmarks/cpu_bf16.py            # 4 steps each (the first a warm-up), ≤ 48 new tokens
    python benchmarks/cpu_bf16.py --steps 0  # the matrix products only (seconds)
"""

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SHAPES = (
    (64, 576, 1536),
    (64, 576, 49152),
    (2048, 2048, 2048),
)  # a decode batch's MLP and output layer; a large square
# SmolLM2-135M's products per decode step, [k, n] each: per layer q/k/v (576 + 2 x 192 outputs), o,
# gate/up (2 x 1536), down; then the tied output layer.
SMOLLM2_LAYER = ((576, 960), (576, 576), (576, 3072), (1536, 576))
SMOLLM2_LAYERS, SMOLLM2_HEAD = 30, (576, 49152)


def gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype``, repeated for about ``seconds``."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - started) / 1e9


def decode_products_ms(batch: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """Milliseconds of one SmolLM2 decode step's matrix products at ``batch`` sequences in ``dtype``
    (no attention, norms or sampling: a floor for an engine's decode step)."""
    weights = [
        torch.randn(k, n, dtype=dtype) for _ in range(SMOLLM2_LAYERS) for k, n in SMOLLM2_LAYER
    ]
    weights.append(torch.randn(*SMOLLM2_HEAD, dtype=dtype))
    inputs = {
        k: torch.randn(batch, k, dtype=dtype)
        for k in {k for k, _ in (*SMOLLM2_LAYER, SMOLLM2_HEAD)}
    }

    def step() -> None:
        for weight in weights:
            inputs[weight.shape[0]] @ weight

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats * 1e3


# name: (model.dtype, under torch.autocast to bfloat16)
PRECISIONS = {
    "float32": ("float32", False),
    "bf16 autocast": ("float32", True),
    "bfloat16 weights": ("bfloat16", False),
}


def step_parts(precision: str, steps: int, max_new_tokens: int) -> dict[str, list[float]]:
    """Seconds of each part of the default config's steps (HF sampler), the first step untimed."""
    parts: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        config = load_config(
            REPO / "configs/default.yaml",
            [
                f"train.out_dir={out}",
                "train.steps=1000",
                "data.eval=''",
                f"sampling.max_new_tokens={max_new_tokens}",
                f"model.dtype={PRECISIONS[precision][0]}",
            ],
        )
        trainer = Trainer(config, progress=False)
        for index in range(steps + 1):
            torch.manual_seed(index)
            with (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if PRECISIONS[precision][1]
                else contextlib.nullcontext()
            ):
                metrics = trainer.train_step()
            trainer.step += 1
            if index:
                for key in ("step", "sample", "score", "update"):
                    parts.setdefault(key, []).append(metrics[f"time/{key}"])
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps per precision (after one warm-up); 0: the matrix products only",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    print(f"CPU, {torch.get_num_threads()} threads; torch {torch.__version__}")
    for m, k, n in SHAPES:
        fp32, bf16 = gflops(m, k, n, torch.float32), gflops(m, k, n, torch.bfloat16)
        print(
            f"matmul {m}x{k}x{n}: float32 {fp32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s "
            f"({bf16 / fp32:.2f}x)",
            flush=True,
        )
    for batch in (16, 64):
        fp32, bf16 = (
            decode_products_ms(batch, torch.float32),
            decode_products_ms(batch, torch.bfloat16),
        )
        print(
            f"SmolLM2 decode step's matrix products, {batch} sequences: float32 {fp32:.1f} ms, "
            f"bfloat16 {bf16:.1f} ms",
            flush=True,
        )
    if args.steps < 1:
        return 0
    results = {name: step_parts(name, args.steps, args.max_new_tokens) for name in PRECISIONS}
    print(
        f"\nDefault PowerFlow step (HF sampler, 4 prompts x 4 samples, <= {args.max_new_tokens} "
        f"new tokens), seconds, median (min-max) of {args.steps} steps, torch seeds 1-{args.steps}:"
    )
    print("| precision | step | sample | base score | update |\n|---|---|---|---|---|")
    for name, parts in results.items():
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in parts.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
