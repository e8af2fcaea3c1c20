"""Does a vLLM server slow the trainer down between requests? The trainer's base scoring
(PowerFlow's ``policy.score_base``) timed right after a rollout request, after 3 s of idling, and
with the server stopped, on SmolLM2-135M-Instruct next to a vLLM server of the CPU recipe
(``tools/vllm_cpu``, bf16, LoRA enabled), with the server's CPU use measured meanwhile.

    python benchmarks/vllm_server_cpu.py                                  # the recipe (in-process)
    python benchmarks/vllm_server_cpu.py VLLM_ENABLE_V1_MULTIPROCESSING=1 # vLLM's worker process

Arguments ``NAME=VALUE`` are added to the server's environment.
"""

import os
import statistics
import sys
import time

import torch
from vllm_cpu_sweep import group_cpu_seconds, launch_for

from gfnlm.models.loading import ensure_smollm2
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.vllm_serve import VLLMServer
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

PROMPTS, N, ROUNDS = 4, 4, 3  # the default config's batch: 4 prompts × 4 samples


def timed_scoring(
    label: str, sampler: VLLMSampler, policy: CausalLMPolicy, batch, pgid: int, idle_s: float
) -> None:
    seconds = []
    for round_index in range(ROUNDS):
        torch.manual_seed(round_index)
        rollouts = sampler.sample(batch, N)
        time.sleep(idle_s)
        cpu, started = group_cpu_seconds(pgid), time.perf_counter()
        policy.score_base(rollouts, True)
        seconds.append(time.perf_counter() - started)
        print(
            f"  {label}, round {round_index}: base scoring {seconds[-1]:.2f} s, server CPU "
            f"meanwhile {group_cpu_seconds(pgid) - cpu:.2f} core-seconds",
            flush=True,
        )
    print(
        f"{label}: {statistics.median(seconds):.2f} s ({min(seconds):.2f}-{max(seconds):.2f})",
        flush=True,
    )


def main(argv: list[str]) -> int:
    env = dict(item.split("=", 1) for item in argv)
    model_dir = ensure_smollm2()
    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir), lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"]),
        model_dir,
        torch.device("cpu"),
    )
    batch = PromptSet.load("factual_train", "data.train", policy.tokenizer, 256).batch(
        list(range(PROMPTS))
    )
    print(
        f"server environment added: {env}; trainer threads: {torch.get_num_threads()}", flush=True
    )
    with VLLMServer(model_dir, launch_for(env, [], "bfloat16"), lora_rank=8) as server:
        sampler = VLLMSampler(
            url=server.url,
            max_new_tokens=48,
            weight_sync="none",
            timeout_s=600,
            concurrency=PROMPTS,
        )
        sampler.setup(policy)
        pgid = os.getpgid(server.process.pid)
        sampler.sample(batch, N)  # warm-up
        timed_scoring("right after a request", sampler, policy, batch, pgid, 0.0)
        timed_scoring("after 3 s idle", sampler, policy, batch, pgid, 3.0)
        for span in (0.5, 2.0):
            sampler.sample(batch, N)
            before = group_cpu_seconds(pgid)
            time.sleep(span)
            print(
                f"server CPU in the {span} s after a request: "
                f"{(group_cpu_seconds(pgid) - before) / span:.2f} cores",
                flush=True,
            )
        kept = [sampler.sample(batch, N) for _ in range(ROUNDS)]
        sampler.close()
    seconds = []
    for rollouts in kept:
        started = time.perf_counter()
        policy.score_base(rollouts, True)
        seconds.append(time.perf_counter() - started)
    print(
        f"server stopped: {statistics.median(seconds):.2f} s "
        f"({min(seconds):.2f}-{max(seconds):.2f})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
