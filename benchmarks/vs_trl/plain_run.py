"""A "plain loop" for benchmarks/vs_trl.py --plain-loop: a machine-speed reference, not a
system under test. Per step, with transformers and peft only: ``generate`` for P prompts x G
completions, one no-grad forward of the base model (adapter disabled), one policy forward and
backward of a REINFORCE loss (log-ratio to the base as reward, group-centred), grad-clip 1.0, AdamW.

Prints one JSON line: per-step wall times (s), the part of each spent in ``generate``, and peak RSS.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from workload import add_workload_arguments


def response_log_probs(
    model, sequences: torch.Tensor, attention: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """Log-probabilities of the generated tokens (positions after the left-padded prompt):
    [B, T]."""
    logits = model(input_ids=sequences, attention_mask=attention).logits[:, prompt_width - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, sequences[:, prompt_width:, None])[
        ..., 0
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--questions", required=True, help="JSON list of questions, --prompts per step in order"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    add_workload_arguments(parser)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    questions = json.loads(Path(args.questions).read_text())
    times, generate_times = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        chats = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions[args.prompts * step : args.prompts * (step + 1)]
        ]
        batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            sequences = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.samples,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = time.perf_counter()
        prompt_width = batch["input_ids"].shape[1]
        prompt_attention = batch["attention_mask"].repeat_interleave(args.samples, dim=0)
        response = sequences[:, prompt_width:]
        # Tokens up to and including the first EOS count; padding after it does not.
        finished = (response == tokenizer.eos_token_id).long().cumsum(-1)
        response_mask = (finished - (response == tokenizer.eos_token_id).long()) == 0
        attention = torch.cat([prompt_attention, response_mask.long()], dim=1)
        with torch.no_grad(), model.disable_adapter():
            base = (
                response_log_probs(model, sequences, attention, prompt_width) * response_mask
            ).sum(-1)
        policy = (
            response_log_probs(model, sequences, attention, prompt_width) * response_mask
        ).sum(-1)
        reward = (base - policy.detach()).view(args.prompts, args.samples)
        advantage = (reward - reward.mean(-1, keepdim=True)).flatten()
        loss = -(advantage * policy).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        times.append(time.perf_counter() - start)
        generate_times.append(generated - start)
        print(
            f"plain loop step {step + 1}/{args.steps}: {times[-1]:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    print(
        json.dumps(
            {
                "step_times": times,
                "generate_times": generate_times,
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
