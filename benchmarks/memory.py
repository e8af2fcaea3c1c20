"""Peak memory and time of the log-prob passes at a Qwen2.5-sized vocabulary: chunked vs full
logits vs TRL.

A Llama built from a config with random weights (``--layers`` 2, hidden ``--hidden`` 64, GQA 4/2,
vocabulary 151,936 as Qwen2.5's, tied embeddings; LoRA r=8 on q_proj/v_proj as gfnlm's default),
one group of ``--batch`` 8 responses of ``T`` tokens to one ``--prompt-len`` 32-token prompt
(random ids, no EOS: every position is a real token); with ``--variable`` the responses have
random lengths between T/4 and T (seeded), right-padded to the longest, and TRL pads too (its
attention mask zero on padding, as its trainer batches them). Two operations:

* ``update``: one policy forward + backward of a loss through the token and EOS log-probs;
* ``base``: base scoring (adapter disabled, no gradient).

Three paths, each run in its own fresh process under an address-space cap (``--cap-gb`` 10):

* ``chunked``: gfnlm with ``model.logp_chunk_size`` (default 1024), in the bucket passes
  (``model.logp_pass=buckets``: a prompt KV-cache pass, then up to 4 response-length buckets);
* ``packed``: the same chunked log-probs in ONE pass over the packed batch (``model.logp_pass=
  packed``: the prompt once per row, its responses behind it, one shared attention mask);
* ``packed-gc``: ``packed`` with gradient checkpointing (``model.gradient_checkpointing``);
* ``current``: gfnlm with ``model.logp_chunk_size=0`` (the model's full ``[B, T+1, V]`` logits);
* ``trl``: TRL 1.16.0's ``GRPOTrainer._get_per_token_logps_and_entropies`` on the same model,
  weights, LoRA and ids (its update computes entropies, as its ``compute_loss`` does; its reference
  pass does not), run in TRL's own venv (``.bench-venvs/trl``, created on first use by
  ``benchmarks/vs_trl.py``'s recipe; ``--no-trl`` skips it).

Per run: the operation's wall time, and its peak RSS (the process's resident set sampled every
2 ms during the operation; also the increase over the RSS just before it). A run that exceeds the
cap is reported as "> cap". ``--repeats`` fresh processes per cell (seeds 0, 1, ...), median and
min-max. Results accumulate in ``--results`` (JSON, keyed by path/op/T/seed; cells already there
are skipped unless ``--rerun``), so the lengths can be measured in separate invocations; the table
is printed from everything there and, with ``--into-docs``, written between the ``memory`` markers
of docs/benchmarks/.

On a GPU (``--device cuda``, run by ``benchmarks/gpu/run_memory_gpu.sh``) the default model is
``random-0.5b``, Qwen2.5-0.5B's shape from a config (hidden 896, 24 layers, GQA 14/2, MLP 4864,
vocabulary 151,936, tied embeddings; random weights, nothing downloaded), in bf16 autocast (fp32
weights), at T = 4,096; memory is ``torch.cuda.max_memory_allocated`` during the operation (no
address-space cap), times are synchronised.

    python benchmarks/memory.py [--seq-lens 256 512 2048] [--repeats 3] [--into-docs]
    python benchmarks/memory.py --device cuda --tokenizer DIR [--seq-lens 4096]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[1]
VOCAB = 151_936  # Qwen2.5's vocabulary
PATHS = ("chunked", "packed", "packed-gc", "current", "trl")
GFNLM_PATHS = {  # gfnlm's paths: model config fields
    "chunked": {"logp_pass": "buckets"},
    "packed": {"logp_pass": "packed", "gradient_checkpointing_from": 0},
    "packed-gc": {"logp_pass": "packed", "gradient_checkpointing": True},
    "current": {"logp_chunk_size": 0, "logp_pass": "buckets"},
}
OPS = ("update", "base")
GB = 1e9
LORA = {"r": 8, "lora_alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
# Model bodies built from a config (the vocabulary is always VOCAB).
MODELS = {
    "random-small": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "random-24": {  # random-small's width at the real depth
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 24,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "random-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },  # Qwen2.5-0.5B's shape
}


# ---------------------------------------------------------------- worker (one measured operation)


def model_config(args: argparse.Namespace, seq_len: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        **MODELS[args.model],
        max_position_embeddings=args.prompt_len + seq_len + 8,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=args.eos_id,
        pad_token_id=args.eos_id,
    )


def response_lengths(args: argparse.Namespace, seq_len: int, seed: int):
    """[B] response lengths: all ``seq_len``, or (``--variable``) random in [T/4, T] with the
    first at T (the same in every path: seeded)."""
    import torch

    if not args.variable:
        return torch.full((args.batch,), seq_len)
    generator = torch.Generator().manual_seed(1000 + seed)
    lengths = torch.randint(max(1, seq_len // 4), seq_len + 1, (args.batch,), generator=generator)
    lengths[0] = seq_len
    return lengths


def random_model_and_ids(args: argparse.Namespace, seq_len: int, seed: int):
    """The same weights and ids in every path (same seed, same torch): prompt [B, P] (one prompt
    repeated) and responses [B, T] without EOS (``--variable``: right-padded with EOS after
    :func:`response_lengths` tokens)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(args, seq_len)).to(args.device)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(args.eos_id + 1, VOCAB, (1, args.prompt_len), generator=generator)
    responses = torch.randint(args.eos_id + 1, VOCAB, (args.batch, seq_len), generator=generator)
    real = torch.arange(seq_len) < response_lengths(args, seq_len, seed)[:, None]
    responses = responses.where(real, args.eos_id)
    return (
        model,
        prompt.expand(args.batch, -1).contiguous().to(args.device),
        responses.to(args.device),
    )


class PeakCudaMemory:
    """``torch.cuda.max_memory_allocated`` while the block runs (bytes); synchronised."""

    def __enter__(self) -> Self:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.before = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()


class PeakRSS:
    """The process's resident set size sampled every 2 ms while the block runs (bytes)."""

    def __enter__(self) -> Self:
        self.before = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def gfnlm_operation(args: argparse.Namespace, path: str, op: str, seq_len: int, seed: int):
    """The gfnlm policy (LoRA as gfnlm's default) and a closure running ``op`` once."""
    import torch

    from gfnlm.contracts.types import Rollouts
    from gfnlm.models.loading import ensure_smollm2, load_tokenizer
    from gfnlm.training.config import ModelConfig
    from gfnlm.training.policy import CausalLMPolicy

    model, prompt_ids, response_ids = random_model_and_ids(args, seq_len, seed)
    config = ModelConfig(
        path="random",
        lora=True,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_targets=LORA["target_modules"],
        logp_chunk_size=args.chunk_size,
        dtype="auto" if args.device == "cuda" else "float32",
        **GFNLM_PATHS[path],
    )  # bf16 autocast on CUDA
    tokenizer = load_tokenizer(Path(args.tokenizer) if args.tokenizer else ensure_smollm2())
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(args.eos_id)
    policy = CausalLMPolicy(model, tokenizer, config, torch.device(args.device))
    batch, length = response_ids.shape
    lengths = response_lengths(args, seq_len, seed)
    rollouts = Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones_like(prompt_ids, dtype=torch.bool),
        response_ids=response_ids,
        response_mask=torch.arange(length) < lengths[:, None],
        lengths=lengths,
        ended_with_eos=torch.zeros(batch, dtype=torch.bool),
        group=torch.zeros(batch, dtype=torch.long),
        prompt_index=torch.zeros(batch, dtype=torch.long),
        behaviour_logp=torch.zeros(batch, length),
    ).to(args.device)
    advantage = torch.linspace(-1, 1, batch, device=args.device)[:, None]

    def update() -> None:
        evaluation = policy.evaluate(rollouts)
        ((evaluation.token_logp * advantage).sum() + evaluation.eos_logp[:, -1].sum()).backward()

    def base() -> None:
        policy.score_base(rollouts, need_eos_logp=True)

    return update if op == "update" else base


def trl_operation(args: argparse.Namespace, op: str, seq_len: int, seed: int):
    """TRL's per-token log-prob computation of GRPOTrainer on the same model and ids: its update
    (with gradient, entropies computed) or its reference pass (adapter disabled, no gradient)."""
    import contextlib
    import types

    import torch
    from peft import LoraConfig, get_peft_model
    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    model, prompt_ids, response_ids = random_model_and_ids(args, seq_len, seed)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **LORA))
    # As GRPOTrainer.__init__ does (GRPOConfig's defaults: temperature 1, no fp32 cast of the head).
    add_fused_lm_head(model.get_base_model(), temperature=1.0, outputs=("log_probs", "entropy"))
    model.train()
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    # Right-padded responses (--variable): TRL's batch masks the padding as its trainer does.
    real = (
        torch.arange(seq_len, device=args.device)
        < response_lengths(args, seq_len, seed).to(args.device)[:, None]
    )
    attention_mask = torch.cat([torch.ones_like(prompt_ids), real.long()], dim=1)

    # The trainer attributes the method reads: accelerate's autocast (bf16 on CUDA as
    # GRPOConfig(bf16=True), none on CPU).
    def autocast():
        if args.device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    trainer = types.SimpleNamespace(accelerator=types.SimpleNamespace(autocast=autocast))
    compute = (
        GRPOTrainer._get_per_token_logps_and_entropies.__wrapped__
    )  # without the profiling wrapper
    advantage = torch.linspace(-1, 1, response_ids.shape[0], device=args.device)[:, None]

    def update() -> None:
        logps, _, _ = compute(
            trainer,
            model,
            input_ids,
            attention_mask,
            seq_len,
            batch_size=args.batch,
            compute_entropy=True,
        )
        (logps * advantage * real).sum().backward()

    def base() -> None:
        with torch.no_grad(), model.disable_adapter():
            compute(trainer, model, input_ids, attention_mask, seq_len, batch_size=args.batch)

    return update if op == "update" else base


def worker(args: argparse.Namespace) -> None:
    """One measured operation in this (fresh, capped) process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    path, op, seq_len, seed = args.worker, args.op, args.seq_len, args.seed
    result = {"path": path, "op": op, "T": seq_len, "seed": seed}
    try:
        if path == "trl":
            operation = trl_operation(args, op, seq_len, seed)
            import trl

            result["version"] = f"trl {trl.__version__}"
        else:
            operation = gfnlm_operation(args, path, op, seq_len, seed)
        with PeakCudaMemory() if args.device == "cuda" else PeakRSS() as memory:
            start = time.perf_counter()
            operation()
            if args.device == "cuda":
                torch.cuda.synchronize()
            result["seconds"] = time.perf_counter() - start
        lengths = response_lengths(args, seq_len, seed)
        result |= {
            "tokens": int(lengths.sum()) + args.batch * args.prompt_len,  # real ones
            "linear_params": linear_params(args, seq_len),
            "peak_flops": peak_flops(args.device),
            "peak_gb": memory.peak / GB,
            "added_gb": (memory.peak - memory.before) / GB,
            "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
        }
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if (
            not isinstance(error, MemoryError)
            and "alloc" not in str(error).lower()
            and "out of memory" not in str(error).lower()
        ):
            raise
        result["capped"] = True
    print(json.dumps(result), flush=True)


def peak_flops(device: str) -> float | None:
    """The GPU's peak dense bf16 FLOP/s (benchmarks/vs_trl.py's table); None on CPU or unknown."""
    if device != "cuda":
        return None
    sys.path.insert(0, str(REPO / "benchmarks"))
    from vs_trl import peak_flops as known_peak

    return known_peak(device)[0]


def linear_params(args: argparse.Namespace, seq_len: int) -> int:
    """Weights of the model's matrices (MFU's N, as benchmarks/vs_trl.py counts them)."""
    config = model_config(args, seq_len)
    hidden, inner = config.hidden_size, config.intermediate_size
    head = hidden // config.num_attention_heads
    attention = hidden * head * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    layer = attention + 3 * hidden * inner
    return config.num_hidden_layers * layer + VOCAB * hidden


# ---------------------------------------------------------------- driver


def run_cell(
    args: argparse.Namespace, python: str, path: str, op: str, seq_len: int, seed: int
) -> dict:
    """One fresh process under the address-space cap; its JSON result (``capped`` when it died of
    the cap before reporting)."""
    cap = int(args.cap_gb * GB)

    def limit() -> None:  # CUDA maps far more address space than it uses: no cap there
        if args.device == "cpu" and cap > 0:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    command = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        path,
        "--op",
        op,
        "--seq-len",
        str(seq_len),
        "--seed",
        str(seed),
        *shared_options(args),
    ]
    # The repository first, then whatever the caller put on the path (carried wheels on a GPU
    # machine).
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env=env,
        check=False,
        timeout=args.timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = done.stderr[-2000:]
    if any(word in tail for word in ("alloc", "MemoryError", "Cannot allocate", "std::bad_alloc")):
        return {"path": path, "op": op, "T": seq_len, "seed": seed, "capped": True}
    raise SystemExit(
        f"{path} {op} T={seq_len} seed={seed} failed (exit {done.returncode}):\n{tail}"
    )


def shared_options(args: argparse.Namespace) -> list[str]:
    options = [
        "--batch",
        str(args.batch),
        "--prompt-len",
        str(args.prompt_len),
        "--model",
        args.model,
        "--chunk-size",
        str(args.chunk_size),
        "--threads",
        str(args.threads),
        "--eos-id",
        str(args.eos_id),
        "--device",
        args.device,
    ] + (["--variable"] if args.variable else [])
    return options + (["--tokenizer", args.tokenizer] if args.tokenizer else [])


def trl_python(args: argparse.Namespace) -> str | None:
    """The interpreter that runs TRL: ``--trl-python``, else TRL's venv (created on first use)."""
    if args.no_trl:
        return None
    if args.trl_python:
        return args.trl_python
    sys.path.insert(0, str(REPO / "benchmarks"))
    from vs_trl import ensure_trl_venv

    return str(ensure_trl_venv())


def load_results(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def key(record: dict) -> str:
    return f"{record['path']}/{record['op']}/{record['T']}/{record['seed']}"


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def throughput(runs: list[dict], op: str) -> str:
    """Median real tokens/s and (GPU, update) MFU = 4·N·tokens/s / peak (forward + the backward's
    activation gradients, as benchmarks/vs_trl.py counts the LoRA update)."""
    if not all("tokens" in r for r in runs):
        return "| "  # measured before these fields existed
    rate = statistics.median(r["tokens"] / r["seconds"] for r in runs)
    flops = runs[0].get("peak_flops")
    mfu = f"{100 * 4 * runs[0]['linear_params'] * rate / flops:.1f} %" if flops else ""
    return f"{rate:,.0f} | {mfu if op == 'update' else ''}"


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """Markdown: per op and T, each path's time and peak RSS (median, min–max over seeds), and the
    chunked path's ratios to the current path and to TRL (of the medians)."""
    cells: dict[tuple, list[dict]] = {}
    for record in results.values():
        cells.setdefault((record["op"], record["T"], record["path"]), []).append(record)
    peak = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    added = "added GPU memory" if args.device == "cuda" else "added RSS"
    lines = [
        (
            f"| operation | T | path | runs (seeds) | time, s | tokens/s | MFU | {peak}, GB | "
            f"{added}, GB | chunked / this: time | chunked / this: {peak} |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cap = f"> {args.cap_gb:g} GB (cap)"
    for op in OPS:
        for seq_len in sorted({t for (o, t, _) in cells if o == op}):
            chunked = [r for r in cells.get((op, seq_len, "chunked"), []) if not r.get("capped")]
            for path in PATHS:
                runs = sorted(cells.get((op, seq_len, path), []), key=lambda r: r["seed"])
                if not runs:
                    continue
                seeds = ",".join(str(r["seed"]) for r in runs)
                ok = [r for r in runs if not r.get("capped")]
                if len(ok) < len(runs):
                    lines.append(
                        f"| {op} | {seq_len} | {path} | {len(runs)} ({seeds}) | "
                        f"{cap} | | | {cap} | | | |"
                    )
                    continue
                time_ratio = rss_ratio = ""
                if path != "chunked" and chunked:
                    median = statistics.median
                    chunked_seconds = median(r["seconds"] for r in chunked)
                    chunked_peak = median(r["peak_gb"] for r in chunked)
                    time_ratio = f"{chunked_seconds / median(r['seconds'] for r in ok):.2f}×"
                    rss_ratio = f"{chunked_peak / median(r['peak_gb'] for r in ok):.2f}×"
                lines.append(
                    f"| {op} | {seq_len} | {path} | {len(runs)} ({seeds}) | "
                    f"{spread([r['seconds'] for r in ok], '.2f')} | {throughput(ok, op)} | "
                    f"{spread([r['peak_gb'] for r in ok], '.2f')} | "
                    f"{spread([r['added_gb'] for r in ok], '.2f')} | {time_ratio} | {rss_ratio} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--model", choices=list(MODELS), help="default: random-small on CPU, random-0.5b on CUDA"
    )
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: the cached SmolLM2's)")
    parser.add_argument(
        "--seq-lens", type=int, nargs="+", help="default: 256 512 2048 on CPU, 4096 on CUDA"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--variable", action="store_true", help="responses of random lengths in [T/4, T]"
    )
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eos-id", type=int, default=2)
    parser.add_argument("--cap-gb", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument(
        "--trl-python", help="an interpreter that imports trl 1.16.0 (default: .bench-venvs/trl)"
    )
    parser.add_argument("--results", type=Path, help="default: benchmarks/out/memory_<device>.json")
    parser.add_argument(
        "--into-docs", action="store_true", help="write the table into docs/benchmarks/"
    )
    parser.add_argument(
        "--marker",
        help="the docs markers --into-docs writes between (default: memory, or memory_cuda)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="print the table of --results, run nothing"
    )
    parser.add_argument(
        "--rerun", action="store_true", help="measure again the cells --results already holds"
    )
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--op", choices=OPS, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or ("random-0.5b" if args.device == "cuda" else "random-small")
    args.seq_lens = args.seq_lens or ([4096] if args.device == "cuda" else [256, 512, 2048])
    suffix = f"{args.device}_{args.model}_variable" if args.variable else args.device
    args.results = args.results or REPO / "benchmarks" / "out" / f"memory_{suffix}.json"
    if args.worker:
        worker(args)
        return 0
    results = load_results(args.results)
    if not args.report_only:
        pythons = dict.fromkeys(GFNLM_PATHS, sys.executable)
        paths = [p for p in args.paths if p != "trl" or not args.no_trl]
        if "trl" in paths:
            pythons["trl"] = trl_python(args)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for seq_len in args.seq_lens:
            for seed in range(args.repeats):
                for op in args.ops:
                    for path in paths:  # alternating paths, seed after seed
                        if f"{path}/{op}/{seq_len}/{seed}" in results and not args.rerun:
                            continue  # measured by an earlier invocation
                        record = run_cell(args, pythons[path], path, op, seq_len, seed)
                        results[key(record)] = record
                        args.results.write_text(json.dumps(results, indent=1))
                        shown = (
                            "> cap"
                            if record.get("capped")
                            else (f"{record['seconds']:.2f} s, peak {record['peak_gb']:.2f} GB")
                        )
                        print(f"{op:6s} T={seq_len:5d} {path:8s} seed {seed}: {shown}", flush=True)
    body = MODELS[args.model]
    where = (
        f"bf16 autocast on {args.device}, peak = torch.cuda.max_memory_allocated"
        if args.device == "cuda"
        else f"fp32 on CPU, {args.threads} threads, address-space cap {args.cap_gb:g} GB"
    )
    text = (
        f"{args.model}: B = {args.batch}, prompt {args.prompt_len} tokens, V = {VOCAB:,}, hidden "
        f"{body['hidden_size']}, {body['num_hidden_layers']} layers, LoRA r=8 q/v, {where}, chunk "
        f"{args.chunk_size} positions; median (min–max) over fresh processes, seeds as listed.\n\n"
        + table(results, args)
    )
    print(text)
    if args.into_docs:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from docs_page import write_between_markers

        default_marker = "memory" if args.device == "cpu" else "memory_cuda"
        write_between_markers(text, args.marker or default_marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
