"""Held-out evaluation of a policy on questions with answers: avg@n at T=1, pass@k, maj@n, greedy,
graded by the run's task (and, for open-ended prompts, :func:`evaluate_creative` with the metrics
of :mod:`gfnlm.tasks.metrics`). With ``n`` samples per question:

* ``accuracy_t1`` (avg@n): mean correctness over the n samples at temperature 1, top-p 1;
* ``pass_at_k``: the unbiased estimate of the chance that at least one of k samples is correct,
  ``1 − C(n−c, k) / C(n, k)`` with ``c`` correct of ``n`` (Chen et al. 2021, "Evaluating large
  language models trained on code"), averaged over questions; ``k = n`` unless given;
* ``majority_at_k``: correctness of the most frequent answer among the n samples (answers compared
  by the task's :meth:`~gfnlm.tasks.base.Task.answer_key`; ties go to the answer seen first);
* ``greedy_accuracy``: one greedy response per question;
* ``mean_length``: mean number of response tokens (EOS counted) of the T=1 samples;
* ``format_ok_rate``: share of the T=1 samples in the task's answer format (what ψ checks);
* ``truncated_rate``: share of the T=1 samples that reached ``max_new_tokens`` without EOS (their
  answers are cut off).
"""

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from gfnlm.contracts.errors import InputError
from gfnlm.contracts.paths import write_text_atomic
from gfnlm.models.decoding import decode_with_cache, rollouts_from_generated
from gfnlm.samplers.hf import HFSampler
from gfnlm.tasks.prompts import PromptSet, default_task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples: ``1 − C(n−c, k) / C(n, k)``."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@attrs.frozen
class EvalResult:
    """Accuracies in [0, 1] and mean lengths in tokens."""

    accuracy_t1: float
    pass_at_k: float
    majority_at_k: float
    greedy_accuracy: float
    mean_length: float
    greedy_mean_length: float
    num_questions: int
    samples_per_question: int
    k: int = 0  # the k of pass@k (the number of samples when 0)
    format_ok_rate: float = float("nan")
    truncated_rate: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (cached as JSON in the run directory)."""
        return attrs.asdict(self)


def evaluate(
    policy,
    prompts: PromptSet,
    samples: int,
    max_new_tokens: int,
    batch_questions: int = 16,
    progress: bool = True,
    temperature: float = 1.0,
    task=None,
    k: int = 0,
) -> EvalResult:
    """Evaluate ``policy`` (a :class:`~gfnlm.training.policy.CausalLMPolicy`) on every question of
    ``prompts``, graded by ``task`` (default: the ``factual`` task).

    The n = ``samples`` samples are drawn at ``temperature`` (1 for the avg@n the docs report;
    ``1/α`` is the low-temperature baseline, whose ``accuracy_t1`` field then holds the accuracy at
    that T); ``k`` (default n) is the k of pass@k."""
    task = task if task is not None else default_task()
    k = k or samples
    if not 1 <= k <= samples:
        raise InputError(f"k={k}: pass@k needs 1 <= k <= the number of samples ({samples})")
    if any(a is None for a in prompts.answers):
        raise InputError("evaluation needs a prompt file whose every line has 'answers'")
    sampler = HFSampler(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)
    sampler.setup(policy)
    sample_correct, majority_correct, lengths, greedy_correct, greedy_lengths = [], [], [], [], []
    format_ok, truncated = [], []
    bar = sequence_bar("eval", len(prompts) * samples, progress)
    for start in range(0, len(prompts), batch_questions):
        indices = list(range(start, min(start + batch_questions, len(prompts))))
        batch = prompts.batch(indices)
        rollouts = sampler.sample(batch, samples)
        bar.update(len(indices) * samples)
        texts = rollouts.response_text
        assert texts is not None
        lengths.extend(rollouts.lengths.tolist())
        truncated.extend((~rollouts.ended_with_eos).tolist())
        for q, i in enumerate(indices):
            answers = list(prompts.answers[i] or ())
            group = texts[q * samples : (q + 1) * samples]
            correct = [task.is_correct(t, answers) for t in group]
            sample_correct.append(correct)
            format_ok.extend(task.format_ok(t) for t in group)
            keys = [task.answer_key(t) for t in group]
            top_key = Counter(keys).most_common(1)[0][0]
            majority_correct.append(correct[keys.index(top_key)])
        greedy_texts, greedy_lens = greedy_responses(policy, batch, max_new_tokens)
        greedy_lengths.extend(greedy_lens)
        greedy_correct.extend(
            task.is_correct(t, list(prompts.answers[i] or ()))
            for t, i in zip(greedy_texts, indices, strict=True)
        )
    bar.close()
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))
    return EvalResult(
        accuracy_t1=mean([mean(c) for c in sample_correct]),
        pass_at_k=mean([pass_at_k(len(c), sum(c), k) for c in sample_correct]),
        majority_at_k=mean(majority_correct),
        greedy_accuracy=mean(greedy_correct),
        mean_length=mean(lengths),
        greedy_mean_length=mean(greedy_lengths),
        num_questions=len(prompts),
        samples_per_question=samples,
        k=k,
        format_ok_rate=mean(format_ok),
        truncated_rate=mean(truncated),
    )


def sequence_bar(description: str, total: int, progress: bool) -> tqdm:
    """The evaluations' progress bar, counting sampled sequences (questions × samples), not batches
    of questions: a slow CPU evaluation of one batch would otherwise show 0/1 until it ends."""
    return tqdm(total=total, desc=description, unit="seq", disable=not progress, leave=False)


@torch.no_grad()
def greedy_responses(policy, batch, max_new_tokens: int) -> tuple[list[str], list[int]]:
    """Greedy decoding of each prompt: texts and lengths (EOS counted)."""
    with policy.decoding():
        generated, logp = decode_with_cache(
            policy.model,
            batch.prompt_ids.to(policy.device),
            batch.prompt_mask.to(policy.device),
            1,
            max_new_tokens=max_new_tokens,
            eos_token_id=policy.eos_token_id,
            pad_token_id=policy.tokenizer.pad_token_id,
            greedy=True,
            synced=policy.synced_decoding,
        )
    rollouts = rollouts_from_generated(policy, batch, 1, generated, logp)
    return list(rollouts.response_text or ()), rollouts.lengths.tolist()


@attrs.frozen
class CreativeResult:
    """Open-ended generation metrics (:mod:`gfnlm.tasks.metrics`), each averaged over prompts of the
    per-prompt value over its k samples (fluency, repetition, checks and lengths: over responses).

    ``fluency`` is the reference (base) model's mean token log-prob; ``check_pass_rate`` the share
    of responses that pass every rule their prompt states; ``truncated_rate`` the share cut at
    ``max_new_tokens`` (no EOS). ``responses`` holds the sampled texts, grouped by prompt.
    ``target_estimates`` maps α to the same metrics (without distinct-n) estimated for the exact
    target ``p_base^α`` from these samples (:func:`evaluate_creative`'s ``target_alphas``), with
    ``ess_min`` / ``ess_median``, the effective sample size per prompt.
    """

    semantic_diversity: float
    lexical_redundancy: float
    distinct_1: float
    distinct_2: float
    distinct_3: float
    mean_length: float
    fluency: float
    repetition_rate: float
    check_pass_rate: float
    truncated_rate: float
    num_prompts: int
    samples_per_prompt: int
    responses: tuple[tuple[str, ...], ...] = attrs.field(default=(), repr=False, eq=False)
    target_estimates: dict[float, dict[str, float]] = attrs.field(
        factory=dict, repr=False, eq=False
    )

    def as_dict(self) -> dict[str, float]:
        """The metrics as a plain dict (without the responses and the target estimates)."""
        return attrs.asdict(
            self, filter=lambda a, _: a.name not in ("responses", "target_estimates")
        )


# Per-response quantities of a prompt's samples that the creative metrics average.
_PER_RESPONSE = ("fluency", "repetition_rate", "check_pass_rate", "mean_length", "truncated_rate")


def evaluate_creative(
    policy,
    prompts: PromptSet,
    checks: list[dict],
    samples: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    embedder=None,
    batch_questions: int = 8,
    target_alphas: tuple[float, ...] = (),
    progress: bool = True,
) -> CreativeResult:
    """Sample ``samples`` responses per prompt at ``temperature`` / ``top_p`` / ``min_p`` and score
    them with :mod:`gfnlm.tasks.metrics`. ``checks[i]`` are the rules of prompt ``i`` (``{}`` for
    none); ``embedder`` defaults to a new :class:`~gfnlm.tasks.metrics.SentenceEmbedder` (MiniLM).

    ``target_alphas``: also estimate, from the same samples, the metrics of the exact α-power target
    ``p_base(y|q)^α`` for each α: each response weighs ``w ∝ p_base(y|q)^α / π(y|q)`` within its
    prompt, π being the distribution it was drawn from (its behaviour log-prob), and pairs of
    responses ``w_i·w_j`` (self-normalised importance sampling: consistent as ``samples`` grows
    where π covers the target, so not with top-p or min-p cutting the tail; reliable where the
    effective sample size stays large). Where a trained sampler lands if it matches its target."""
    from gfnlm.tasks import metrics

    if samples < 2:
        raise InputError(
            f"--samples={samples}: creative metrics compare samples of a prompt; must be >= 2"
        )
    if len(checks) != len(prompts):
        raise InputError(f"checks: {len(checks)} rule sets for {len(prompts)} prompts")
    embedder = embedder or metrics.SentenceEmbedder()
    sampler = HFSampler(
        temperature=temperature, top_p=top_p, min_p=min_p, max_new_tokens=max_new_tokens
    )
    sampler.setup(policy)
    groups: list[dict] = []  # one per prompt: its texts, embeddings, per-response values, log-probs
    bar = sequence_bar("creative eval", len(prompts) * samples, progress)
    for start in range(0, len(prompts), batch_questions):
        indices = list(range(start, min(start + batch_questions, len(prompts))))
        rollouts = sampler.sample(prompts.batch(indices), samples)
        bar.update(len(indices) * samples)
        texts = rollouts.response_text
        assert texts is not None
        base = policy.score_base(rollouts, need_eos_logp=False)
        mask = rollouts.response_mask
        per_response = {
            "fluency": metrics.mean_token_logprob(base.token_logp, mask),
            "mean_length": rollouts.lengths,
            "truncated_rate": ~rollouts.ended_with_eos,
            "base_logp": (base.token_logp * mask).sum(-1),
            "behaviour_logp": (rollouts.behaviour_logp * mask).sum(-1),
        }
        embeddings = embedder.encode(texts)
        for q, i in enumerate(indices):
            rows = slice(q * samples, (q + 1) * samples)
            group = {key: value[rows].double().cpu() for key, value in per_response.items()}
            group["texts"] = tuple(texts[rows])
            group["embeddings"] = embeddings[rows]
            group["repetition_rate"] = torch.tensor(
                [metrics.repetition_rate(t) for t in group["texts"]]
            )
            group["check_pass_rate"] = torch.tensor(
                [float(not metrics.failed_checks(t, checks[i])) for t in group["texts"]]
            )
            groups.append(group)
    bar.close()
    drawn = _creative_metrics(groups, weights=None)
    estimates = {}
    for alpha in target_alphas:
        weights = [
            torch.softmax(alpha * g["base_logp"] - g["behaviour_logp"], dim=0) for g in groups
        ]
        estimates[alpha] = _creative_metrics(groups, weights)
        ess = sorted(float(1.0 / (w**2).sum()) for w in weights)
        estimates[alpha] |= {"ess_min": ess[0], "ess_median": ess[len(ess) // 2]}
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))
    return CreativeResult(
        **drawn,
        **{
            f"distinct_{n}": mean([metrics.distinct_n(g["texts"], n) for g in groups])
            for n in (1, 2, 3)
        },
        num_prompts=len(prompts),
        samples_per_prompt=samples,
        responses=tuple(g["texts"] for g in groups),
        target_estimates=estimates,
    )


def _creative_metrics(groups: list[dict], weights: list[torch.Tensor] | None) -> dict[str, float]:
    """The pairwise and per-response creative metrics, averaged over prompts: as drawn
    (``weights=None``), or with each prompt's responses weighted by ``weights[i]`` (summing to
    1)."""
    from gfnlm.tasks import metrics

    per_prompt: dict[str, list[float]] = {
        key: [] for key in ("semantic_diversity", "lexical_redundancy", *_PER_RESPONSE)
    }
    for i, group in enumerate(groups):
        w = (
            weights[i]
            if weights is not None
            else torch.full((len(group["texts"]),), 1.0 / len(group["texts"]), dtype=torch.float64)
        )
        per_prompt["semantic_diversity"].append(metrics.semantic_diversity(group["embeddings"], w))
        per_prompt["lexical_redundancy"].append(metrics.lexical_redundancy(group["texts"], w))
        for key in _PER_RESPONSE:
            per_prompt[key].append(float((w * group[key].double()).sum()))
    return {key: float(sum(values) / len(values)) for key, values in per_prompt.items()}


# ---------------------------------------------------------------------- a run's evaluation cache
def evaluate_with_fixed_seed(
    policy: Any, prompts: PromptSet, config: Any, task: Any, progress: bool = False
) -> dict[str, float]:
    """A run's evaluation (``config``: its ``train.eval_samples`` samples per question of at most
    ``sampling.max_new_tokens`` tokens) under the seed ``train.seed + 1_000_003`` in a forked RNG:
    evaluation never changes the training randomness, so a resumed run (which reuses cached
    evaluations) stays identical to an uninterrupted one; the same seed at every evaluation gives
    common random numbers (before and after differ by the model, not by the draw) and the same
    draws on every rank."""
    device = next(policy.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.train.seed + 1_000_003)
        result = evaluate(
            policy,
            prompts,
            config.train.eval_samples,
            config.sampling.max_new_tokens,
            task=task,
            progress=progress,
        )
    return result.as_dict()


def write_cached_evaluation(path: Path, result: dict[str, float]) -> None:
    """Cache an evaluation for resumes; a cache that cannot be written only costs a re-evaluation,
    so the run goes on with a one-line warning."""
    try:
        write_text_atomic(path, json.dumps(result, indent=2))
    except OSError as error:
        print(
            f"gfnlm: cannot cache the evaluation in {str(path)!r} "
            f"({(error.strerror or str(error)).lower()}); "
            "a resume evaluates that step again",
            file=sys.stderr,
            flush=True,
        )


def read_cached_evaluation(path: Path) -> dict[str, float] | None:
    """A cached evaluation, or ``None`` when there is none or it cannot be read (then it is
    redone)."""
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        print(f"gfnlm: {path} is unreadable; evaluating again", file=sys.stderr, flush=True)
        return None
    return result if isinstance(result, dict) else None
