"""Measure SmolLM2 on the factual candidate questions and build the default task's question set.

For every candidate in ``gfnlm/data/factual_candidates.jsonl`` (written by hand: question plus
accepted answers) this script measures, with the real model and the task's prompt format
(:func:`gfnlm.tasks.prompt_files.format_prompt`) and checker
(:func:`gfnlm.tasks.factual_answers.is_correct`):

* greedy correctness (one greedy answer), and
* accuracy at temperature 1 over ``--samples`` samples (pure ancestral sampling: no top-k/top-p).

The "latent knowledge" task wants questions the model gets right greedily but often wrong when
sampling, so the selection keeps candidates that are greedy-correct and whose measured T=1
accuracy is at most ``--max-t1-acc``. The selection is split at random (seeded) into train
questions and held-out eval questions, both with answers (PowerFlow and the label-free baselines
never read the training answers; GRPO's verifier does). Because the
selection looked at the same samples, the eval set's T=1 accuracy on them is biased low
(regression to the mean); the eval set is therefore sampled again with a fresh seed
(``--confirm-samples``) and both numbers are printed. Greedy accuracy on the selected set is 100%
by construction.

Usage (CPU, ≈10 min on 2 cores for 820 candidates)::

    .venv/bin/python benchmarks/build_factual_set.py            # measure and print a summary
    .venv/bin/python benchmarks/build_factual_set.py --write    # also rewrite the data files
    .venv/bin/python benchmarks/build_factual_set.py --measurements out.jsonl   # keep samples
    .venv/bin/python benchmarks/build_factual_set.py --reuse out.jsonl --max-t1-acc 0.5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

# transformers 5 renames forward(past_key_values=) to cache=; the old name works on 4.x and 5.x.
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gfnlm.models.loading import resolve_model_path
from gfnlm.tasks.factual_answers import first_sentence_complete, is_correct
from gfnlm.tasks.prompt_files import (
    DATA_DIR,
    FACTUAL_EVAL,
    FACTUAL_TRAIN,
    format_prompt,
    load_prompt_file,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="'smollm2' or a local HF model folder")
    p.add_argument("--candidates", type=Path, default=DATA_DIR / "factual_candidates.jsonl")
    p.add_argument("--samples", type=int, default=8, help="T=1 samples per question")
    p.add_argument(
        "--confirm-samples",
        type=int,
        default=16,
        help="fresh T=1 samples per selected eval question (0: skip)",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="questions per batch (each gives 1 greedy + --samples rows)",
    )
    p.add_argument(
        "--max-t1-acc",
        type=float,
        default=0.75,
        help="keep greedy-correct questions with measured T=1 accuracy <= this",
    )
    p.add_argument("--eval-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="only the first N candidates (smoke test)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--write", action="store_true", help="rewrite factual_train/eval.jsonl")
    p.add_argument(
        "--measurements",
        type=Path,
        default=None,
        help="write per-question measurements (JSONL) here",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="take greedy answers and samples from this --measurements file "
        "instead of generating them (re-selection without the cost)",
    )
    return p.parse_args(argv)


@torch.no_grad()
def rollout(
    model,
    tokenizer,
    prompts: list[str],
    *,
    samples: int,
    greedy: bool,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator,
) -> tuple[list[str], list[list[str]]]:
    """Greedy answer (if ``greedy``) and ``samples`` T=``temperature`` answers for each prompt.

    Each prompt is prefilled once (left padding) and its KV cache repeated for the greedy row
    and the sampled rows; sampling is plain ancestral sampling from softmax(logits / T) over the
    whole vocabulary (no top-k / top-p). Rows that finished (EOS, or a complete first sentence,
    see :func:`gfnlm.tasks.factual_answers.first_sentence_complete`) are dropped from the batch.
    """
    k = int(greedy) + samples
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    logits = out.logits[:, -1].float().repeat_interleave(k, 0)
    mask = mask.repeat_interleave(k, 0)
    next_pos = pos[:, -1].repeat_interleave(k) + 1
    rows = torch.arange(len(prompts) * k, device=model.device)  # global row of each batch row
    tokens: list[list[int]] = [[] for _ in range(len(prompts) * k)]
    eos = tokenizer.eos_token_id
    for step in range(max_new_tokens):
        probs = torch.softmax(logits / temperature, dim=-1)
        sampled = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1)
        tok = sampled.to(model.device)
        if greedy:
            tok = torch.where(rows % k == 0, logits.argmax(-1), tok)
        keep = []
        for j, (row, t) in enumerate(zip(rows.tolist(), tok.tolist(), strict=True)):
            if t == eos:
                continue
            tokens[row].append(t)
            if not first_sentence_complete(tokenizer.decode(tokens[row], skip_special_tokens=True)):
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        keep_t = torch.tensor(keep, device=model.device)
        if len(keep) < len(rows):
            cache.batch_select_indices(keep_t)
        rows, tok, mask, next_pos = rows[keep_t], tok[keep_t], mask[keep_t], next_pos[keep_t]
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    greedy_texts = [texts[i * k] for i in range(len(prompts))] if greedy else []
    sampled_texts = [texts[i * k + int(greedy) : (i + 1) * k] for i in range(len(prompts))]
    return greedy_texts, sampled_texts


def measure(
    model, tokenizer, prompts: list[str], *, samples: int, greedy: bool, args, seed: int, desc: str
) -> tuple[list[str], list[list[str]]]:
    """:func:`rollout` over all prompts in batches of ``args.batch_size`` prompts, seeded."""
    generator = torch.Generator().manual_seed(seed)
    greedy_texts: list[str] = []
    sampled: list[list[str]] = []
    for start in tqdm(range(0, len(prompts), args.batch_size), desc=desc, unit="batch"):
        g, s = rollout(
            model,
            tokenizer,
            prompts[start : start + args.batch_size],
            samples=samples,
            greedy=greedy,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            generator=generator,
        )
        greedy_texts += g
        sampled += s
    return greedy_texts, sampled


def accuracy(samples: list[list[str]], answers: list[list[str]]) -> list[float]:
    """Per-question fraction of correct samples."""
    return [
        sum(is_correct(t, a) for t in s) / len(s) for s, a in zip(samples, answers, strict=True)
    ]


def pct(x: float) -> str:
    """Format a fraction as a percentage."""
    return f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> None:
    """Measure the candidates, print the summary and optionally write the data files."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    candidates = load_prompt_file(args.candidates)
    if args.limit:
        candidates = candidates[: args.limit]
    questions = [c["question"] for c in candidates]
    answers = [c["answers"] for c in candidates]

    t0 = time.perf_counter()
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    print(f"model {path} loaded in {time.perf_counter() - t0:.1f}s on {model.device}")

    prompts = [format_prompt(tokenizer, q) for q in questions]
    t0 = time.perf_counter()
    if args.reuse:
        # Re-select from an earlier run's measurements (same candidates, same order).
        rows = [json.loads(line) for line in args.reuse.read_text().splitlines() if line.strip()]
        if [r["question"] for r in rows] != questions:
            raise SystemExit(f"{args.reuse}: questions differ from {args.candidates}")
        greedy_texts = [r["greedy"] for r in rows]
        samples = [r["samples"] for r in rows]
        if {len(s) for s in samples} != {args.samples}:
            raise SystemExit(f"{args.reuse}: not {args.samples} samples per question")
    else:
        greedy_texts, samples = measure(
            model,
            tokenizer,
            prompts,
            samples=args.samples,
            greedy=True,
            args=args,
            seed=args.seed,
            desc=f"greedy + T={args.temperature} x{args.samples}",
        )
    # Scored here (not stored) so that a changed checker applies to reused measurements too.
    greedy_ok = [is_correct(t, a) for t, a in zip(greedy_texts, answers, strict=True)]
    t1_acc = accuracy(samples, answers)
    measure_s = time.perf_counter() - t0

    n = len(candidates)
    idx_ok = [i for i in range(n) if greedy_ok[i]]
    idx_bad = [i for i in range(n) if not greedy_ok[i]]

    def mean(xs: list[float]) -> float:
        return statistics.fmean(xs) if xs else float("nan")

    print(f"\n== all {n} candidates ({measure_s:.0f}s of generation) ==")
    print(f"greedy accuracy            {pct(len(idx_ok) / n)}  ({len(idx_ok)}/{n})")
    print(f"T={args.temperature} accuracy (x{args.samples})     {pct(mean(t1_acc))}")
    print(f"  on greedy-correct        {pct(mean([t1_acc[i] for i in idx_ok]))}")
    print(f"  on greedy-wrong          {pct(mean([t1_acc[i] for i in idx_bad]))}")
    hist = {
        k: sum(round(t1_acc[i] * args.samples) == k for i in idx_ok)
        for k in range(args.samples + 1)
    }
    print(f"greedy-correct questions by #correct of {args.samples} samples: {hist}")

    selected = [i for i in idx_ok if t1_acc[i] <= args.max_t1_acc + 1e-9]
    rng = random.Random(args.seed)
    shuffled = selected[:]
    rng.shuffle(shuffled)
    n_eval = round(len(selected) * args.eval_fraction)
    eval_idx = sorted(shuffled[:n_eval])
    train_idx = sorted(shuffled[n_eval:])
    print(f"\n== selection: greedy-correct and T=1 accuracy <= {args.max_t1_acc} ==")
    print(f"selected {len(selected)} -> train {len(train_idx)}, eval {len(eval_idx)}")
    print(
        f"selected: greedy 100.0% (by construction), T=1 on the selection samples "
        f"{pct(mean([t1_acc[i] for i in selected]))}"
    )
    print(
        f"eval:     greedy 100.0% (by construction), T=1 on the selection samples "
        f"{pct(mean([t1_acc[i] for i in eval_idx]))}"
    )

    confirm: list[float] = []
    if args.confirm_samples and eval_idx:
        _, fresh = measure(
            model,
            tokenizer,
            [prompts[i] for i in eval_idx],
            samples=args.confirm_samples,
            greedy=False,
            args=args,
            seed=args.seed + 1,
            desc=f"eval re-sample x{args.confirm_samples}",
        )
        confirm = accuracy(fresh, [answers[i] for i in eval_idx])
        print(
            f"eval:     T=1 on fresh samples (seed {args.seed + 1}, x{args.confirm_samples}) "
            f"{pct(mean(confirm))}   <- unbiased estimate of the pre-training T=1 accuracy"
        )
        print(f"eval:     headroom to greedy {100 * (1 - mean(confirm)):.1f} points")

    if args.measurements:
        args.measurements.parent.mkdir(parents=True, exist_ok=True)
        with open(args.measurements, "w") as fh:
            for i in range(n):
                row = {
                    "question": questions[i],
                    "answers": answers[i],
                    "greedy": greedy_texts[i],
                    "greedy_correct": greedy_ok[i],
                    "t1_acc": t1_acc[i],
                    "samples": samples[i],
                    "split": "eval" if i in eval_idx else "train" if i in train_idx else None,
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"measurements written to {args.measurements}")

    if args.write:
        # Training questions carry their answers too (labels travel with the prompts): PowerFlow and
        # the label-free baselines never read them; GRPO's verifier reward does.
        for path, indices in ((FACTUAL_TRAIN, train_idx), (FACTUAL_EVAL, eval_idx)):
            with open(path, "w") as fh:
                for i in indices:
                    fh.write(
                        json.dumps(
                            {"question": questions[i], "answers": answers[i]}, ensure_ascii=False
                        )
                        + "\n"
                    )
        print(f"wrote {FACTUAL_TRAIN} ({len(train_idx)}) and {FACTUAL_EVAL} ({len(eval_idx)})")


if __name__ == "__main__":
    main()
