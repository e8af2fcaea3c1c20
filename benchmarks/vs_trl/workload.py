"""What gfnlm_run.py and trl_run.py share (both run as scripts from this folder; no gfnlm import,
so TRL's venv can load it): the workload's options and a synchronised clock."""

import argparse
import time

import torch


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, precision and the step's size (defaults: the CPU comparison)."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "auto"],
        default="float32",
        help="auto: bf16 autocast on CUDA (fp32 weights)",
    )
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)


def synchronize(device: str) -> float:
    """The wall clock once the device's queued work is done (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
