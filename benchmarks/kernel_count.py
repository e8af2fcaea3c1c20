r"""Operator calls per decoding step: the dynamic KV-cache path against the static one.

On a GPU, small-batch decoding is bound by launching kernels, not by running them: each operator
the step calls is at least one launch that waits on Python. This probe counts them on CPU with
``torch.profiler`` (the eager operator calls are the same on either device) for one decoding step
of a random Llama as deep as a real model (24 layers, narrow: hidden 64, SmolLM2's 49k vocabulary),
8 prompts × 8 samples, plain and with LoRA adapters on the attention projections:

* ``dynamic``: :func:`gfnlm.models.decoding.decode_with_cache` (today's CPU path);
* ``static``: :func:`gfnlm.models.decoding.decode_with_static_cache` run eagerly;
* ``static + CUDA graph``: the same with the one-token forward pass replayed as one graph launch,
  which is what the capture launches on CUDA (counted here with an eager stand-in for the replay
  whose operators are counted as one launch); sampling and the bookkeeping around it stay eager.

A step's count is the difference between decoding 6 and 3 tokens, divided by 3, so the prompt
pass and the setup cancel out (no row ends: EOS is an id the model never draws).

    python benchmarks/kernel_count.py [--layers 24] [--prompts 8] [--samples 8]

Prints a table and writes ``benchmarks/out/kernel_count.json``. :func:`count_operator_calls`
counts any function's operator calls.
"""

import argparse
import functools
import json
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import LlamaConfig, LlamaForCausalLM

from gfnlm.models.decoding import decode_with_cache, decode_with_static_cache

OUT = Path(__file__).resolve().parent / "out"
# The profiler range that stands for one CUDA graph launch.
GRAPH_RANGE = "cuda_graph_replay"
GRAPH_LAUNCH = "cudaGraphLaunch"
# Operators that allocate without writing: no kernel on a GPU (views are found from their schema).
ALLOCATING = frozenset(
    {
        "aten::empty",
        "aten::empty_strided",
        "aten::empty_like",
        "aten::resize_",
        "aten::_unsafe_view",
    }
)
# Tokens decoded by the two runs whose difference is counted; both capture the graph and check
# its first replay (steps 1 and 2), so only replays differ.
SHORT, LONG = 3, 6


def count_operator_calls(
    fn: Callable[[], Any], top: int = 12, graph_range: str | None = None
) -> dict[str, int]:
    """Run ``fn()`` once under ``torch.profiler`` (CPU) and count its aten operator calls.

    Returns ``total``: operator calls made from outside an operator (what Python dispatches, each
    paying the dispatcher and, on a GPU, its launches); ``launches``: the estimated kernel launches
    (innermost operators that write a tensor: no views, bare allocations or metadata queries, and
    no composite operator whose callees launch); then the ``top`` operators by launches, most
    first, as ``{"aten::mm": 96, ...}``. Operators inside a profiler range named ``graph_range``
    count as one call and one launch (``cudaGraphLaunch``) per range: a replayed CUDA graph.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    calls, launches, below = 0, Counter(), {}
    for event in prof.events():
        if graph_range is not None and event.name == graph_range:
            calls += 1
            launches[GRAPH_LAUNCH] += 1
            continue
        if not event.name.startswith("aten::") or _inside(event, graph_range):
            continue
        parent = event.cpu_parent
        calls += parent is None or not parent.name.startswith("aten::")
        if _launches_itself(event.name) and not _launch_below(event, below):
            launches[event.name] += 1
    return {
        "total": calls,
        "launches": sum(launches.values()),
        **dict(launches.most_common(top)),
    }


def _inside(event: Any, graph_range: str | None) -> bool:
    parent = event.cpu_parent
    while graph_range is not None and parent is not None:
        if parent.name == graph_range:
            return True
        parent = parent.cpu_parent
    return False


def _launch_below(event: Any, memo: dict[int, bool]) -> bool:
    """Whether an operator that ``event`` calls, directly or not, launches a kernel."""
    if id(event) not in memo:
        memo[id(event)] = any(
            child.name.startswith("aten::")
            and (_launches_itself(child.name) or _launch_below(child, memo))
            for child in event.cpu_children
        )
    return memo[id(event)]


@functools.cache
def _launches_itself(name: str) -> bool:
    """Whether the operator, unless it is a composite of others, launches work on the device: not a
    view (an alias of its input it does not write), a bare allocation, or a query that returns no
    tensor. ``_local_scalar_dense`` (``.item()``, ``bool(t)``) copies to the host: it counts."""
    if name in ALLOCATING:
        return False
    if name == "aten::_local_scalar_dense":
        return True
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None:
        return True
    schemas = [getattr(packet, overload)._schema for overload in packet.overloads()]
    on_tensors = [s for s in schemas if s.arguments and str(s.arguments[0].type) == "Tensor"]
    for schema in on_tensors or schemas:
        tensors = [r for r in schema.returns if "Tensor" in str(r.type)]
        if tensors and not all(r.alias_info and not r.alias_info.is_write for r in tensors):
            return True
    return False


def graph_stand_in(forward: Callable[[], torch.Tensor]):
    """:func:`gfnlm.models.decoding.capture_cuda_graph`'s contract on CPU: the first run is real,
    and each replay runs the step inside a :data:`GRAPH_RANGE` profiler range (one launch)."""

    def replay() -> torch.Tensor:
        with record_function(GRAPH_RANGE):
            return forward()

    return forward(), replay


def random_llama(layers: int, lora: bool, vocab: int = 49152) -> torch.nn.Module:
    """A narrow random Llama ``layers`` deep, with LoRA on q/k/v/o (as configs/default) or not."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    if lora:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        with warnings.catch_warnings():  # peft reads a deprecated transformers alias
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(model, LoraConfig(r=8, target_modules=targets)).eval()
    return model


def prompts(count: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random prompts of 6 to 20 tokens, left-padded."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(6, 21, (count,), generator=generator)
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] >= (width - lengths)[:, None]
    ids = torch.randint(3, vocab, (count, width), generator=generator).masked_fill(~mask, 0)
    return ids, mask


def per_step(model, ids, mask, samples: int, path: str) -> dict[str, float]:
    """One decoding step's counts: (run of LONG tokens - run of SHORT tokens) / (LONG - SHORT)."""
    decoder = decode_with_cache if path == "dynamic" else decode_with_static_cache
    extra = {"graph": graph_stand_in} if path == "static + CUDA graph" else {}

    def run(tokens: int) -> dict[str, int]:
        # EOS -1: no row ever ends, so every step runs every row.
        return count_operator_calls(
            lambda: decoder(
                model,
                ids,
                mask,
                samples,
                max_new_tokens=tokens,
                eos_token_id=-1,
                pad_token_id=0,
                **extra,
            ),
            top=10**6,
            graph_range=GRAPH_RANGE,
        )

    short, long = run(SHORT), run(LONG)
    return {
        name: (long[name] - short.get(name, 0)) / (LONG - SHORT)
        for name in long
        if long[name] != short.get(name, 0)
    }


PATHS = ("dynamic", "static", "static + CUDA graph")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--top", type=int, default=8, help="operators listed per path")
    parser.add_argument("--out", type=Path, default=OUT / "kernel_count.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "layers": args.layers,
        "rows": f"{args.prompts}x{args.samples}",
        "per_step": {},
    }
    print(
        f"operator calls per decoding step, {args.layers}-layer narrow Llama, "
        f"{args.prompts} prompts x {args.samples} samples (eager counts on CPU)\n"
    )
    print("| model | path | operator calls | kernel launches (est.) |")
    print("|---|---|---:|---:|")
    for lora in (False, True):
        model = random_llama(args.layers, lora)
        ids, mask = prompts(args.prompts, model.config.vocab_size)
        variant = "LoRA q/k/v/o" if lora else "plain"
        for path in PATHS:
            counts = per_step(model, ids, mask, args.samples, path)
            ops = sorted(
                ((k, v) for k, v in counts.items() if k.startswith("aten::") or k == GRAPH_LAUNCH),
                key=lambda item: -item[1],
            )
            results["per_step"][f"{variant} / {path}"] = {
                "total": counts.get("total", 0.0),
                "launches": counts.get("launches", 0.0),
                "top": dict(ops[: args.top]),
            }
            print(
                f"| {variant} | {path} | {counts.get('total', 0):.0f} "
                f"| {counts.get('launches', 0):.0f} |"
            )
    print(
        "\nOn CUDA the static path's one-token forward pass is captured once and replayed: one "
        "cudaGraphLaunch a step in place of all of its operators; what stays eager is sampling "
        "(temperature, top-p, min-p, the draw) and writing the step's inputs."
    )
    for key, value in results["per_step"].items():
        listed = ", ".join(
            f"{name.removeprefix('aten::')} {n:.0f}" for name, n in value["top"].items()
        )
        print(f"  {key}: {listed}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
