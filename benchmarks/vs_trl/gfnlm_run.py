"""One gfnlm run for benchmarks/vs_trl.py: the issue's TRL configuration, PowerFlow or GRPO.

Prints one JSON line: per-step wall times (s), the step-time split and peak RSS.
"""

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from gfnlm.config import load_config
from gfnlm.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "model.lora=true", "model.lora_r=8", "model.lora_alpha=16", "model.lora_targets=[q_proj,v_proj]",
    "model.dtype=float32", "sampling.samples_per_prompt=4", "sampling.max_new_tokens=24",
    "sampling.temperature=1.0", "sampling.top_p=1.0", "train.prompts_per_step=4", "train.lr=1e-5",
    "train.grad_clip=1.0", "train.updates_per_batch=1", "train.device=cpu", "data.eval=''",
]
OBJECTIVES = {
    "powerflow": ["target.name=alpha_power", "target.options.alpha=4", "objective.name=la_tb"],
    "grpo": ["target.name=reward", "target.options.reward=gfnlm.rewards:distinct_words", "objective.name=grpo"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", required=True, help="JSON list of questions, 4 per step in order")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    questions = json.loads(Path(args.questions).read_text())[: 4 * args.steps]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
        overrides = [*COMMON, *OBJECTIVES[args.objective], f"model.path={args.model}",
                     f"data.train={train_file}", f"train.seed={args.seed}", f"train.out_dir={Path(tmp) / 'run'}",
                     f"train.steps={args.steps}"]
        trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
        times, splits = [], []
        for step in range(args.steps):
            # TRL (shuffle_dataset=False) takes the prompts in order: so does this run.
            trainer._next_prompt_indices = lambda step=step: list(range(4 * step, 4 * step + 4))
            start = time.perf_counter()
            metrics = trainer.train_step()
            trainer.step += 1
            times.append(time.perf_counter() - start)
            splits.append({k.removeprefix("time/"): metrics[k] for k in ("time/sample", "time/score", "time/update")})
    print(json.dumps({"step_times": times, "splits": splits,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    sys.exit(main())
