r"""A miniature replication of the PowerFlow paper's reasoning results (Chen et al. 2026,
arXiv:2603.18363), on CPU.

1. A tiny Llama (2 layers, hidden 64) is pre-trained here, once, on the synthetic step-by-step task
   of :mod:`gfnlm.tasks.synthetic_reasoning` with *noisy* solutions (wrong running sums, early
   stops), and cached as a Hugging Face folder under the gfnlm cache (``$GFNLM_CACHE`` or
   ``~/.cache/gfnlm``). Its most likely solution is right far more often than a T = 1 sample.
2. Every method is trained from it by the gfnlm trainer with the same budget (steps, prompts per
   step, rollouts per prompt, learning rate, max tokens), starting from its shipped config in
   ``configs/`` with the task's reward functions; no answer is used except by GRPO (its verifier)
   and the evaluation.
3. Evaluation on held-out questions: avg@16 at T = 1, maj@16, pass@16, mean length, by the task's
   own scorer; the inference-time baselines (low temperature T = 1/α, power sampling by MH,
   Power-SMC at two particle counts) sample the base model. Each evaluation's wall-clock per
   question (16 samples) is recorded, and every run's training time: the cost table sets the
   inference-time methods' per-question price against a trained method's one-off training.

Outputs: ``benchmarks/out/reasoning_replication/`` (per-run JSON, ``runs.csv``, ``curves.csv``,
``table.md``, ``cost_table.md``), ``docs/img/reasoning_curves.png`` / ``.csv``, and the tables in
the Benchmarks pages (``docs/benchmarks/``) between the ``reasoning_replication`` markers (every
method) and the ``reasoning_costs`` markers (the methods of the run, ``--only`` included).
Finished runs are kept and skipped on a re-run.

    python benchmarks/reasoning_replication.py [--seeds 0 1 2] [--jobs 2] [--only PowerFlow GRPO]
    python benchmarks/reasoning_replication.py --smollm2 [--seeds 0] \
        [--reuse-runs 'runs/seed{seed}']
                                          # the SmolLM2 comparison
    python benchmarks/reasoning_replication.py --forks [--seeds 0 1 2] [--jobs 2]
                                          # the forks task: sequence- vs token-level sharpening
    python benchmarks/reasoning_replication.py --forks --sum-probe 4000 [--seeds 1234]
                                          # when the forks base learns to add (see pretrain)

``--forks`` runs the same comparison on :mod:`gfnlm.tasks.synthetic_forks` (the same questions and
scorer; pre-training solutions that take a common ``guess`` route with many wrong continuations or
a rarer ``work`` route with the one right one), under ``benchmarks/out/forks_replication/``, with
the exact comparison of T = 1/α and p^α on the enumerable model first, a curves plot
(forks_curves) in docs/img and the tables between the ``forks_replication`` markers.
"""

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import attrs
import torch
from docs_page import write_between_markers
from tqdm.auto import tqdm

from gfnlm.contracts.registry import build
from gfnlm.evaluation.exact import exact_fork_comparison
from gfnlm.models.loading import default_cache_dir, save_random_llama
from gfnlm.tasks import synthetic_forks as forks
from gfnlm.tasks import synthetic_reasoning as task

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "reasoning_replication"
DOCS_IMG = REPO / "docs" / "img"

# The task and the base model.
ERROR_RATE, STOP_RATE = 0.12, 0.12
TERMS = (3, 6)  # the questions' chain lengths (min, max)
MODEL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 4,
    "intermediate_size": 128,
    "max_positions": 96,
}
PRETRAIN = {"steps": 1500, "batch": 32, "lr": 3e-3, "seed": 1234}
# The shared training budget (every method).
BUDGET = {
    "train.steps": 60,
    "train.prompts_per_step": 8,
    "sampling.samples_per_prompt": 8,
    "sampling.max_new_tokens": 32,
    "train.lr": 3e-4,
    "train.updates_per_batch": 1,
    "train.minibatch_size": 0,
    "train.grad_clip": 1.0,
}
EVAL_QUESTIONS, EVAL_K, EVAL_EVERY = 48, 16, 15
ALPHA = 4.0

# method → (config file, overrides beyond the budget). Every run uses the chain_sum task, and the
# baselines' rewards grade or compare answers through it (gfnlm.tasks.rewards with the run's task).
TASK = ["task.name=chain_sum"]
METHODS = {
    "PowerFlow": ("default.yaml", ["target.options.alpha=4.0"]),
    "TB-traj": ("tb_traj.yaml", ["target.options.alpha=4.0"]),
    "TB-token": ("tb_token.yaml", ["target.options.alpha=4.0"]),
    "RL-traj": ("rl_traj.yaml", []),
    "TTRL": ("ttrl.yaml", ["target.options.reward=gfnlm.tasks.rewards:majority_vote"]),
    "EMPO": ("empo.yaml", ["target.options.reward=gfnlm.tasks.rewards:answer_cluster_share"]),
    "Intuitor": ("intuitor.yaml", []),
    "RENT": ("rent.yaml", []),
    "EM": ("em.yaml", []),
    "GRPO": ("ttrl.yaml", ["target.options.reward=gfnlm.tasks.rewards:verifier"]),
    # Dr. GRPO's loss shape: per-token losses summed and divided by B × L_max, a constant
    "Dr. GRPO": (
        "ttrl.yaml",
        [
            "target.options.reward=gfnlm.tasks.rewards:verifier",
            "objective.options.loss_type=dr_grpo",
            f"objective.options.max_completion_length={BUDGET['sampling.max_new_tokens']}",
        ],
    ),
}
CURVE_METHODS = ("PowerFlow", "TB-traj", "TB-token", "RL-traj")
SUITE = {"name": "tiny"}  # tiny (chain sum), forks or smollm2
POWER_SMC_PARTICLES = (4, 16)
POWER_SMC = {f"Power-SMC (N={n})": n for n in POWER_SMC_PARTICLES}  # method → particles
SAMPLING_BASELINES = ("Base", "Low-temp", "Power sampling", *POWER_SMC)
TABLE_ORDER = (
    "Base",
    "Low-temp",
    "Power sampling",
    *POWER_SMC,
    "PowerFlow",
    "TB-traj",
    "TB-token",
    "RL-traj",
    "TTRL",
    "EMPO",
    "Intuitor",
    "RENT",
    "EM",
    "GRPO",
    "Dr. GRPO",
)
SWEEP_ALPHAS = (1.0, 2.0, 4.0, 6.0)
POWER_MH = {"block_size": 16, "mh_steps": 3}

# The smaller comparison on the real SmolLM2 default task (configs/default.yaml: its budget, its
# evaluation; each method swaps only the target/objective, as its own config in configs/ does).
SMOL_METHODS = {
    "PowerFlow": [],
    "TB-traj": ["objective.name=tb", "logz.name=scalar", "train.logz_lr=0.1"],
    "TTRL": [
        "target.name=reward",
        "target.options.reward=gfnlm.tasks.rewards:majority_vote",
        "objective.name=grpo",
    ],
    "GRPO": [
        "target.name=reward",
        "target.options.reward=gfnlm.tasks.rewards:factual_verifier",
        "objective.name=grpo",
    ],
}
SMOL_ORDER = ("Base", "Low-temp", "TB-traj", "TTRL", "GRPO", "PowerFlow")


# The forks suite: the chain-sum questions and scorer, pre-training solutions of
# gfnlm.tasks.synthetic_forks (PowerFlow at α = 2 and 4; the length-collapse studies TB-token and
# RL-traj are left out).
FORKS_OUT = REPO / "benchmarks" / "out" / "forks_replication"
FORKS_ORDER = (
    "Base",
    "Low-temp",
    "Power sampling",
    *POWER_SMC,
    "PowerFlow",
    "TB-traj",
    "TTRL",
    "EMPO",
    "Intuitor",
    "RENT",
    "EM",
    "GRPO",
    "Dr. GRPO",
)
FORKS_CURVES = ("PowerFlow", "TB-traj", "TTRL", "EM", "GRPO")
FORKS_SWEEP = (2.0, 4.0)
EXACT_ALPHAS = (2.0, 4.0)
# The forks base model's pre-training is a curriculum of two phases, each annealed by its own
# one-cycle schedule: `clean_steps` of work solutions only (it learns to add), then the rest of the
# 35/65 mixture at a lower peak lr `mixture_lr` (it learns to guess more often than it works without
# unlearning the sums). Learning the sums is a sudden drop from a plateau (0.33 nats/token, the loss
# of a model that copies every digit but draws the sums) whose timing varies with the seed, so the
# work phase is checked on held-out solutions and repeated (at most `work_cycles` times) until its
# running sums are right at least `min_sum_accuracy` of the time.
FORKS_PRETRAIN = {
    "steps": 4000,
    "clean_steps": 1500,
    "mixture_lr": 1e-3,
    "work_cycles": 3,
    "min_sum_accuracy": 0.95,
}
FORKS_TERMS = (2, 4)

CHAIN_SUM = build("task", "chain_sum")  # how the synthetic task's prompts are formatted and graded


def use_forks_suite() -> None:
    """Point the module's settings at the forks suite (the main process and each worker call
    this)."""
    global OUT, CURVE_METHODS, TABLE_ORDER, SWEEP_ALPHAS, TERMS
    SUITE["name"] = "forks"
    TERMS = FORKS_TERMS
    OUT, CURVE_METHODS, TABLE_ORDER, SWEEP_ALPHAS = (
        FORKS_OUT,
        FORKS_CURVES,
        FORKS_ORDER,
        FORKS_SWEEP,
    )
    PRETRAIN.update(FORKS_PRETRAIN)


# -------------------------------------------------------------------------------------------- data
def write_prompt_files(directory: Path) -> tuple[Path, Path]:
    """Training questions (no answers) and held-out questions with answers, disjoint."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2024)
    seen: set[str] = set()
    questions = []
    while len(questions) < 512 + EVAL_QUESTIONS:
        q = task.make_question(rng, *TERMS)
        if q not in seen:
            seen.add(q)
            questions.append(q)
    train, evaluation = directory / "train.jsonl", directory / "eval.jsonl"
    _write_if_changed(
        train, "".join(json.dumps({"question": q}) + "\n" for q in questions[EVAL_QUESTIONS:])
    )
    _write_if_changed(
        evaluation,
        "".join(
            json.dumps({"question": q, "answers": [task.solve(q)]}) + "\n"
            for q in questions[:EVAL_QUESTIONS]
        ),
    )
    return train, evaluation


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic, and only when the content differs (workers call this concurrently)."""
    if path.is_file() and path.read_text() == text:
        return
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


# -------------------------------------------------------------------------------------- base model
def base_model_dir() -> Path:
    """The pre-trained tiny model (trained and cached on first use; the name holds every setting of
    the pre-training, so a change trains a new one)."""
    shape = f"h{MODEL['hidden_size']}-l{MODEL['num_layers']}-n{PRETRAIN['steps']}"
    if SUITE["name"] == "forks":
        target = default_cache_dir() / (
            f"forks-tiny-w{forks.WORK_RATE}-t{TERMS[0]}{TERMS[1]}"
            f"-c{PRETRAIN['clean_steps']}x{PRETRAIN['work_cycles']}"
            f"-m{PRETRAIN['mixture_lr']:g}-i{MODEL['intermediate_size']}-{shape}"
        )
    else:
        target = default_cache_dir() / f"reasoning-tiny-e{ERROR_RATE}-s{STOP_RATE}-{shape}"
    if (target / "pretrain.json").is_file():
        return target
    pretrain(target)
    return target


def pretraining_phases() -> list[tuple[str, int, float]]:
    """The pre-training curriculum: (solutions, steps, peak lr) of each phase, each phase annealed
    by its own one-cycle schedule. Chain sum: one phase of noisy solutions. Forks: ``work``
    solutions only (where the model learns to add), then the 35/65 mixture of routes at a lower
    peak lr."""
    if SUITE["name"] != "forks":
        return [("noisy", PRETRAIN["steps"], PRETRAIN["lr"])]
    return [
        ("work", PRETRAIN["clean_steps"], PRETRAIN["lr"]),
        ("mixture", PRETRAIN["steps"] - PRETRAIN["clean_steps"], PRETRAIN["mixture_lr"]),
    ]


def pretraining_solution(question: str, rng: random.Random, solutions: str) -> str:
    """One solution of a pre-training phase's kind (see :func:`pretraining_phases`)."""
    if solutions == "work":
        return forks.fork_solution(question, rng, 1.0)
    if solutions == "mixture":
        return forks.fork_solution(question, rng, forks.WORK_RATE)
    if solutions == "noisy":
        return task.noisy_solution(question, rng, ERROR_RATE, STOP_RATE)
    raise ValueError(f"solutions={solutions!r}: must be work, mixture or noisy")


def solution_batch(tokenizer, rng: random.Random, solutions: str, size: int):
    """``size`` random questions with a solution each, as prompt + solution + EOS token ids, labels
    (-100 on the prompt and the padding) and the attention mask."""
    from gfnlm.tasks.prompt_files import format_prompt

    rows, targets = [], []
    for _ in range(size):
        q = task.make_question(rng, *TERMS)
        prompt = tokenizer(format_prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
        answer = tokenizer(pretraining_solution(q, rng, solutions), add_special_tokens=False)[
            "input_ids"
        ] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        targets.append([-100] * len(prompt) + answer)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    mask = (labels != -100) | (
        torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    )
    return ids, labels, mask


def held_out_sums(model, tokenizer, questions: int = 256) -> tuple[float, float]:
    """On held-out ``work`` solutions, teacher-forced: the share of running sums (the token after
    each ``=``) that the model ranks first (1.0 for a model that adds, about 0.1 for one that
    guesses) and their mean loss in nats (ln 10 ≈ 2.30 for a uniform guess)."""
    ids, labels, mask = solution_batch(tokenizer, random.Random(99), "work", questions)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    is_sum = ids[:, :-1] == tokenizer.convert_tokens_to_ids("=")
    targets = labels[:, 1:][is_sum]
    accuracy = (logits[is_sum].argmax(-1) == targets).float().mean()
    return float(accuracy), float(torch.nn.functional.cross_entropy(logits[is_sum], targets))


def train_phase(
    model,
    tokenizer,
    optimiser,
    rng: random.Random,
    solutions: str,
    steps: int,
    lr: float,
    losses: list[float],
    schedule_steps: int | None = None,
    report=None,
) -> None:
    """Next-token training on ``steps`` batches of the phase's solutions (loss on the solution and
    EOS only), under a one-cycle schedule peaking at ``lr`` over ``schedule_steps`` (default
    ``steps``); ``report(step)`` is called every 100 steps when given."""
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, lr, total_steps=schedule_steps or steps, pct_start=0.05
    )
    model.train()
    bar = tqdm(range(steps), desc=f"pre-train base ({solutions})", unit="step")
    for step in bar:
        if report and step % 100 == 0:
            report(step)
        ids, labels, mask = solution_batch(tokenizer, rng, solutions, PRETRAIN["batch"])
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{statistics.mean(losses[-50:]):.3f}")
    model.eval()


def fresh_model(directory: Path, seed: int):
    """The suite's tokenizer and a randomly initialised model of ``MODEL``'s shape, saved into
    ``directory``; returns (tokenizer, model, optimiser)."""
    from transformers import AutoModelForCausalLM

    from gfnlm.models.loading import load_tokenizer

    task.save_tokenizer(directory / "tokenizer", forks.ROUTES if SUITE["name"] == "forks" else ())
    save_random_llama(directory, directory / "tokenizer", seed=seed, **MODEL)
    tokenizer = load_tokenizer(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    optimiser = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.01)
    return tokenizer, model, optimiser


def probe_sum_learning(schedule_steps: int, seed: int, steps: int = 1500) -> None:
    """When does the model learn to add? Pre-train a fresh base (the suite's model) on ``work``
    solutions only for ``steps`` steps of a one-cycle schedule ``schedule_steps`` long (e.g. 1,500
    of 4,000), printing the held-out running sums (:func:`held_out_sums`) every 100 steps."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        tokenizer, model, optimiser = fresh_model(Path(directory), seed)
        rng = random.Random(seed)
        torch.manual_seed(seed)

        def report(step: int) -> None:
            model.eval()
            accuracy, loss = held_out_sums(model, tokenizer)
            model.train()
            tqdm.write(
                f"seed {seed} schedule {schedule_steps} step {step:5d}: held-out sums ranked first "
                f"{100 * accuracy:5.1f} %, sum loss {loss:.3f} nats"
            )

        train_phase(
            model,
            tokenizer,
            optimiser,
            rng,
            "work",
            steps,
            PRETRAIN["lr"],
            [],
            schedule_steps,
            report,
        )
        report(steps)


def pretrain(target: Path) -> None:
    """Pre-train the base model through :func:`pretraining_phases`; a ``work`` phase is repeated
    until its held-out running sums are right (:func:`held_out_sums`), at most ``work_cycles``
    times."""
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    tokenizer, model, optimiser = fresh_model(work, PRETRAIN["seed"])
    rng = random.Random(PRETRAIN["seed"])
    torch.manual_seed(PRETRAIN["seed"])
    started, losses, record = time.perf_counter(), [], {}
    for solutions, steps, lr in pretraining_phases():
        train_phase(model, tokenizer, optimiser, rng, solutions, steps, lr, losses)
        if solutions == "work":
            accuracies = [held_out_sums(model, tokenizer)[0]]
            while (
                accuracies[-1] < PRETRAIN["min_sum_accuracy"]
                and len(accuracies) < PRETRAIN["work_cycles"]
            ):
                train_phase(model, tokenizer, optimiser, rng, solutions, steps, lr, losses)
                accuracies.append(held_out_sums(model, tokenizer)[0])
            record["work_phase_sum_accuracy"] = accuracies
            if accuracies[-1] < PRETRAIN["min_sum_accuracy"]:
                raise SystemExit(
                    f"pre-training: after {len(accuracies)} work phases of {steps} steps the model "
                    f"ranks the right running sum first {accuracies[-1]:.0%} of the time (needs "
                    f"{PRETRAIN['min_sum_accuracy']:.0%}): it has not learnt to add"
                )
    if SUITE["name"] == "forks":
        record["final_sum_accuracy"] = held_out_sums(model, tokenizer)[0]
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    shutil.rmtree(work / "tokenizer")
    data = (
        {"work_rate": forks.WORK_RATE, "terms": TERMS}
        if SUITE["name"] == "forks"
        else {"error_rate": ERROR_RATE, "stop_rate": STOP_RATE}
    )
    (work / "pretrain.json").write_text(
        json.dumps(
            {
                **data,
                **MODEL,
                **PRETRAIN,
                **record,
                "final_loss": statistics.mean(losses[-100:]),
                "seconds": time.perf_counter() - started,
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)


# -------------------------------------------------------------------------------------- evaluation
def evaluate_task(policy, prompts, sampler, k: int, batch_questions: int = 16) -> dict[str, float]:
    """avg@k, maj@k (majority of the extracted answers; no answer counts as wrong), pass@k and
    mean length (tokens, EOS counted) of ``sampler``'s k responses per question, graded by the
    chain_sum task against the gold answers that travel with the prompts; ``work_route``: the share
    of responses that open with the forks task's ``work`` route; ``work_right``: the share of those
    whose answer is right (0 when there are none)."""
    correct, majority, lengths, truncated, work_route, work_right = [], [], [], [], [], []
    for start in range(0, len(prompts), batch_questions):
        indices = list(range(start, min(start + batch_questions, len(prompts))))
        rollouts = sampler.sample(prompts.batch(indices), k)
        texts = rollouts.response_text
        lengths += rollouts.lengths.tolist()
        truncated += (~rollouts.ended_with_eos).tolist()
        work_route += [forks.route_of(t) == "work" for t in texts]
        for row, i in enumerate(indices):
            gold, group = prompts.answers[i], texts[row * k : (row + 1) * k]
            correct.append([CHAIN_SUM.is_correct(t, gold) for t in group])
            work_right += [
                right
                for t, right in zip(group, correct[-1], strict=True)
                if forks.route_of(t) == "work"
            ]
            votes = Counter(a for a in map(CHAIN_SUM.answer_key, group) if a)
            majority.append(bool(votes) and votes.most_common(1)[0][0] in gold)
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))
    return {
        "avg": mean([mean(c) for c in correct]),
        "maj": mean(majority),
        "pass": mean([any(c) for c in correct]),
        "length": mean(lengths),
        "truncated": mean(truncated),
        "work_route": mean(work_route),
        "work_right": mean(work_right),
    }


def load_eval_prompts(tokenizer, eval_file: Path):
    from gfnlm.tasks.prompts import PromptSet

    return PromptSet.load(
        str(eval_file), "eval", tokenizer, 256, require_answers=True, task=CHAIN_SUM
    )


def make_trainer_class():
    """The gfnlm Trainer, evaluating with the task's scorer (its own evaluation scores the factual
    task); everything else (sampling, targets, objectives, updates) is the trainer's own."""
    from gfnlm.samplers.hf import HFSampler
    from gfnlm.training.trainer import Trainer

    class ReplicationTrainer(Trainer):
        def __init__(self, config, eval_file: Path) -> None:
            super().__init__(config, progress=False)
            self.task_prompts = load_eval_prompts(self.policy.tokenizer, eval_file)
            self.curve: list[dict[str, float]] = []

        def evaluate_cached(self, step: int) -> dict[str, float]:
            sampler = HFSampler(
                temperature=1.0, top_p=1.0, max_new_tokens=self.config.sampling.max_new_tokens
            )
            sampler.setup(self.policy)
            with torch.random.fork_rng():
                torch.manual_seed(self.config.train.seed + 1_000_003)
                started = time.perf_counter()
                scores = evaluate_task(self.policy, self.task_prompts, sampler, EVAL_K)
                result = {
                    "step": step,
                    **scores,
                    "eval_seconds": time.perf_counter() - started,
                }
            self.curve.append(result)
            return result

    return ReplicationTrainer


def run_name(method: str, seed: int, alpha: float | None) -> str:
    suffix = "" if alpha is None else f"_alpha{alpha:g}"
    return f"{method.replace(' ', '_')}{suffix}_s{seed}"


def run_one(
    method: str,
    seed: int,
    alpha: float | None,
    files: tuple[Path, Path],
    probe: list[str] | None = None,
) -> dict:
    """Train (or sample, for the inference-time baselines) one method with one seed; returns the
    final metrics (and the curve). ``probe``: extra overrides for an investigation run, whose
    result also holds a few responses of the final policy."""
    torch.set_num_threads(1)
    model_dir = base_model_dir()
    train_file, eval_file = files
    started = time.perf_counter()
    if method in SAMPLING_BASELINES:
        return {
            "method": method,
            "seed": seed,
            **sample_baseline(method, seed, model_dir, eval_file),
            "seconds": time.perf_counter() - started,
        }
    from gfnlm.training.config import load_config

    config_file, extra = METHODS[method]
    out_dir = OUT / ("probes" if probe else "runs") / run_name(method, seed, alpha)
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = [f"{k}={v}" for k, v in BUDGET.items()] + [
        f"model.path={model_dir}",
        "model.lora=false",
        f"data.train={train_file}",
        "data.eval=''",
        f"train.seed={seed}",
        "train.threads=1",
        "train.device=cpu",
        f"train.out_dir={out_dir}",
        f"train.eval_every={EVAL_EVERY if (method in CURVE_METHODS or alpha is not None) else 0}",
        "train.save_every=0",
        *TASK,
        *extra,
    ]
    if alpha is not None:
        overrides.append(f"target.options.alpha={alpha}")
    config = load_config(REPO / "configs" / config_file, overrides + list(probe or []))
    trainer = make_trainer_class()(config, eval_file)
    trainer.train()
    final = trainer.curve[-1]
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    seconds = time.perf_counter() - started
    result = {
        "method": method,
        "seed": seed,
        "alpha": alpha,
        **{k: v for k, v in final.items() if k != "step"},
        "curve": trainer.curve,
        "seconds": seconds,
        # the run less its evaluations (and the model's loading): what training itself cost
        "train_seconds": seconds - sum(point["eval_seconds"] for point in trainer.curve),
    }
    if probe:
        from gfnlm.samplers.hf import HFSampler

        sampler = HFSampler(max_new_tokens=config.sampling.max_new_tokens)
        sampler.setup(trainer.policy)
        rollouts = sampler.sample(trainer.task_prompts.batch([0, 1, 2]), 4)
        result["samples"] = [
            f"{q} -> {t}" for q, t in zip(rollouts.prompt_text, rollouts.response_text, strict=True)
        ]
    return result


def run_smollm2(method: str, seed: int) -> dict:
    """One method of the SmolLM2 comparison: configs/default.yaml with the method's components;
    Base and Low-temp evaluate the base model as the trainer's own evaluation does (same seed)."""
    from gfnlm.evaluation.held_out import evaluate
    from gfnlm.training.config import load_config
    from gfnlm.training.trainer import Trainer

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))  # the cores run_all gave this worker
    torch.set_num_threads(threads)
    started = time.perf_counter()
    out_dir = OUT / "smollm2" / "runs" / f"{method}_s{seed}"
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = [
        f"train.seed={seed}",
        f"train.threads={threads}",
        "train.device=cpu",
        f"train.out_dir={out_dir}",
        *SMOL_METHODS.get(method, []),
    ]
    trainer = Trainer(load_config(REPO / "configs" / "default.yaml", overrides), progress=False)
    cfg = trainer.config
    if method in ("Base", "Low-temp"):
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1_000_003)  # the trainer's evaluation seed
            after = evaluate(
                trainer.policy,
                trainer.eval_prompts,
                cfg.train.eval_samples,
                cfg.sampling.max_new_tokens,
                progress=False,
                temperature=1.0 if method == "Base" else 1.0 / ALPHA,
            ).as_dict()
        before = after
    else:
        base_eval = OUT / "results" / f"smollm2_Base_s{seed}.json"
        if base_eval.is_file():  # the trainer's step-0 evaluation is Base's, same seed: reuse it
            (out_dir / "eval").mkdir(parents=True, exist_ok=True)
            (out_dir / "eval" / "step_000000.json").write_text(
                json.dumps(json.loads(base_eval.read_text())["eval"])
            )
        results = trainer.train()
        before, after = results["before"], results["after"]
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return {**smollm2_record(method, seed, before, after), "seconds": time.perf_counter() - started}


def smollm2_record(method: str, seed: int, before: dict, after: dict) -> dict:
    """One SmolLM2-suite result from the trainer's evaluations (gfnlm.evaluation.held_out) before
    and after."""
    return {
        "method": method,
        "seed": seed,
        "alpha": None,
        "avg": after["accuracy_t1"],
        "maj": after["majority_at_k"],
        "pass": after["pass_at_k"],
        "length": after["mean_length"],
        "greedy": after["greedy_accuracy"],
        "truncated": 0.0,
        "before_avg": before["accuracy_t1"],
        "eval": after,
    }


def adopt_default_run(seed: int, run_dir: Path) -> list[str]:
    """Base and PowerFlow results of the SmolLM2 suite from a finished ``gfnlm train
    configs/default.yaml`` run (its step-0 and final evaluations), when its config is the suite's
    PowerFlow config at ``seed`` (thread count, device and output folder aside): the same run, not
    re-paid in CPU time."""
    import yaml

    from gfnlm.training.config import load_config, to_yaml

    def comparable(config) -> dict:
        tree = yaml.safe_load(to_yaml(config))
        for key in ("out_dir", "threads", "device"):
            tree["train"].pop(key, None)
        return tree

    wanted = comparable(load_config(REPO / "configs" / "default.yaml", [f"train.seed={seed}"]))
    if not (run_dir / "config.yaml").is_file():
        raise SystemExit(f"--reuse-runs: {run_dir / 'config.yaml'} does not exist")
    if comparable(load_config(run_dir / "config.yaml")) != wanted:
        raise SystemExit(
            f"--reuse-runs: {run_dir} was not run with configs/default.yaml at train.seed={seed}"
        )
    evals = sorted((run_dir / "eval").glob("step_*.json"))
    final = f"step_{wanted['train']['steps']:06d}.json"
    if not evals or evals[0].name != "step_000000.json" or evals[-1].name != final:
        raise SystemExit(f"--reuse-runs: {run_dir / 'eval'} lacks step_000000.json or {final}")
    before = json.loads(evals[0].read_text())
    adopted = []
    for method, result in (("Base", before), ("PowerFlow", json.loads(evals[-1].read_text()))):
        path = result_path((method, seed, None))
        if path.is_file():
            continue
        record = {
            **smollm2_record(method, seed, before, result),
            "seconds": None,
            "source": str(run_dir),
        }
        path.write_text(json.dumps(record, indent=1))
        adopted.append(path.stem)
    return adopted


def sample_baseline(method: str, seed: int, model_dir: Path, eval_file: Path) -> dict:
    """Base (T = 1), low temperature (T = 1/α), power sampling (MH, α) and Power-SMC (α, its
    particles) from the base model; ``eval_seconds``: the evaluation's wall-clock."""
    from gfnlm.samplers.hf import HFSampler
    from gfnlm.samplers.power_mh import MHStats, PowerMHSampler
    from gfnlm.samplers.power_smc import PowerSMCSampler, SMCStats
    from gfnlm.training.config import ModelConfig
    from gfnlm.training.policy import CausalLMPolicy

    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir), lora=False), model_dir, torch.device("cpu")
    )
    prompts = load_eval_prompts(policy.tokenizer, eval_file)
    max_tokens = BUDGET["sampling.max_new_tokens"]
    extra: dict[str, float] = {}
    if method == "Power sampling" or method in POWER_SMC:
        if method in POWER_SMC:
            sampler = PowerSMCSampler(
                alpha=ALPHA, particles=POWER_SMC[method], max_new_tokens=max_tokens, seed=seed
            )
            totals = SMCStats()
        else:
            sampler = PowerMHSampler(alpha=ALPHA, max_new_tokens=max_tokens, seed=seed, **POWER_MH)
            totals = MHStats()
        original = sampler.sample
        counted = [f.name for f in attrs.fields(type(totals))]

        def sample_and_count(batch, n):
            rollouts = original(batch, n)
            for field in counted:
                setattr(totals, field, getattr(totals, field) + getattr(sampler.last_stats, field))
            return rollouts

        sampler.sample = sample_and_count
    else:
        sampler = HFSampler(
            temperature=1.0 if method == "Base" else 1.0 / ALPHA,
            top_p=1.0,
            max_new_tokens=max_tokens,
        )
    sampler.setup(policy)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1_000_003)
        started = time.perf_counter()
        result = evaluate_task(policy, prompts, sampler, EVAL_K)
        result["eval_seconds"] = time.perf_counter() - started
    if method == "Power sampling":
        extra = {"acceptance_rate": totals.acceptance_rate, "token_cost": totals.token_cost}
    elif method in POWER_SMC:
        extra = {"resampling_rate": totals.resampling_rate, "token_cost": totals.token_cost}
    return {**result, **extra}


# ----------------------------------------------------------------------------------- orchestration
def jobs_for(
    seeds: list[int], only: list[str] | None, suite: str = "tiny"
) -> list[tuple[str, int, float | None]]:
    """Every (method, seed, α-override) run; the slow power sampling first, the α sweep last."""
    if suite == "smollm2":
        return [(m, s, None) for s in seeds for m in SMOL_ORDER if not only or m in only]
    wanted = [m for m in TABLE_ORDER if not only or m in only]
    wanted.sort(key=lambda m: m != "Power sampling")  # the slowest first
    jobs = [(m, s, None) for s in seeds for m in wanted]
    if not only or "sweep" in only:
        jobs += [("PowerFlow", s, a) for s in seeds for a in SWEEP_ALPHAS if a != ALPHA]
    return jobs


def result_path(job: tuple[str, int, float | None]) -> Path:
    prefix = "smollm2_" if SUITE["name"] == "smollm2" else ""
    return OUT / "results" / f"{prefix}{run_name(*job)}.json"


def claims_dir() -> Path:
    """Where workers claim jobs (one empty file per job), per suite."""
    return OUT / f"claims_{SUITE['name']}"


def work(jobs: list[tuple[str, int, float | None]], files: tuple[Path, Path]) -> None:
    """A worker process: run every job not finished and not claimed by another worker."""
    for job in jobs:
        if result_path(job).is_file():
            continue
        try:
            os.close(os.open(claims_dir() / result_path(job).stem, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        try:
            result = (
                run_smollm2(job[0], job[1]) if SUITE["name"] == "smollm2" else run_one(*job, files)
            )
        except Exception:  # noqa: BLE001 (reported; the other jobs go on)
            traceback.print_exc()
            print(f"FAILED: {run_name(*job)}", flush=True)
            continue
        result_path(job).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)


def run_all(
    jobs: list[tuple[str, int, float | None]], parallel: int, argv: list[str]
) -> list[dict]:
    """``parallel`` worker processes (the cores split between them) share the jobs; finished results
    are kept."""
    (OUT / "results").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(claims_dir(), ignore_errors=True)
    claims_dir().mkdir(parents=True)
    threads = str(max(1, (os.cpu_count() or 1) // parallel))  # the cores split between the workers
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
    }
    workers = []
    for i in range(parallel):
        log = open(OUT / "logs" / f"{SUITE['name']}_worker{i}.log", "w")  # noqa: SIM115 (lives as long as the worker)
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, *argv, "--worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    done = lambda: sum(result_path(j).is_file() for j in jobs)
    bar = tqdm(total=len(jobs), initial=done(), desc="runs", unit="run")
    while any(w.poll() is None for w in workers):
        time.sleep(2)
        bar.update(done() - bar.n)
    bar.close()
    missing = [result_path(j).stem for j in jobs if not result_path(j).is_file()]
    if missing:
        raise SystemExit(f"runs without a result (see {OUT / 'logs'}): {', '.join(missing)}")
    return [json.loads(result_path(j).read_text()) for j in jobs]


# --------------------------------------------------------------------------------------- reporting
def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def method_label(method: str) -> str:
    """A method's name in the tables, with its α or temperature."""
    return {
        "Low-temp": f"Low-temp (T=1/{ALPHA:g})",
        "Power sampling": f"Power sampling (MH, α={ALPHA:g})",
        "PowerFlow": f"PowerFlow (LA-TB, α={ALPHA:g})",
        **{m: f"Power-SMC (α={ALPHA:g}, N={n})" for m, n in POWER_SMC.items()},
        "Dr. GRPO": "Dr. GRPO (GRPO, loss_type=dr_grpo)",
    }.get(method, method)


def route_column(runs: list[dict] | None = None) -> str:
    """The forks suite's extra column: the share of responses that take the ``work`` route
    (its header without ``runs``; empty in the other suites)."""
    if SUITE["name"] != "forks":
        return ""
    if runs is None:
        return " work route % | `work` answers right % |"
    return (
        f" {mean_std([r['work_route'] for r in runs], 100)} |"
        f" {mean_std([r.get('work_right', 0.0) for r in runs], 100)} |"
    )


def main_table(results: list[dict], seeds: list[int]) -> str:
    rows = [
        (
            "| method | avg@16 (T=1) % | maj@16 % | pass@16 % | "
            f"mean length (tokens) |{route_column()}"
        ),
        "|---|---|---|---|---|" + ("---|---|" if route_column() else ""),
    ]
    for method in TABLE_ORDER:
        runs = [r for r in results if r["method"] == method and r.get("alpha") is None]
        if not runs:
            continue
        rows.append(
            f"| {method_label(method)} | {mean_std([r['avg'] for r in runs], 100)} | "
            f"{mean_std([r['maj'] for r in runs], 100)} | "
            f"{mean_std([r['pass'] for r in runs], 100)} | {mean_std([r['length'] for r in runs])} "
            f"|{route_column(runs)}"
        )
    return "\n".join(rows)


def smollm2_table(results: list[dict], seeds: list[int]) -> str:
    rows = [
        f"Seeds {', '.join(map(str, seeds))}; mean ± std over seeds where there are several.\n",
        "| method | avg@8 (T=1) % | maj@8 % | pass@8 % | greedy % | mean length (tokens) |",
        "|---|---|---|---|---|---|",
    ]
    for method in SMOL_ORDER:
        runs = [r for r in results if r["method"] == method]
        if runs:
            rows.append(
                f"| {method_label(method)} | {mean_std([r['avg'] for r in runs], 100)} | "
                f"{mean_std([r['maj'] for r in runs], 100)} | "
                f"{mean_std([r['pass'] for r in runs], 100)} | "
                f"{mean_std([r['greedy'] for r in runs], 100)} | "
                f"{mean_std([r['length'] for r in runs])} |"
            )
    return "\n".join(rows) + "\n"


def sweep_table(results: list[dict]) -> str:
    rows = [
        f"| α | avg@16 (T=1) % | maj@16 % | pass@16 % | mean length |{route_column()}",
        "|---|---|---|---|---|" + ("---|---|" if route_column() else ""),
    ]
    for alpha in SWEEP_ALPHAS:
        runs = [
            r
            for r in results
            if r["method"] == "PowerFlow"
            and (r.get("alpha") == alpha or (alpha == ALPHA and r.get("alpha") is None))
        ]
        if runs:
            rows.append(
                f"| {alpha:g} | {mean_std([r['avg'] for r in runs], 100)} | "
                f"{mean_std([r['maj'] for r in runs], 100)} | "
                f"{mean_std([r['pass'] for r in runs], 100)} | "
                f"{mean_std([r['length'] for r in runs])} |{route_column(runs)}"
            )
    return "\n".join(rows)


def cost_table(results: list[dict]) -> str:
    """Per method of ``results`` (α sweep aside): accuracy, and wall-clock per held-out question
    (its 16 samples; for a trained method, sampling the trained policy at T = 1) and the one-off
    training time, mean ± std over seeds."""
    rows = [
        (
            "| method | avg@16 (T=1) % | maj@16 % | wall-clock per question (s) | "
            "training (s, once) | tokens decoded per token returned |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for method in TABLE_ORDER:
        runs = [r for r in results if r["method"] == method and r.get("alpha") is None]
        if not runs:
            continue
        per_question = [eval_seconds(r) / EVAL_QUESTIONS for r in runs]
        trained = method not in SAMPLING_BASELINES
        rows.append(
            f"| {method_label(method)} | {mean_std([r['avg'] for r in runs], 100)} | "
            f"{mean_std([r['maj'] for r in runs], 100)} | {mean_std(per_question, digits=3)} | "
            f"{mean_std([r['train_seconds'] for r in runs]) if trained else '—'} | "
            f"{mean_std([r['token_cost'] for r in runs]) if 'token_cost' in runs[0] else '1'} |"
        )
    return "\n".join(rows)


def eval_seconds(result: dict) -> float:
    """The final evaluation's wall-clock of a run (a trained method's: its last curve point)."""
    return result["curve"][-1]["eval_seconds"] if "curve" in result else result["eval_seconds"]


def write_curves(results: list[dict]) -> tuple[Path, Path]:
    """Held-out avg@16 and mean length (forks: work-route share) against step (mean ± std over
    seeds) for the curve methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    stem = "forks_curves" if SUITE["name"] == "forks" else "reasoning_curves"
    csv_path, png_path = DOCS_IMG / f"{stem}.csv", DOCS_IMG / f"{stem}.png"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["method", "seed", "step", "avg_at_16", "maj_at_16", "mean_length", "work_route"]
        )
        for r in results:
            if r["method"] in CURVE_METHODS and r.get("alpha") is None:
                for point in r["curve"]:
                    writer.writerow(
                        [
                            r["method"],
                            r["seed"],
                            point["step"],
                            f"{point['avg']:.4f}",
                            f"{point['maj']:.4f}",
                            f"{point['length']:.3f}",
                            f"{point.get('work_route', 0.0):.4f}",
                        ]
                    )
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    # the forks task's routes are equally long: its right panel shows which route the policy takes
    right_key, right_scale = ("work_route", 100) if SUITE["name"] == "forks" else ("length", 1)
    for method in CURVE_METHODS:
        runs = [r for r in results if r["method"] == method and r.get("alpha") is None]
        if not runs:
            continue
        steps = [p["step"] for p in runs[0]["curve"]]
        for axis, key, scale in ((left, "avg", 100), (right, right_key, right_scale)):
            table = [[p[key] * scale for p in r["curve"]] for r in runs]
            mean = [statistics.mean(col) for col in zip(*table, strict=True)]
            std = [
                statistics.stdev(col) if len(col) > 1 else 0.0 for col in zip(*table, strict=True)
            ]
            axis.plot(steps, mean, marker="o", label=method)
            axis.fill_between(
                steps,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                alpha=0.15,
            )
    left.set(xlabel="step", ylabel="held-out avg@16 at T=1 (%)", title="accuracy")
    if SUITE["name"] == "forks":
        right.set(xlabel="step", ylabel="responses opening with 'work' (%)", title="route")
    else:
        right.set(xlabel="step", ylabel="mean response length (tokens)", title="length")
    left.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    return png_path, csv_path


def exact_forks_table() -> str:
    """The exact comparison on the enumerable model of the forks structure
    (gfnlm.tasks.synthetic_forks)."""
    rows = [
        (
            "| α | TV(T=1/α, p^α) | P(right) base | P(right) T=1/α | P(right) p^α | "
            "answer ranked first: base / T=1/α / p^α |"
        ),
        "|---|---|---|---|---|---|",
    ]
    first = lambda answer: "right" if answer == 0 else "a wrong one"
    for alpha in EXACT_ALPHAS:
        e = exact_fork_comparison(alpha)
        rows.append(
            f"| {alpha:g} | {e['tv_low_temp_power']:.3f} | {e['base_right']:.3f} | "
            f"{e['low_temp_right']:.3f} | {e['power_right']:.3f} | {first(e['base_top_answer'])} "
            f"({e['base_top_answer_p']:.3f}) / {first(e['low_temp_top_answer'])} "
            f"({e['low_temp_top_answer_p']:.3f}) / {first(e['power_top_answer'])} "
            f"({e['power_top_answer_p']:.3f}) |"
        )
    e = exact_fork_comparison(EXACT_ALPHAS[0])
    return (
        f"Exact, on the enumerable model of the same structure ({e['vocab_size']} tokens, a route "
        f"token and {e['steps']} step tokens, work rate {e['work_rate']:g}: {e['num_responses']} "
        "responses):\n\n" + "\n".join(rows) + "\n"
    )


def write_outputs(results: list[dict], seeds: list[int]) -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "alpha",
                "seed",
                "avg",
                "maj",
                "pass",
                "length",
                "truncated",
                "seconds",
                "acceptance_rate",
                "token_cost",
            ]
        )
        for r in results:
            writer.writerow(
                [
                    r["method"],
                    r.get("alpha") or "",
                    r["seed"],
                    r["avg"],
                    r["maj"],
                    r["pass"],
                    r["length"],
                    r["truncated"],
                    round(r["seconds"], 1),
                    r.get("acceptance_rate", ""),
                    r.get("token_cost", ""),
                ]
            )
    power_note = sampler_notes(results)
    text = (
        f"Seeds {', '.join(map(str, seeds))}; mean ± std over seeds.\n\n"
        f"{main_table(results, seeds)}{power_note}\n\n"
        f"PowerFlow α sweep (same budget):\n\n{sweep_table(results)}\n"
    )
    (OUT / "table.md").write_text(text)
    return text


def sampler_notes(results: list[dict]) -> str:
    """What power sampling (acceptance) and Power-SMC (resampling) did, when they ran."""
    notes = []
    power = [r for r in results if r["method"] == "Power sampling"]
    if power:
        notes.append(
            f"Power sampling ({POWER_MH['block_size']}-token blocks, {POWER_MH['mh_steps']} MH "
            "steps per block): acceptance rate "
            f"{mean_std([r['acceptance_rate'] for r in power], 100)} %, "
            f"{mean_std([r['token_cost'] for r in power])} tokens generated per token returned."
        )
    for method, particles in POWER_SMC.items():
        smc = [r for r in results if r["method"] == method]
        if smc:
            notes.append(
                f"Power-SMC with {particles} particles (systematic resampling at ESS < N/2, no "
                f"bridge): {mean_std([r['resampling_rate'] for r in smc], 100)} % of the ESS "
                "checks resampled."
            )
    return "".join(f"\n\n{note}" for note in notes)


def write_costs(results: list[dict], seeds: list[int], jobs: int, into_docs: bool) -> str:
    """The cost table of ``results`` (run ``jobs`` at a time) to ``cost_table.md`` and, with
    ``into_docs``, between the suite's ``*_costs`` markers in docs/benchmarks/."""
    text = (
        f"Seeds {', '.join(map(str, seeds))}; mean ± std over seeds. Wall-clock on one torch "
        f"thread per run, {jobs} run(s) at a time; per question = the evaluation's time / "
        f"{EVAL_QUESTIONS} questions ({EVAL_K} samples each).\n\n"
        f"{cost_table(results)}{sampler_notes(results)}\n"
    )
    (OUT / "cost_table.md").write_text(text)
    if into_docs:
        write_between_markers(
            text, "forks_costs" if SUITE["name"] == "forks" else "reasoning_costs"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs at a time (the cores split between them)"
    )
    parser.add_argument(
        "--only", nargs="+", help=f"methods among {', '.join(TABLE_ORDER)} and 'sweep'"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks/")
    parser.add_argument(
        "--forks",
        action="store_true",
        help="the forks task (gfnlm.tasks.synthetic_forks): sequence-level vs per-token sharpening",
    )
    parser.add_argument(
        "--smollm2",
        action="store_true",
        help=f"the smaller comparison on the SmolLM2 default task ({', '.join(SMOL_ORDER)})",
    )
    parser.add_argument(
        "--probe",
        metavar="METHOD",
        help="one investigation run (first seed, in this process): "
        "its curve and a few responses; with --set overrides",
    )
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for --probe"
    )
    parser.add_argument(
        "--reuse-runs",
        metavar="PATTERN",
        help="with --smollm2: take Base and PowerFlow from finished default runs, e.g. "
        "'runs/seed{seed}' (checked to be configs/default.yaml at that seed)",
    )
    parser.add_argument(
        "--sum-probe",
        type=int,
        metavar="SCHEDULE_STEPS",
        help="with --forks: pre-train a fresh base on work solutions for 1,500 steps of a "
        "one-cycle schedule this long and print its held-out running sums every 100 steps "
        "(seed: --seeds)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.forks and args.smollm2:
        parser.error("--forks and --smollm2: choose one suite")
    if args.sum_probe and not args.forks:
        parser.error("--sum-probe: only with --forks")
    if args.forks:
        use_forks_suite()
    if args.sum_probe:
        for seed in args.seeds:
            probe_sum_learning(args.sum_probe, seed)
        return 0
    allowed = SMOL_ORDER if args.smollm2 else (*TABLE_ORDER, "sweep")
    unknown = sorted(set(args.only or []) - set(allowed))
    if unknown:
        parser.error(f"--only {unknown[0]!r}: must be one of {', '.join(allowed)}")
    if args.reuse_runs and not args.smollm2:
        parser.error("--reuse-runs: only with --smollm2 (it reads runs of configs/default.yaml)")
    SUITE["name"] = "smollm2" if args.smollm2 else SUITE["name"]
    files = write_prompt_files(OUT / "data")
    jobs = jobs_for(args.seeds, args.only, SUITE["name"])
    if args.probe:
        result = run_one(
            args.probe, args.seeds[0], None, files, probe=["train.eval_every=5", *args.set]
        )
        (OUT / "probes").mkdir(parents=True, exist_ok=True)
        name = "_".join([args.probe, *args.set]).replace("/", "-").replace("=", "-")
        (OUT / "probes" / f"{name}.json").write_text(json.dumps(result, indent=1))
        for point in result["curve"]:
            print(
                f"step {point['step']:3d}  avg@16 {100 * point['avg']:5.1f} %  length "
                f"{point['length']:5.1f}"
            )
        print("\n".join(result["samples"]))
        return 0
    if args.worker:
        work(jobs, files)
        return 0
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    if args.smollm2:
        (OUT / "results").mkdir(parents=True, exist_ok=True)
        for seed in args.seeds if args.reuse_runs else []:
            run_dir = Path(args.reuse_runs.format(seed=seed))
            for name in adopt_default_run(seed, run_dir):
                print(f"adopted {name} from {run_dir}")
        child_argv = [
            "--smollm2",
            "--seeds",
            *map(str, args.seeds),
            *(["--only", *args.only] if args.only else []),
        ]
        text = smollm2_table(run_all(jobs, args.jobs, child_argv), args.seeds)
        (OUT / "smollm2_table.md").write_text(text)
        print(text)
        if not args.no_docs and not args.only:
            write_between_markers(text, "smollm2_comparison")
        return 0
    print(f"base model: {base_model_dir()}")
    print((base_model_dir() / "pretrain.json").read_text())
    child_argv = [
        "--seeds",
        *map(str, args.seeds),
        *(["--only", *args.only] if args.only else []),
        *(["--forks"] if args.forks else []),
    ]
    results = run_all(jobs, args.jobs, child_argv)
    print(write_costs(results, args.seeds, args.jobs, not args.no_docs))
    if args.only:
        return 0  # a subset of the methods: the main tables stay as they are
    text = write_outputs(results, args.seeds)
    if args.forks:
        text = exact_forks_table() + "\n" + text
        (OUT / "table.md").write_text(text)
    if any(r["method"] in CURVE_METHODS for r in results):
        png, csv_path = write_curves(results)
        print(f"curves: {png}, {csv_path}")
    print(text)
    if not args.no_docs:
        write_between_markers(text, "forks_replication" if args.forks else "reasoning_replication")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
