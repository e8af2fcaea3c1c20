"""Is a vLLM server on this CPU limited by its cores or by its own overhead? Rollout tokens/s of a
vLLM server of the CPU recipe (``tools/vllm_cpu``, bf16, no LoRA support, the full-sync server of
``benchmarks/samplers.py``) on SmolLM2-135M-Instruct, with the CPU cores each of the server's
processes keeps busy while it samples (user + system time over wall time, from ``/proc``).

    python benchmarks/vllm_engine_cpu.py  # the recipe (vLLM's auto binding)
    python benchmarks/vllm_engine_cpu.py VLLM_CPU_OMP_THREADS_BIND=nobind  # no OpenMP binding

Arguments ``NAME=VALUE`` are added to the server's environment.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch
from vllm_cpu_sweep import launch_for

from gfnlm.models.loading import ensure_smollm2
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.vllm_serve import VLLMServer
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

BATCHES, ROUNDS, MAX_NEW_TOKENS = ((4, 4), (8, 8)), 3, 48


def cpu_seconds_by_process(pgid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each live process of a process group, by
    ``pid name``."""
    seconds = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            head, tail = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        if int(fields[2]) == pgid:
            name = head.split("(", 1)[1]
            seconds[f"{entry} {name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                "SC_CLK_TCK"
            )
    return seconds


def main(argv: list[str]) -> int:
    env = dict(item.split("=", 1) for item in argv)
    model_dir = ensure_smollm2()
    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir), lora=False), model_dir, torch.device("cpu")
    )
    prompts = PromptSet.load("factual_train", "data.train", policy.tokenizer, 256)
    print(f"server environment added: {env}; {os.cpu_count()} CPUs", flush=True)
    with VLLMServer(model_dir, launch_for(env, [], "bfloat16")) as server:
        pgid = os.getpgid(server.process.pid)
        for prompt_count, n in BATCHES:
            sampler = VLLMSampler(
                url=server.url,
                max_new_tokens=MAX_NEW_TOKENS,
                weight_sync="none",
                timeout_s=600,
                concurrency=prompt_count,
            )
            sampler.setup(policy)
            batch = prompts.batch(list(range(prompt_count)))
            sampler.sample(batch, n)  # warm-up
            rates, cores = [], {}
            for _ in range(ROUNDS):
                before, started = cpu_seconds_by_process(pgid), time.perf_counter()
                rollouts = sampler.sample(batch, n)
                wall, after = time.perf_counter() - started, cpu_seconds_by_process(pgid)
                rates.append(float(rollouts.lengths.sum()) / wall)
                for process, seconds in after.items():
                    cores.setdefault(process, []).append(
                        (seconds - before.get(process, 0.0)) / wall
                    )
            sampler.close()
            print(
                f"{prompt_count} prompts × {n} samples: {statistics.median(rates):.1f} tokens/s "
                f"({min(rates):.1f}-{max(rates):.1f}), {ROUNDS} rounds",
                flush=True,
            )
            for process, used in sorted(
                cores.items(), key=lambda item: -statistics.median(item[1])
            ):
                print(
                    f"  cores busy while sampling, {process}: {statistics.median(used):.2f} "
                    f"({min(used):.2f}-{max(used):.2f})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
