"""Decoding tokens/s of the HF sampler's loops on a GPU: the dynamic KV cache (today's path) against
the static one, run eagerly and with its one-token step replayed as a CUDA graph, on the random
~0.5B Llama of trainer_gpu.py (LoRA on q/k/v/o as configs/default, bf16 autocast).

    python benchmarks/gpu/decoding_gpu.py --tokenizer DIR [--batches 8x8 64x8] \
        [--max-new-tokens 128] [--rounds 3] [--out DIR]
    python benchmarks/gpu/decoding_gpu.py --device cpu --size tiny --batches 2x2 \
        --max-new-tokens 6 --rounds 1                                  # a smoke run (seconds)

Batches are prompts x samples (each prompt prefilled once). No row ends (EOS is an id the model
never draws), so every path decodes the same rows x tokens. Each path's tokens are compared with
the dynamic path's drawn from the same seed ("same tokens": the share of rows identical). Writes
``decoding_gpu_<device>.md`` and ``.json`` to ``--out`` (default: $OUT, else benchmarks/out).
DIR is any Hugging Face tokenizer folder (default: the SmolLM2 one gfnlm caches).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from gfnlm.models.decoding import capture_cuda_graph, decode_with_cache, decode_with_static_cache
from gfnlm.models.loading import ensure_smollm2
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

# The same model as the trainer benchmark, built by its own function.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_gpu import build_model

REPO = Path(__file__).resolve().parents[2]


def parse_batch(text: str) -> tuple[int, int]:
    """``"8x8"`` → (8 prompts, 8 samples each)."""
    prompts, _, samples = text.partition("x")
    if not (prompts.isdigit() and samples.isdigit() and int(prompts) > 0 and int(samples) > 0):
        raise argparse.ArgumentTypeError(f"--batches {text!r}: must be PROMPTSxSAMPLES, e.g. 8x8")
    return int(prompts), int(samples)


def random_prompts(count: int, vocab: int, device: torch.device):
    """``count`` random prompts of 16 to 64 tokens, left-padded."""
    generator = torch.Generator().manual_seed(count)
    lengths = torch.randint(16, 65, (count,), generator=generator)
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] >= (width - lengths)[:, None]
    ids = torch.randint(3, vocab, (count, width), generator=generator).masked_fill(~mask, 0)
    return ids.to(device), mask.to(device)


def paths(device: torch.device) -> dict:
    """The decoding loops to time, by name."""
    found = {"dynamic": (decode_with_cache, {}), "static": (decode_with_static_cache, {})}
    if device.type == "cuda":
        found["static + CUDA graph"] = (decode_with_static_cache, {"graph": capture_cuda_graph})
    return found


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_path(policy, decoder, extra, ids, mask, samples, max_new_tokens, rounds):
    """Median seconds of ``rounds`` timed calls after one warm-up call, the tokens of the first
    timed call (seed 0), peak memory and the warnings raised (a graph that fell back)."""
    device = policy.device
    times, tokens = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for attempt in range(rounds + 1):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            torch.manual_seed(0)
            synchronize(device)
            start = time.perf_counter()
            with policy.decoding():
                drawn, _ = decoder(
                    policy.model,
                    ids,
                    mask,
                    samples,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=-1,
                    pad_token_id=0,
                    **extra,
                )
            synchronize(device)
            if attempt:
                times.append(time.perf_counter() - start)
            tokens = drawn if tokens is None else tokens
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    messages = sorted({str(w.message)[:160] for w in caught if "CUDA graph" in str(w.message)})
    return statistics.median(times), tokens, peak, messages


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="0.5b", choices=["0.5b", "tiny"])
    parser.add_argument("--batches", nargs="+", type=parse_batch, default=["8x8", "64x8"])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-lora", action="store_true", help="full weights, no adapter")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks/out"))
    )
    args = parser.parse_args()
    batches = [parse_batch(b) if isinstance(b, str) else b for b in args.batches]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --size tiny for a smoke run")
        return 1
    if not 0 < args.max_new_tokens <= 128:
        parser.error(f"--max-new-tokens {args.max_new_tokens}: must be in 1..128")
    tokenizer = args.tokenizer or ensure_smollm2()
    with tempfile.TemporaryDirectory() as work:
        params = build_model(tokenizer, Path(work), args.size)
        config = ModelConfig(
            path=work, lora=not args.no_lora, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        policy = CausalLMPolicy.from_config(config, Path(work), device, keep_base=False)
    header = (
        f"{args.size} Llama ({params / 1e6:.0f}M parameters, "
        f"{'full weights' if args.no_lora else 'LoRA'}), {device.type}"
        f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
        f"{'bf16 autocast' if policy.use_bf16 else 'float32'}, {args.max_new_tokens} new tokens"
    )
    rows, lines = (
        [],
        [
            header,
            "",
            "| rows | path | tokens/s | s/call | vs dynamic | same tokens | peak GiB |",
            "|---|---|---:|---:|---:|---:|---:|",
        ],
    )
    for prompts, samples in batches:
        ids, mask = random_prompts(prompts, policy.transformer_config.vocab_size, device)
        baseline = None
        for name, (decoder, extra) in paths(device).items():
            seconds, tokens, peak, messages = time_path(
                policy, decoder, extra, ids, mask, samples, args.max_new_tokens, args.rounds
            )
            baseline = (seconds, tokens) if baseline is None else baseline
            same = float((tokens == baseline[1]).all(-1).float().mean())
            rate = prompts * samples * tokens.shape[1] / seconds
            row = {
                "rows": f"{prompts}x{samples}",
                "path": name,
                "tokens_per_s": rate,
                "seconds": seconds,
                "speedup": baseline[0] / seconds,
                "same_tokens": same,
                "peak_gib": peak,
                "warnings": messages,
            }
            rows.append(row)
            lines.append(
                f"| {row['rows']} | {name} | {rate:.0f} | {seconds:.3f} | "
                f"{row['speedup']:.2f}x | {same:.0%} | {peak:.2f} |"
            )
            for message in messages:
                lines.append(f"|  | ({name}: {message}) | | | | | |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"decoding_gpu_{device.type}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps({"setup": header, "results": rows}, indent=2) + "\n"
    )
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
