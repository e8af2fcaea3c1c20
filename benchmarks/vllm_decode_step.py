"""What one vLLM decode step costs on this CPU, against the floor its matrix products set.

Launches a vLLM server of the CPU recipe (``tools/vllm_cpu``, bf16, no LoRA: the full-sync
server of ``benchmarks/samplers.py``), then times batches that all run exactly ``--tokens`` steps
(``ignore_eos``): the bundled training questions, ``prompts × n`` sequences in ``prompts``
requests in flight at once, as the ``vllm`` sampler sends them. Milliseconds per decode step =
batch seconds / tokens per sequence (the prompt's prefill included, so a slight overestimate).
After the server stops, the same process times SmolLM2's matrix products of one decode step in
torch (``benchmarks/cpu_bf16.py``), bf16, at the same batch sizes: no engine's step is cheaper
than those on this CPU.

    python benchmarks/vllm_decode_step.py            # 16 and 64 sequences, 48 tokens, 5 rounds
    python benchmarks/vllm_decode_step.py --profile  # and where one 16-sequence batch's time goes

``--profile`` starts the server with vLLM's torch profiler (``--profiler-config``) and, after the
timed rounds, profiles one more 16-sequence batch and prints the top of vLLM's own summary of
the engine's operators (self CPU time).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch
from cpu_bf16 import decode_products_ms
from transformers import AutoTokenizer
from vllm_cpu_sweep import IN_PROCESS, launch_for

from gfnlm.models.loading import ensure_smollm2
from gfnlm.serving.vllm_client import VLLMClient
from gfnlm.serving.vllm_serve import VLLMServer
from gfnlm.tasks.prompts import PromptSet

BATCHES = ((4, 4), (8, 8))  # the training step's 16 sequences, and 64
PROFILE_ROWS = 16  # operators shown from vLLM's profiler summary


def batch_seconds(client: VLLMClient, prompts: list[list[int]], n: int, tokens: int) -> float:
    """Wall seconds of one batch: ``n`` samples of each prompt, every one exactly ``tokens``
    long."""
    payload = {
        "n": n,
        "max_tokens": tokens,
        "min_tokens": tokens,
        "ignore_eos": True,
        "temperature": 1.0,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(
            pool.map(
                lambda ids: client.completions({"prompt": ids, **payload}, "decode step"), prompts
            )
        )
    seconds = time.perf_counter() - started
    lengths = {len(choice["logprobs"]["tokens"]) for choices in answers for choice in choices}
    if lengths != {tokens}:
        raise RuntimeError(f"responses of {sorted(lengths)} tokens, expected {tokens} each")
    return seconds


def profiled_batch(
    client: VLLMClient, prompts: list[list[int]], n: int, tokens: int, trace_dir: Path
) -> None:
    """One batch under vLLM's torch profiler; prints the top of the summary the engine writes."""
    requests.post(f"{client.url}/start_profile", timeout=600).raise_for_status()
    seconds = batch_seconds(client, prompts, n, tokens)
    requests.post(f"{client.url}/stop_profile", timeout=600).raise_for_status()
    summaries = []
    for _ in range(120):  # the engine writes its summary after the stop call returns
        summaries = [
            path for path in trace_dir.glob("rank0*profiler_out.txt") if path.stat().st_size > 1
        ]
        if summaries:
            break
        time.sleep(0.5)
    print(
        f"\nvLLM profiler, one batch of {len(prompts) * n} sequences x {tokens} tokens "
        f"({seconds:.2f} s, profiled):"
    )
    lines = summaries[0].read_text().splitlines() if summaries else ["(no summary written)"]
    print("\n".join(lines[: 3 + PROFILE_ROWS]), flush=True)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def timed_steps(
    model_dir: Path, questions: PromptSet, args: argparse.Namespace, trace_dir: Path
) -> dict[int, list[float]]:
    """Milliseconds per decode step of each batch size over ``args.rounds`` rounds (and, with
    ``args.profile``, one profiled batch), on a server this function starts and stops."""
    step_ms: dict[int, list[float]] = {}
    profiler = (
        [
            "--profiler-config",
            json.dumps(
                {
                    "profiler": "torch",
                    "torch_profiler_dir": str(trace_dir),
                    "torch_profiler_with_stack": False,
                }
            ),
        ]
        if args.profile
        else []
    )
    with VLLMServer(model_dir, launch_for(IN_PROCESS, profiler, "bfloat16")) as server:
        client = VLLMClient(server.url, timeout_s=600)
        for prompt_count, n in BATCHES:
            prompts = questions.batch(list(range(prompt_count))).token_lists()
            batch_seconds(client, prompts, n, args.tokens)  # warm-up
            for round_index in range(args.rounds):
                seconds = batch_seconds(client, prompts, n, args.tokens)
                step_ms.setdefault(prompt_count * n, []).append(seconds / args.tokens * 1e3)
                print(
                    f"  {prompt_count} x {n}, round {round_index}: {seconds:.2f} s, "
                    f"{step_ms[prompt_count * n][-1]:.1f} ms per step",
                    flush=True,
                )
        if args.profile:
            prompts = questions.batch(list(range(BATCHES[0][0]))).token_lists()
            profiled_batch(client, prompts, BATCHES[0][1], args.tokens, trace_dir)
    return step_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one more 16-sequence batch with vLLM's profiler",
    )
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.rounds < 1:
        parser.error(f"--tokens={args.tokens}, --rounds={args.rounds}: both must be >= 1")
    model_dir = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    questions = PromptSet.load("factual_train", "data.train", tokenizer, 256)
    with tempfile.TemporaryDirectory(prefix="vllm-profile-") as traces:
        step_ms = timed_steps(model_dir, questions, args, Path(traces))
    print(
        f"\nCPU, {torch.get_num_threads()} threads; SmolLM2-135M-Instruct, {args.tokens} tokens "
        f"per sequence, {args.rounds} rounds, median (min-max)"
    )
    print(
        "| sequences | vLLM server, ms per decode step | torch bf16 matrix products alone, ms | "
        "float32, ms |"
    )
    print("|---|---|---|---|")
    for sequences, values in step_ms.items():
        products = [decode_products_ms(sequences, torch.bfloat16) for _ in range(args.rounds)]
        products_fp32 = [decode_products_ms(sequences, torch.float32) for _ in range(args.rounds)]
        print(
            f"| {sequences} | {spread(values)} | {spread(products)} | {spread(products_fp32)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
