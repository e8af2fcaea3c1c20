"""Rollout throughput and training-step time: the in-process ``hf`` sampler vs the ``sglang``
sampler (a real SGLang server this script launches and stops), on SmolLM2-135M-Instruct with the
same prompts, sampling settings and seeds.

* throughput: ``sampler.sample(prompts, n)`` on the first ``--prompts`` bundled training
  questions, ``n`` samples each, ≤ ``--max-new-tokens`` tokens at T = 1; tokens/s = generated
  tokens (EOS included) / wall time. Rounds alternate which sampler goes first.
* training step: :meth:`Trainer.train_step` of the default PowerFlow config plus, for SGLang,
  the weight sync that follows every step (LoRA merged, written, ``/update_weights_from_disk``).

Prints medians with min-max over the rounds, the SGLang/HF throughput ratio (goal ≥ 2×) and the
step times, and writes the table into docs/benchmarks.md (``samplers`` markers).

    python benchmarks/samplers.py                 # CPU: the SGLang CPU recipe of tools/sglang_cpu
    python benchmarks/samplers.py --device cuda --server-python "$(which python)"   # GPU, no stubs
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from docs_page import write_between_markers

from gfnlm.samplers.hf import HFSampler
from gfnlm.samplers.sglang import SGLangSampler
from gfnlm.serving.serve import LaunchConfig, SGLangServer
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig, load_config
from gfnlm.training.models import ensure_smollm2
from gfnlm.training.policy import CausalLMPolicy
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "sglang_cpu"))


def server_launch(args: argparse.Namespace) -> LaunchConfig:
    """The CPU recipe (own venv, stubs) on CPU; the ordinary SGLang of ``--server-python`` on GPU."""
    if args.device == "cpu":
        from launch import cpu_launch

        return LaunchConfig(**cpu_launch(dtype=args.server_dtype, **({"python": args.server_python}
                                                                     if args.server_python else {})))
    return LaunchConfig(python=args.server_python or sys.executable, startup_timeout_s=600.0,
                        args=["--dtype", args.server_dtype, "--mem-fraction-static", "0.5"])


def summary(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def measure_throughput(samplers: dict, prompts, n: int, rounds: int) -> dict[str, list[float]]:
    """tokens/s of each sampler per round, the same seed for both within a round."""
    rates: dict[str, list[float]] = {name: [] for name in samplers}
    for round_index in range(rounds):
        order = list(samplers) if round_index % 2 == 0 else list(reversed(samplers))
        for name in order:
            torch.manual_seed(round_index)
            started = time.perf_counter()
            rollouts = samplers[name].sample(prompts, n)
            seconds = time.perf_counter() - started
            rates[name].append(float(rollouts.lengths.sum()) / seconds)
            print(f"  round {round_index} {name}: {int(rollouts.lengths.sum())} tokens in {seconds:.1f} s "
                  f"= {rates[name][-1]:.1f} tokens/s", flush=True)
    return rates


def trainer_for(sampler: str, url: str, args: argparse.Namespace, out_dir: Path) -> Trainer:
    overrides = [f"train.out_dir={out_dir}", "train.steps=1000", "data.eval=''", f"train.device={args.device}",
                 f"sampling.max_new_tokens={args.max_new_tokens}", f"sampling.sampler={sampler}"]
    if sampler == "sglang":
        overrides += [f"sampling.sampler_options.url={url}", "sampling.sampler_options.timeout_s=600"]
    return Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)


def measure_steps(url: str, args: argparse.Namespace, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per training step (and its parts) with each sampler, steps alternating."""
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: trainer_for(name, url, args, Path(tmp) / name) for name in ("hf", "sglang")}
        for round_index in range(rounds + 1):  # the first step of each is a warm-up
            for name, trainer in trainers.items():
                torch.manual_seed(round_index)
                started = time.perf_counter()
                metrics = trainer.train_step()
                trainer.step += 1
                synced = time.perf_counter()
                trainer.components.sampler.sync(trainer.policy, trainer.step)
                ended = time.perf_counter()
                if round_index == 0:
                    continue
                record = times.setdefault(name, {})
                for key in ("sample", "score", "update"):
                    record.setdefault(key, []).append(metrics[f"time/{key}"])
                record.setdefault("sync", []).append(ended - synced)
                record.setdefault("step", []).append(ended - started)
                print(f"  step {round_index} {name}: {ended - started:.1f} s", flush=True)
        for trainer in trainers.values():
            trainer.components.sampler.close()
    return times


def report(rates: dict[str, list[float]], steps: dict, args: argparse.Namespace, device: str) -> str:
    ratio = [s / h for s, h in zip(rates["sglang"], rates["hf"], strict=True)]
    lines = [
        (f"Device: {device}. SmolLM2-135M-Instruct (LoRA r=8 on q/k/v/o as configs/default.yaml), "
        f"{args.prompts} prompts × {args.n} samples, ≤ {args.max_new_tokens} new tokens, T = 1, top-p 1; "
        f"SGLang 0.5.23 server in {args.server_dtype}; {args.rounds} rounds (seeds 0-{args.rounds - 1}), "
        "median (min-max)."),
        "",
        "| sampler | rollout tokens/s | training step (s) | sample | base score | update | weight sync |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("hf", "hf (in-process KV-cache loop)"), ("sglang", "sglang (HTTP server)")):
        t = steps.get(name, {})
        cells = [summary(t[k], 2) if k in t else "–" for k in ("step", "sample", "score", "update", "sync")]
        lines.append(f"| {label} | {summary(rates[name])} | " + " | ".join(cells) + " |")
    verdict = "PASS" if statistics.median(ratio) >= 2 else "FAIL"
    lines += ["", (f"SGLang / HF rollout throughput: **{statistics.median(ratio):.2f}×** "
                  f"({min(ratio):.2f}-{max(ratio):.2f}); goal ≥ 2×: **{verdict}**.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("-n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-rounds", type=int, default=3, help="training steps timed per sampler (0: skip)")
    parser.add_argument("--server-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--server-python", default="", help="interpreter with sglang (default: the CPU venv)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    for name in ("prompts", "n", "max_new_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: no CUDA device visible")

    model_dir = ensure_smollm2()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    with SGLangServer(model_dir, server_launch(args)) as server:
        print(f"SGLang server up at {server.url}", flush=True)
        policy = CausalLMPolicy.from_config(ModelConfig(path=str(model_dir), lora_targets=["q_proj", "k_proj",
                                                                                             "v_proj", "o_proj"]),
                                            model_dir, device)
        prompts = PromptSet.load("factual_train", "data.train", policy.tokenizer, 256)
        batch = prompts.batch(list(range(args.prompts)))
        hf = HFSampler(max_new_tokens=args.max_new_tokens)
        hf.setup(policy)
        sglang = SGLangSampler(url=server.url, max_new_tokens=args.max_new_tokens, weight_sync="none",
                               timeout_s=600, concurrency=args.prompts)
        sglang.setup(policy)
        print("throughput:", flush=True)
        rates = measure_throughput({"hf": hf, "sglang": sglang}, batch, args.n, args.rounds)
        del policy
        steps = {}
        if args.step_rounds:
            print("training steps:", flush=True)
            steps = measure_steps(server.url, args, args.step_rounds)
    table = report(rates, steps, args, name)
    print("\n" + table)
    if not args.no_docs:
        write_between_markers(table, f"samplers_{args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
