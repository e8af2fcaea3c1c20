"""One TRL GRPOTrainer run for benchmarks/vs_trl.py (run in TRL's own venv; imports no gfnlm).

Prints one JSON line: per-step wall times (s); per step, the synchronised times of generation and of
generation + scoring (the rest of the step is the update) and the tokens generated and processed in
the update; peak RSS and (CUDA) peak GPU memory.
"""

import argparse
import json
import resource
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from workload import add_workload_arguments, synchronize


def distinct_words(completions, **kwargs):
    """Share of distinct words (the same reward as gfnlm.tasks.rewards.distinct_words)."""
    values = []
    for completion in completions:
        text = completion[0]["content"] if isinstance(completion, list) else completion
        words = text.lower().split()
        values.append(len(set(words)) / len(words) if words else 0.0)
    return values


class StepTimer(TrainerCallback):
    def __init__(self, device: str) -> None:
        self.device, self.starts, self.times = device, {}, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts[state.global_step] = synchronize(self.device)

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(synchronize(self.device) - self.starts[state.global_step - 1])


def instrument(trainer: GRPOTrainer, records: list[dict], device: str) -> None:
    """Time TRL's generation and its generate-and-score phase (reference/old log-probs, rewards),
    and count the tokens: generated (completion mask) and processed by the update's forward pass
    (each row's prompt + completion)."""
    generate, generate_and_score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        start = synchronize(device)
        out = generate(*a, **k)
        records[-1]["sample_s"] = synchronize(device) - start
        return out

    def timed_generate_and_score(*a, **k):
        records.append({})
        start = synchronize(device)
        out = generate_and_score(*a, **k)
        records[-1]["generate_and_score_s"] = synchronize(device) - start
        records[-1]["generated_tokens"] = int(out["completion_mask"].sum())
        records[-1]["update_tokens"] = int(out["prompt_mask"].sum() + out["completion_mask"].sum())
        return out

    trainer._generate, trainer._generate_and_score_completions = (
        timed_generate,
        timed_generate_and_score,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--questions", required=True, help="JSON list of questions, --prompts per step in order"
    )
    parser.add_argument("--beta", type=float, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    add_workload_arguments(
        parser
    )  # --dtype auto: bf16 autocast on CUDA, as gfnlm's model.dtype=auto
    parser.add_argument(
        "--gradient-checkpointing",
        choices=["default", "off"],
        default="default",
        help="default: GRPOConfig's own (on); off: no recomputation, as gfnlm",
    )
    args = parser.parse_args()
    checkpointing = (
        {} if args.gradient_checkpointing == "default" else {"gradient_checkpointing": False}
    )
    bf16 = args.device == "cuda" and args.dtype == "auto"
    torch.manual_seed(args.seed)
    questions = json.loads(Path(args.questions).read_text())[: args.prompts * args.steps]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=args.out,
        use_cpu=args.device == "cpu",
        bf16=bf16,
        fp16=False,
        seed=args.seed,
        per_device_train_batch_size=args.prompts * args.samples,
        num_generations=args.samples,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=1e-5,
        max_grad_norm=1.0,
        beta=args.beta,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        shuffle_dataset=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **checkpointing,
    )
    timer = StepTimer(args.device)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=distinct_words,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    records: list[dict] = []
    instrument(trainer, records, args.device)
    trainer.train()
    for record, step in zip(records, timer.times, strict=True):
        record["update_s"] = step - record["generate_and_score_s"]  # the rest of the step
    print(
        json.dumps(
            {
                "step_times": timer.times,
                "records": records,
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30
                if args.device == "cuda"
                else None,
            }
        )
    )


if __name__ == "__main__":
    main()
