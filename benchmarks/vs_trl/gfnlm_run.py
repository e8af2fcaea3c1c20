"""One gfnlm run for benchmarks/vs_trl.py: the reference TRL configuration, PowerFlow or GRPO.

Prints one JSON line: per-step wall times (s), the step-time split, the tokens each step generated
and processed in its update (with the synchronised sample/update times they were made in), peak RSS
and (CUDA) peak GPU memory.
"""

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import torch
from workload import add_workload_arguments, synchronize

from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "model.lora=true",
    "model.lora_r=8",
    "model.lora_alpha=16",
    "model.lora_targets=[q_proj,v_proj]",
    "sampling.temperature=1.0",
    "sampling.top_p=1.0",
    "train.lr=1e-5",
    "train.grad_clip=1.0",
    "train.updates_per_batch=1",
    "data.eval=''",
]
OBJECTIVES = {
    "powerflow": ["target.name=alpha_power", "target.options.alpha=4", "objective.name=la_tb"],
    "grpo": [
        "target.name=reward",
        "target.options.reward=gfnlm.tasks.rewards:distinct_words",
        "objective.name=grpo",
    ],
}


def update_tokens(rollouts) -> int:
    """Tokens the update's forward pass runs: each distinct prompt once (gfnlm shares a group's
    prompt pass) plus every response token."""
    first_rows = [int((rollouts.group == g).nonzero()[0]) for g in torch.unique(rollouts.group)]
    return int(rollouts.prompt_mask[first_rows].sum()) + int(rollouts.response_mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--questions", required=True, help="JSON list of questions, --prompts per step in order"
    )
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    add_workload_arguments(parser)
    args = parser.parse_args()
    per_step = args.prompts
    questions = json.loads(Path(args.questions).read_text())[: per_step * args.steps]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
        overrides = [
            *COMMON,
            *OBJECTIVES[args.objective],
            f"model.path={args.model}",
            f"model.dtype={args.dtype}",
            f"train.device={args.device}",
            f"train.prompts_per_step={per_step}",
            f"sampling.samples_per_prompt={args.samples}",
            f"sampling.max_new_tokens={args.max_new_tokens}",
            f"data.train={train_file}",
            f"train.seed={args.seed}",
            f"train.out_dir={Path(tmp) / 'run'}",
            f"train.steps={args.steps}",
        ]
        trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
        # Synchronised timings of the rollout and of the update, and the tokens of each.
        record: dict[str, float] = {}
        sample, update = trainer.components.sampler.sample, trainer.update

        def timed_sample(prompts, n):
            start = synchronize(args.device)
            rollouts = sample(prompts, n)
            record["sample_s"] = synchronize(args.device) - start
            record["generated_tokens"] = int(rollouts.response_mask.sum())
            record["update_tokens"] = update_tokens(rollouts)
            return rollouts

        def timed_update(rollouts, scores, *rest):
            start = synchronize(args.device)
            metrics = update(rollouts, scores, *rest)
            record["update_s"] = synchronize(args.device) - start
            return metrics

        trainer.components.sampler.sample, trainer.update = timed_sample, timed_update
        times, splits, records = [], [], []
        for step in range(args.steps):
            # TRL (shuffle_dataset=False) takes the prompts in order: so does this run.
            trainer.rollouts.next_prompt_indices = lambda step=step: list(
                range(per_step * step, per_step * (step + 1))
            )
            start = synchronize(args.device)
            metrics = trainer.train_step()
            trainer.step += 1
            times.append(synchronize(args.device) - start)
            splits.append(
                {
                    k.removeprefix("time/"): metrics[k]
                    for k in ("time/sample", "time/score", "time/update")
                }
            )
            records.append(dict(record))
            print(
                f"gfnlm {args.objective} step {step + 1}/{args.steps}: {times[-1]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        json.dumps(
            {
                "step_times": times,
                "splits": splits,
                "records": records,
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30
                if args.device == "cuda"
                else None,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
