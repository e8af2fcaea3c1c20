"""Rollout throughput and training-step time: the in-process ``hf`` sampler vs the ``sglang`` and
``vllm`` samplers (real SGLang and vLLM servers this script launches and stops), on
SmolLM2-135M-Instruct with the same prompts, sampling settings and seeds.

* throughput: ``sampler.sample(prompts, n)`` on the first ``P`` bundled training questions, ``n``
  samples each, for each ``PxN`` of ``--batches`` (default: the training step's own batch of
  configs/default.yaml, 4 × 4, and a larger one, 8 × 8), ≤ ``--max-new-tokens`` tokens at T = 1;
  tokens/s = generated tokens (EOS included) / wall time, and over all rounds their tokens / their
  seconds, the ratio the goals are judged by: a batch takes as long as its longest response, and
  the servers sample unseeded, so a single round's ratio swings with one response's length.
  Rounds alternate which sampler goes first.
* training step: :meth:`Trainer.train_step` of the default PowerFlow config plus, for a server
  sampler, the weight sync that follows every step: SGLang's full sync (LoRA merged, written,
  ``/update_weights_from_disk``), vLLM's adapter sync (``lora``, on a server started with LoRA
  support: the adapter written, ``/v1/load_lora_adapter``), the same with the base model scored
  by that server instead of the trainer (``scores_base``: prompt log-probs without the adapter),
  and its full sync (``full``, on a server without LoRA support: after the first push only the
  weights LoRA changes, merged, written and reloaded in place), the same with the base model
  scored by a second server the sampler launches (``base_launch``, in ``--vllm-base-dtype``).

Prints medians with min-max over the rounds, each server's throughput over HF's for each batch
(goals: SGLang ≥ 2×, vLLM ≥ 3×), the step times and the vLLM/HF step ratio (goal ≤ 0.6), and
writes the table into docs/benchmarks/ (``samplers`` markers).

    python benchmarks/samplers.py  # CPU: the CPU recipes of tools/sglang_cpu, tools/vllm_cpu
    python benchmarks/samplers.py --device cuda --server-python "$(which python)" \
        --vllm-python "$(which python)"  # GPU: the ordinary sglang and vllm packages
"""

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from docs_page import write_between_markers

from gfnlm.models.loading import ensure_smollm2
from gfnlm.samplers.hf import HFSampler
from gfnlm.samplers.sglang import SGLangSampler
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.serve import LaunchConfig, SGLangServer
from gfnlm.serving.vllm_serve import VLLMServer, resolve_vllm_launch
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig, load_config
from gfnlm.training.policy import CausalLMPolicy
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "sglang_cpu"))
SERVERS = ("sglang", "vllm")
LABELS = {
    "hf": "hf (in-process KV-cache loop)",
    "sglang": "sglang (HTTP server, full sync)",
    "vllm": "vllm (HTTP server without LoRA)",
    "vllm-lora-server": "vllm (HTTP server with LoRA support)",
    "vllm-lora": "vllm (LoRA sync)",
    "vllm-lora-scored": "vllm (LoRA sync, base scored by the server)",
    "vllm-full": "vllm (full sync, no LoRA on the server)",
    "vllm-full-scored": "vllm (full sync, base scored by a second server)",
    "vllm-lora-async": "vllm (LoRA sync, async rollouts)",
    "vllm-full-async": "vllm (full sync, async rollouts)",
}
VLLM_ROWS = (
    "vllm-lora",
    "vllm-lora-scored",
    "vllm-full",
    "vllm-full-scored",
    "vllm-lora-async",
    "vllm-full-async",
)
GOALS = {"sglang": 2.0, "vllm": 3.0}  # throughput over HF's
STEP_GOAL = 0.6  # vLLM step time over HF's
DEFAULT = load_config(REPO / "configs/default.yaml")
STEP_BATCH = (
    f"{DEFAULT.train.prompts_per_step}x{DEFAULT.sampling.samples_per_prompt}"  # the training step's
)


def server_launch(args: argparse.Namespace) -> LaunchConfig:
    """The CPU recipe (own venv, stubs) on CPU; the ordinary SGLang of ``--server-python`` on
    GPU."""
    if args.device == "cpu":
        from launch import cpu_launch

        return LaunchConfig(
            **cpu_launch(
                dtype=args.server_dtype,
                **({"python": args.server_python} if args.server_python else {}),
            )
        )
    return LaunchConfig(
        python=args.server_python or sys.executable,
        startup_timeout_s=600.0,
        args=["--dtype", args.server_dtype, "--mem-fraction-static", "0.5"],
    )


def vllm_launch_options(args: argparse.Namespace, dtype: str) -> dict:
    """``launch`` options of a vLLM server in ``dtype``: the CPU recipe of tools/vllm_cpu (its venv,
    a 1 GB KV cache) on CPU; ``--vllm-python`` on GPU."""
    python = {"python": args.vllm_python} if args.vllm_python else {}
    if args.device == "cpu":
        env = {"VLLM_CPU_OMP_THREADS_BIND": args.vllm_omp_bind} if args.vllm_omp_bind else {}
        return {"cpu": True, "args": ["--dtype", dtype], "env": env, **python}
    return {
        "python": sys.executable,
        **python,
        "startup_timeout_s": 600.0,
        "args": ["--dtype", dtype, "--gpu-memory-utilization", "0.2"],
    }


def vllm_launch(args: argparse.Namespace) -> LaunchConfig:
    return resolve_vllm_launch(
        vllm_launch_options(args, args.vllm_dtype), lambda key: f"--vllm-{key}"
    )


def cpu_name() -> str:
    """The CPU's model name and its bfloat16 matrix instructions (the servers run in bfloat16), from
    /proc/cpuinfo: runs on different machines differ more than the rounds of one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "CPU",
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
        [],
    )
    bf16 = [
        name
        for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
        if flag in flags
    ]
    return ", ".join([model, *bf16[:1]])


def summary(values: list[float], digits: int = 1) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def rate_key(row: str) -> str:
    """Which server's throughput a step row shares: LoRA-sync rows the server with LoRA support."""
    return "vllm-lora-server" if row.startswith("vllm-lora") else row.split("-")[0]


def parse_batches(text: str) -> list[tuple[int, int]]:
    """``"4x4,8x8"`` → ``[(4, 4), (8, 8)]`` (prompts, samples per prompt); ValueError otherwise."""
    batches = []
    for item in text.split(","):
        prompts, _, n = item.strip().partition("x")
        if not (prompts.isdigit() and n.isdigit() and int(prompts) >= 1 and int(n) >= 1):
            raise ValueError(item)
        batches.append((int(prompts), int(n)))
    return batches


def measure_throughput(
    samplers: dict, prompts, n: int, rounds: int
) -> dict[str, list[tuple[int, float]]]:
    """(tokens, seconds) of each sampler per round, the same seed for all within a round, after one
    untimed warm-up call each (a first call is slower: allocations, a server's first batch)."""
    runs: dict[str, list[tuple[int, float]]] = {name: [] for name in samplers}
    for sampler in samplers.values():
        sampler.sample(prompts, n)
    for round_index in range(rounds):
        order = list(samplers) if round_index % 2 == 0 else list(reversed(samplers))
        for name in order:
            torch.manual_seed(round_index)
            started = time.perf_counter()
            rollouts = samplers[name].sample(prompts, n)
            seconds = time.perf_counter() - started
            runs[name].append((int(rollouts.lengths.sum()), seconds))
            print(
                f"  round {round_index} {name}: {runs[name][-1][0]} tokens in {seconds:.1f} s "
                f"= {runs[name][-1][0] / seconds:.1f} tokens/s",
                flush=True,
            )
    return runs


def rates(runs: list[tuple[int, float]]) -> list[float]:
    return [tokens / seconds for tokens, seconds in runs]


def pooled_rate(runs: list[tuple[int, float]]) -> float:
    """All rounds' tokens over all rounds' seconds. A batch takes as long as its longest response,
    and the servers sample unseeded, so single rounds swing with one response's length."""
    return sum(tokens for tokens, _ in runs) / sum(seconds for _, seconds in runs)


def trainer_for(
    name: str, urls: dict[str, str], args: argparse.Namespace, out_dir: Path
) -> Trainer:
    """A default-config trainer with sampler ``name`` (``vllm-lora``: vllm with LoRA sync on the
    server with LoRA support, ``vllm-full``: full sync on the server without; ``-scored``: the base
    model scored by the server, ``scores_base``, for full sync by a second server the sampler
    launches; ``-async``: with ``sampling.async_rollouts``)."""
    sampler = name.split("-")[0]
    overrides = [
        f"train.out_dir={out_dir}",
        "train.steps=1000",
        "data.eval=''",
        f"train.device={args.device}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"sampling.sampler={sampler}",
    ]
    if sampler in SERVERS:
        url = urls["vllm-lora-server" if name.startswith("vllm-lora") else sampler]
        overrides += [
            f"sampling.sampler_options.url={url}",
            "sampling.sampler_options.timeout_s=600",
            f"sampling.sampler_options.concurrency={max(p for p, _ in args.batches)}",
        ]
    if (
        sampler == "vllm"
    ):  # full sync writes the weights in the server's dtype (half the bytes in bf16)
        overrides += [
            f"sampling.sampler_options.weight_sync={name.split('-')[1]}",
            f"sampling.sampler_options.weights_dtype={args.vllm_dtype}",
        ]
    if name.endswith("-scored"):
        overrides.append("sampling.sampler_options.scores_base=true")
    if name.endswith("-async"):
        overrides.append("sampling.async_rollouts=true")
        if args.async_threads:
            overrides.append(f"train.threads={args.async_threads}")
    config = load_config(REPO / "configs/default.yaml", overrides)
    if name.startswith(
        "vllm-full-scored"
    ):  # the sampler starts (and stops) the base model's server
        config.sampling.sampler_options["base_launch"] = vllm_launch_options(
            args, args.vllm_base_dtype
        )
    return Trainer(config, progress=False)


def measure_steps(
    urls: dict[str, str], args: argparse.Namespace, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per training step (and its parts) with each sampler, steps alternating."""
    times: dict[str, dict[str, list[float]]] = {}
    names = ["hf", *(["sglang"] if "sglang" in urls else [])]
    for sync, server in (("lora", "vllm-lora-server"), ("full", "vllm")):
        if server in urls:
            names += [f"vllm-{sync}", f"vllm-{sync}-scored"]
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: trainer_for(name, urls, args, Path(tmp) / name) for name in names}
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
                record_step(times.setdefault(name, {}), metrics, ended - synced, ended - started)
                print(f"  step {round_index} {name}: {ended - started:.1f} s", flush=True)
        for trainer in trainers.values():
            trainer.components.sampler.close()
        if "vllm-lora-server" in urls and "vllm" in urls and not args.no_async:
            times |= measure_async_steps(urls, args, rounds, Path(tmp))
    return times


def record_step(
    record: dict[str, list[float]], metrics: dict[str, float], sync: float, step: float
) -> None:
    for key in ("sample", "score", "update"):
        record.setdefault(key, []).append(metrics[f"time/{key}"])
    record.setdefault("sync", []).append(sync)
    record.setdefault("step", []).append(step)


def measure_async_steps(
    urls: dict[str, str], args: argparse.Namespace, rounds: int, tmp: Path
) -> dict[str, dict[str, list[float]]]:
    """Seconds per step with async rollouts: consecutive steps of one trainer at a time (its next
    batch is drawn during its step, so no other trainer may run in between), after one warm-up
    step. A step's time includes the wait for its batch and the weight sync it starts with."""
    times: dict[str, dict[str, list[float]]] = {}
    for name in (f"vllm-{sync}-async" for sync in ("lora", "full")):
        trainer = trainer_for(name, urls, args, tmp / name)
        try:
            for round_index in range(rounds + 1):
                torch.manual_seed(round_index)
                started = time.perf_counter()
                metrics = trainer.train_step()
                trainer.step += 1
                ended = time.perf_counter()
                parts = ", ".join(
                    f"{key} {metrics.get(f'time/{key}', 0.0):.2f}"
                    for key in ("sample", "sync", "score", "update")
                )
                print(f"  step {round_index} {name}: {ended - started:.1f} s ({parts})", flush=True)
                if round_index:
                    record_step(
                        times.setdefault(name, {}),
                        metrics,
                        metrics.get("time/sync", 0.0),
                        ended - started,
                    )
        finally:
            trainer.rollouts.close()
            trainer.components.sampler.close()
    return times


def ratio_line(what: str, ratio: float, detail: str, goal: str, passed: bool) -> str:
    return f"{what}: **{ratio:.2f}×** ({detail}); goal {goal}: **{'PASS' if passed else 'FAIL'}**."


def report(
    runs_by_batch: dict[tuple[int, int], dict[str, list[tuple[int, float]]]],
    steps: dict,
    args: argparse.Namespace,
    device: str,
) -> str:
    batches = list(runs_by_batch)
    measured = runs_by_batch[batches[0]]
    servers = [name for name in (*SERVERS, "vllm-lora-server") if name in measured]
    vllm = "vLLM 0.32.0" + (" (vllm-cpu)" if args.device == "cpu" else "")
    engines = "; ".join(
        {
            "sglang": f"SGLang 0.5.23 server in {args.server_dtype}",
            "vllm": f"{vllm} server in {args.vllm_dtype} without LoRA support (full sync)",
            "vllm-lora-server": f"{vllm} server in {args.vllm_dtype} with LoRA support (LoRA sync)",
        }[name]
        for name in servers
    )
    if "vllm-full-scored" in steps:
        engines += (
            f"; base model scored beside full sync by a {vllm} server in {args.vllm_base_dtype}"
        )
    lines = [
        (
            f"Device: {device}. SmolLM2-135M-Instruct (LoRA r=8 on q/k/v/o as "
            "configs/default.yaml), rollouts of "
            f"{' and '.join(f'{p} prompts × {n} samples' for p, n in batches)}, training steps of "
            f"configs/default.yaml ({STEP_BATCH.replace('x', ' prompts × ')} samples), ≤ "
            f"{args.max_new_tokens} new tokens, T = 1, top-p 1; {engines}; {args.rounds} "
            f"throughput rounds (torch seeds 0-{args.rounds - 1}; the servers sample unseeded)"
            + (
                f", {args.step_rounds} timed training steps per sampler after a warm-up step"
                if steps
                else ""
            )
            + "; "
            "median (min-max)."
        ),
        "",
        "| sampler | "
        + " | ".join(f"rollout tokens/s, {p}×{n}" for p, n in batches)
        + " | training step (s) | sample | base score | update | weight sync |",
        "|---|" + "---|" * (len(batches) + 5),
    ]
    for name in ("hf", "sglang", *(VLLM_ROWS if steps else ("vllm", "vllm-lora-server"))):
        t, rate = steps.get(name, {}), rate_key(name) if steps else name
        if rate not in measured or (steps and name.startswith("vllm-") and not t):
            continue
        cells = [
            summary(t[k], 2) if k in t else "–"
            for k in ("step", "sample", "score", "update", "sync")
        ]
        throughputs = " | ".join(summary(rates(runs_by_batch[batch][rate])) for batch in batches)
        lines.append(f"| {LABELS[name]} | {throughputs} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in servers:
        for (prompts, n), runs in runs_by_batch.items():
            ratio = [s / h for s, h in zip(rates(runs[name]), rates(runs["hf"]), strict=True)]
            pooled = pooled_rate(runs[name]) / pooled_rate(runs["hf"])
            goal = GOALS[name.split("-")[0]]
            lines += [
                ratio_line(
                    f"{LABELS[name]} / hf rollout throughput, {prompts}×{n}, all rounds' tokens "
                    "over their seconds",
                    pooled,
                    f"single rounds: {summary(ratio, 2)}",
                    f"≥ {goal:g}×",
                    pooled >= goal,
                ),
                "",
            ]
    for name in VLLM_ROWS:
        if name in steps and "hf" in steps:
            ratio = [v / h for v, h in zip(steps[name]["step"], steps["hf"]["step"], strict=True)]
            median = statistics.median(ratio)
            lines += [
                ratio_line(
                    f"{LABELS[name]} / hf training step",
                    median,
                    f"{min(ratio):.2f}-{max(ratio):.2f}",
                    f"≤ {STEP_GOAL:g}×",
                    median <= STEP_GOAL,
                ),
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--batches",
        default=f"{STEP_BATCH},8x8",
        help=f"rollout batches PxN to time (P prompts, N samples each), comma-separated; "
        f"{STEP_BATCH} is the training step's",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--rounds",
        type=int,
        default=8,
        help="throughput rounds per batch (a round at the training step's batch takes seconds)",
    )
    parser.add_argument(
        "--step-rounds", type=int, default=3, help="training steps timed per sampler (0: skip)"
    )
    parser.add_argument(
        "--servers", default="sglang,vllm", help="which server samplers to compare with hf"
    )
    parser.add_argument("--server-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--server-python", default="", help="interpreter with sglang (default: the CPU venv)"
    )
    parser.add_argument("--vllm-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--vllm-base-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype of the server that scores the base model beside a full-sync server",
    )
    parser.add_argument(
        "--vllm-python", default="", help="interpreter with vllm (default: the CPU venv)"
    )
    parser.add_argument(
        "--vllm-sync",
        default="both",
        choices=("lora", "full", "both"),
        help="vLLM weight sync(s) to time: a server with LoRA support for 'lora', "
        "one without for 'full'",
    )
    parser.add_argument(
        "--vllm-omp-bind",
        default="",
        help="VLLM_CPU_OMP_THREADS_BIND of the CPU server, e.g. 1 (one core); default vLLM's auto",
    )
    parser.add_argument(
        "--no-async",
        action="store_true",
        help="skip the async-rollout rows (on a 2-core CPU each such step takes over a minute)",
    )
    parser.add_argument(
        "--async-threads",
        type=int,
        default=0,
        help="train.threads of the async-rollout trainers (0: torch's default)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks/")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    try:
        args.batches = parse_batches(args.batches)
    except ValueError as error:
        parser.error(
            f"--batches={args.batches!r}: {error} is not PxN with P, N >= 1 (e.g. 4x4,8x8)"
        )
    servers = [name for name in args.servers.split(",") if name]
    if not servers or set(servers) - set(SERVERS):
        parser.error(f"--servers={args.servers!r}: a comma-separated subset of {','.join(SERVERS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: no CUDA device visible")

    model_dir = ensure_smollm2()
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({cpu_name()}), {torch.get_num_threads()} threads"
    )
    with contextlib.ExitStack() as running:
        urls = {}
        if "sglang" in servers:
            urls["sglang"] = running.enter_context(SGLangServer(model_dir, server_launch(args))).url
        if "vllm" in servers and args.vllm_sync in ("lora", "both"):
            urls["vllm-lora-server"] = running.enter_context(
                VLLMServer(model_dir, vllm_launch(args), lora_rank=8)
            ).url
        if "vllm" in servers and args.vllm_sync in ("full", "both"):
            urls["vllm"] = running.enter_context(VLLMServer(model_dir, vllm_launch(args))).url
        print(f"servers up: {urls}", flush=True)
        policy = CausalLMPolicy.from_config(
            ModelConfig(path=str(model_dir), lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"]),
            model_dir,
            device,
        )
        prompts = PromptSet.load("factual_train", "data.train", policy.tokenizer, 256)
        concurrency = max(p for p, _ in args.batches)
        samplers = {"hf": HFSampler(max_new_tokens=args.max_new_tokens)}
        classes = {"sglang": SGLangSampler, "vllm": VLLMSampler}
        for server, url in urls.items():
            samplers[server] = classes[server.split("-")[0]](
                url=url,
                max_new_tokens=args.max_new_tokens,
                weight_sync="none",
                timeout_s=600,
                concurrency=concurrency,
            )
        for sampler in samplers.values():
            sampler.setup(policy)
        print("throughput:", flush=True)
        runs = {}
        for prompt_count, n in args.batches:
            print(f"  {prompt_count} prompts × {n} samples:", flush=True)
            runs[(prompt_count, n)] = measure_throughput(
                samplers, prompts.batch(list(range(prompt_count))), n, args.rounds
            )
        for sampler in samplers.values():
            sampler.close()
        del policy
        steps = {}
        if args.step_rounds:
            print("training steps:", flush=True)
            steps = measure_steps(urls, args, args.step_rounds)
    table = report(runs, steps, args, name)
    print("\n" + table)
    if not args.no_docs:
        write_between_markers(table, f"samplers_{args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
