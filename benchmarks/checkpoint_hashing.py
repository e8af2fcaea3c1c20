"""What the SHA-256 of every checkpoint file costs at save and at load.

A save hashes each file in the pass that flushes it to disk (the bytes are still in the page
cache); a load hashes the two files resume reads before it trusts them. This times
``save_checkpoint`` and ``load_checkpoint`` with the hashes and without them (the same code with
the hashing step replaced by a plain fsync / no check), paired and interleaved, for the default
LoRA run's checkpoint and for a full fine-tuning checkpoint of SmolLM2-135M (float32 weights plus
AdamW's two moments). Prints median and range over ``--rounds`` pairs.

    .venv/bin/python benchmarks/checkpoint_hashing.py [--rounds 5] [--dir FOLDER]
"""

import argparse
import contextlib
import functools
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from gfnlm.training import checkpoint

# SmolLM2-135M: 30 layers, hidden 576, 3 key/value heads of 64 (k/v 192 wide), 134.5M parameters.
LAYERS, HIDDEN, KV = 30, 576, 192
FULL_PARAMETERS = 134_515_008


def lora_weights(rank: int = 8) -> dict[str, torch.Tensor]:
    """LoRA r=8 on q, k, v, o of every layer (configs/default.yaml): 0.92M parameters."""
    shapes = {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN}
    out = {}
    for layer in range(LAYERS):
        for name, width in shapes.items():
            out[f"layers.{layer}.{name}.lora_A"] = torch.randn(rank, HIDDEN)
            out[f"layers.{layer}.{name}.lora_B"] = torch.randn(width, rank)
    return out


def full_weights() -> dict[str, torch.Tensor]:
    """As many float32 parameters as SmolLM2-135M, in 30 blocks."""
    return {f"block.{i}": torch.randn(FULL_PARAMETERS // LAYERS) for i in range(LAYERS)}


def adam_state(weights: dict[str, torch.Tensor]) -> dict:
    """The training state a checkpoint holds beside the weights: AdamW's two moments per tensor."""
    moments = {
        name: {
            "exp_avg": torch.randn_like(w),
            "exp_avg_sq": torch.rand_like(w),
            "step": torch.tensor(10.0),
        }
        for name, w in weights.items()
    }
    return {
        "step": 10,
        "logz": None,
        "optimizer": {"state": moments, "param_groups": [{"lr": 3e-4}]},
    }


def _fsync_only(path: Path) -> str:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return ""


@contextlib.contextmanager
def hashing(enabled: bool) -> Iterator[None]:
    """Saves and loads as shipped (``enabled``), or with the hashing replaced by a plain fsync and
    the hash check skipped (what the checkpoint code did before it hashed)."""
    if enabled:
        yield
        return
    saved_hash, saved_check = checkpoint._sha256_and_fsync, checkpoint.check_manifest
    checkpoint._sha256_and_fsync = _fsync_only
    checkpoint.check_manifest = (
        lambda path, names=(checkpoint.POLICY_FILE, checkpoint.STATE_FILE), hashes=True: (
            saved_check(path, names, hashes=False)
        )
    )
    try:
        yield
    finally:
        checkpoint._sha256_and_fsync, checkpoint.check_manifest = saved_hash, saved_check


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(case: str, weights: dict[str, torch.Tensor], rounds: int, root: Path) -> None:
    state = adam_state(weights)
    sizes = {}
    times: dict[tuple[str, bool], list[float]] = {}
    for round_index in range(rounds):
        for enabled in (True, False) if round_index % 2 == 0 else (False, True):
            folder = root / f"{case}-{enabled}"
            shutil.rmtree(folder, ignore_errors=True)
            with hashing(enabled):
                save = timed(
                    functools.partial(checkpoint.save_checkpoint, folder, 1, weights, state, "x: 1")
                )
                path = checkpoint.latest_checkpoint(folder)
                load = timed(functools.partial(checkpoint.load_checkpoint, path))
            times.setdefault(("save", enabled), []).append(save)
            times.setdefault(("load", enabled), []).append(load)
            sizes = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
            shutil.rmtree(folder, ignore_errors=True)
    megabytes = sum(sizes.values()) / 1e6
    print(
        f"\n{case}: {megabytes:.1f} MB per checkpoint "
        f"({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sizes.items())})"
    )
    for what in ("save", "load"):
        with_hash, without = times[(what, True)], times[(what, False)]
        ratios = [a / b for a, b in zip(with_hash, without, strict=True)]
        print(
            f"  {what}: {statistics.median(with_hash):.3f} s with SHA-256 "
            f"({min(with_hash):.3f}-{max(with_hash):.3f}), {statistics.median(without):.3f} s "
            f"without ({min(without):.3f}-{max(without):.3f}); paired ratio "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="paired save+load rounds per case (default 5)"
    )
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.rounds} rounds, seed 0"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        measure(
            "LoRA r=8 on q/k/v/o (configs/default.yaml)", lora_weights(), args.rounds, Path(root)
        )
        measure(
            "full fine-tuning of SmolLM2-135M (float32)", full_weights(), args.rounds, Path(root)
        )


if __name__ == "__main__":
    main()
