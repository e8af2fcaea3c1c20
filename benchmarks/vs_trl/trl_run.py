"""One TRL GRPOTrainer run for benchmarks/vs_trl.py (run in TRL's own venv; imports no gfnlm).

Prints one JSON line: per-step wall times (s), the generation share of each step, and peak RSS.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


def distinct_words(completions, **kwargs):
    """Share of distinct words (the same reward as gfnlm.rewards.distinct_words)."""
    values = []
    for completion in completions:
        text = completion[0]["content"] if isinstance(completion, list) else completion
        words = text.lower().split()
        values.append(len(set(words)) / len(words) if words else 0.0)
    return values


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.starts, self.times = {}, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts[state.global_step] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.starts[state.global_step - 1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", required=True, help="JSON list of questions, 4 per step in order")
    parser.add_argument("--beta", type=float, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    questions = json.loads(Path(args.questions).read_text())[: 4 * args.steps]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=args.out, use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        per_device_train_batch_size=16, num_generations=4, gradient_accumulation_steps=1,
        max_completion_length=24, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=1e-5, max_grad_norm=1.0, beta=args.beta, max_steps=args.steps,
        logging_steps=1, save_strategy="no", report_to="none", shuffle_dataset=False,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=distinct_words, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer],
                          peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    trainer.train()
    print(json.dumps({"step_times": timer.times,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == "__main__":
    main()
