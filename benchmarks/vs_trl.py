"""gfnlm vs TRL's GRPOTrainer, per training step, on the same work (issue: "Faster per step than TRL").

Configuration (both systems): SmolLM2-135M-Instruct, LoRA r=8 (alpha 16) on q_proj/v_proj, fp32,
AdamW lr 1e-5, grad-clip 1.0; each step 4 prompts x 4 completions of <= 24 new tokens at T=1,
top-p 1, top-k off; the same prompts in the same order (the first bundled training questions,
chat-formatted by each system with the model's template), the same reward for the GRPO pair (share
of distinct words). Pairs compared:

* gfnlm PowerFlow (alpha-power target: base forward + LA-TB update) vs TRL GRPO beta=0.04
  (reference forward + GRPO update): the same work;
* gfnlm GRPO vs TRL GRPO beta=0 (no reference forward).

Every run is a fresh process (so peak RSS is per system); runs alternate between systems, round
after round. TRL runs in its own venv (``.bench-venvs/trl``, created on first use with torch and
transformers pinned by ``constraints.txt``); it is never a dependency of gfnlm. Prints the median
(min-max) of steps 2..N per system, the ratios gfnlm/TRL, and writes ``benchmarks/out/vs_trl.csv``
and ``benchmarks/out/vs_trl.md``, and replaces the table in ``docs/benchmarks.md`` (between its
``vs_trl`` markers; the prose around it, with the date and machine, is edited by hand).

    python benchmarks/vs_trl.py [--steps 6] [--rounds 1] [--seed 0]
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gfnlm.models import ensure_smollm2
from gfnlm.prompts import resolve_prompt_file
from gfnlm.tasks import load_prompt_file

REPO = Path(__file__).resolve().parents[1]
TRL_VENV = REPO / ".bench-venvs" / "trl"
TRL_VERSION = "1.16.0"
HERE = Path(__file__).resolve().parent / "vs_trl"
PAIRS = [("gfnlm PowerFlow", "TRL GRPO beta=0.04"), ("gfnlm GRPO", "TRL GRPO beta=0")]
GOALS = {"gfnlm PowerFlow": 0.75, "gfnlm GRPO": 0.90}


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


def run_json(command: list[str]) -> dict:
    """Run one benchmark process; its last stdout line is a JSON result."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def write_into_docs(table: str, page: Path) -> None:
    """Replace the table between the page's ``vs_trl`` markers (the docs show what was measured)."""
    text = page.read_text()
    begin = text.index("<!-- vs_trl:begin")
    begin = text.index("\n", begin) + 1
    end = text.index("<!-- vs_trl:end -->")
    page.write_text(text[:begin] + table + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the four runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu"],
                        help="CPU only for now: the GPU variant is not written yet")
    args = parser.parse_args()
    trl_python = ensure_trl_venv()
    model = str(ensure_smollm2())
    records = load_prompt_file(resolve_prompt_file("factual_train", "questions"))
    runs = {
        "gfnlm PowerFlow": [sys.executable, str(HERE / "gfnlm_run.py"), "--objective", "powerflow"],
        "TRL GRPO beta=0.04": [str(trl_python), str(HERE / "trl_run.py"), "--beta", "0.04"],
        "gfnlm GRPO": [sys.executable, str(HERE / "gfnlm_run.py"), "--objective", "grpo"],
        "TRL GRPO beta=0": [str(trl_python), str(HERE / "trl_run.py"), "--beta", "0"],
    }
    steps: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, float] = {name: 0.0 for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        questions = Path(tmp) / "questions.json"
        questions.write_text(json.dumps([r["question"] for r in records[: 4 * args.steps]]))
        common = ["--model", model, "--questions", str(questions), "--steps", str(args.steps),
                  "--seed", str(args.seed)]
        for round_index in range(args.rounds):
            for name, command in runs.items():
                extra = ["--out", str(Path(tmp) / "trl-out")] if name.startswith("TRL") else []
                started = time.perf_counter()
                result = run_json([*command, *common, *extra])
                steps[name] += result["step_times"][1:]  # step 1 is warm-up
                rss[name] = max(rss[name], result["peak_rss_gb"])
                print(f"round {round_index + 1} {name:20s} steps 2-{args.steps}: "
                      f"{summary(result['step_times'][1:])} s   peak RSS {result['peak_rss_gb']:.2f} GB   "
                      f"(process {time.perf_counter() - started:.0f} s)", flush=True)
    header = f"| system | s/step, median (min-max) of steps 2-{args.steps} x {args.rounds} round(s) | peak RSS (GB) |"
    lines = [header, "|---|---|---|"]
    lines += [f"| {name} | {summary(values)} | {rss[name]:.2f} |" for name, values in steps.items()]
    lines += ["", "| pair | ratio of medians | goal |", "|---|---|---|"]
    for ours, theirs in PAIRS:
        ratio = statistics.median(steps[ours]) / statistics.median(steps[theirs])
        verdict = "PASS" if ratio <= GOALS[ours] else "FAIL"
        lines.append(f"| {ours} / {theirs} | {ratio:.2f}x | <= {GOALS[ours]}x {verdict} |")
    memory = "PASS" if max(rss[o] for o, _ in PAIRS) <= min(rss[t] for _, t in PAIRS) else "FAIL"
    lines.append(f"| peak RSS gfnlm <= TRL | {max(rss[o] for o, _ in PAIRS):.2f} vs "
                 f"{min(rss[t] for _, t in PAIRS):.2f} GB | {memory} |")
    table = "\n".join(lines)
    print("\n" + table)
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_trl.md").write_text(table + "\n")
    write_into_docs(table + "\n", REPO / "docs" / "benchmarks.md")
    with open(out / "vs_trl.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["system", "measurement", "seconds"])  # steps 2..N of each round, in order
        for name, values in steps.items():
            writer.writerows([name, i + 1, v] for i, v in enumerate(values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
