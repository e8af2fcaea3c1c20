"""Operator calls and CPU time of one update (the policy's evaluation forward + a loss + backward):
the bucket passes vs the packed pass (``model.logp_pass``).

On a GPU every operator call is at least one kernel launch, so the count is what a step pays in
launches whatever the sizes; on a CPU it is counted with the torch profiler by
benchmarks/kernel_count.py's ``count_operator_calls`` (operator calls dispatched from Python, and
the kernel launches they would make), the same way for both layouts. The model is a narrow Llama
at real depth (``--layers`` 24, hidden 64, GQA 4/2, random weights, SmolLM2's vocabulary and
tokenizer, LoRA r=8 q/v, float32); the batch is ``--prompts`` 4 prompts of different lengths
(20–60 tokens) with ``--samples`` 8 responses each, of random lengths between ``--min-len`` and
``--max-len``.

Times: median (min–max) of ``--repeats`` updates per layout, alternating layouts, after one
warm-up each; ``--threads`` 2.

    python benchmarks/kernel_count_update.py [--max-len 64] [--repeats 5] [--checkpointing]
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gfnlm.contracts.types import Rollouts
from gfnlm.models.loading import ensure_smollm2, load_tokenizer
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

LAYOUTS = ("buckets", "packed")

try:  # the sibling benchmark's counter, where it exists (benchmarks/ is on sys.path)
    from kernel_count import count_operator_calls
except ImportError:

    def count_operator_calls(fn: Callable[[], object]) -> dict[str, int]:
        """``total``: ``aten::`` operator calls (nested ones included) while ``fn`` runs once."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            fn()
        events = profiler.key_averages()
        return {"total": sum(e.count for e in events if e.key.startswith("aten::"))}


def narrow_policy(args: argparse.Namespace, logp_pass: str) -> CausalLMPolicy:
    """The random narrow Llama (same weights for every layout: seed 0) as a LoRA policy."""
    tokenizer_dir = ensure_smollm2()
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    config = ModelConfig(
        path="random",
        lora=True,
        dtype="float32",
        logp_pass=logp_pass,
        gradient_checkpointing=args.checkpointing,
        gradient_checkpointing_from=0,
    )
    policy = CausalLMPolicy(model, tokenizer, config, torch.device("cpu"))
    return policy.train()


def variable_rollouts(args: argparse.Namespace, vocab: int, eos: int) -> Rollouts:
    """``--prompts`` prompts of 20–60 tokens (left-padded) with ``--samples`` responses each of
    random lengths in ``[--min-len, --max-len]`` (right-padded; no EOS: every position real)."""
    generator = torch.Generator().manual_seed(args.seed)
    prompt_lengths = torch.randint(20, 61, (args.prompts,), generator=generator)
    width = int(prompt_lengths.max())
    batch = args.prompts * args.samples
    lengths = torch.randint(args.min_len, args.max_len + 1, (batch,), generator=generator)
    steps = int(lengths.max())
    prompts = torch.randint(eos + 1, vocab, (args.prompts, width), generator=generator)
    group = torch.arange(args.prompts).repeat_interleave(args.samples)
    prompt_mask = torch.arange(width) >= (width - prompt_lengths[group])[:, None]
    response_mask = torch.arange(steps) < lengths[:, None]
    responses = torch.randint(eos + 1, vocab, (batch, steps), generator=generator)
    return Rollouts(
        prompt_ids=prompts[group] * prompt_mask,
        prompt_mask=prompt_mask,
        response_ids=responses * response_mask,
        response_mask=response_mask,
        lengths=lengths,
        ended_with_eos=torch.zeros(batch, dtype=torch.bool),
        group=group,
        prompt_index=group,
        behaviour_logp=torch.zeros(batch, steps),
    )


def update_of(policy: CausalLMPolicy, rollouts: Rollouts) -> Callable[[], None]:
    """One update: evaluation, a loss through the token log-probs and the last EOS log-prob (as
    the objectives read them), backward."""
    advantage = torch.linspace(-1, 1, rollouts.batch_size)[:, None]

    def update() -> None:
        policy.model.zero_grad(set_to_none=True)
        evaluation = policy.evaluate(rollouts)
        loss = (evaluation.token_logp * advantage).sum() + evaluation.eos_logp[:, -1].sum()
        loss.backward()

    return update


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--min-len", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policies = {layout: narrow_policy(args, layout) for layout in LAYOUTS}
    first = policies[LAYOUTS[0]]
    rollouts = variable_rollouts(args, first.transformer_config.vocab_size, first.eos_token_id)
    updates = {layout: update_of(policy, rollouts) for layout, policy in policies.items()}
    calls = {layout: count_operator_calls(update) for layout, update in updates.items()}
    seconds: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.repeats):
        for layout, update in updates.items():
            start = time.perf_counter()
            update()
            seconds[layout].append(time.perf_counter() - start)
    real = int(rollouts.prompt_mask.sum() + rollouts.lengths.sum())
    print(
        f"{args.layers} layers, hidden {args.hidden}, {args.prompts} prompts x {args.samples} "
        f"responses of {args.min_len}-{args.max_len} tokens ({real} real tokens), seed "
        f"{args.seed}, {args.threads} threads, checkpointing {args.checkpointing}"
    )
    print(
        "| layout | operator calls per update | kernel launches (estimated) | seconds per update, "
        "median (min–max) |"
    )
    print("|---|---|---|---|")
    for layout in LAYOUTS:
        times = seconds[layout]
        print(
            f"| {layout} | {calls[layout]['total']:,} | {calls[layout].get('launches', '-'):,} | "
            f"{statistics.median(times):.3f} "
            f"({min(times):.3f}–{max(times):.3f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
