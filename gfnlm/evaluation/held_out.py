"""Held-out evaluation of a policy on questions with answers: avg@n at T=1, pass@k, maj@k, greedy,
graded by the run's task (and, for open-ended prompts, :func:`evaluate_creative` with the metrics
of :mod:`gfnlm.tasks.metrics`). With ``n`` samples per question and one or more ``k <= n``:

* ``accuracy_t1`` (avg@n): mean correctness over the n samples at temperature 1, top-p 1;
* ``pass_at_{k}``: the unbiased estimate of the chance that at least one of k samples is correct,
  ``1 − C(n−c, k) / C(n, k)`` with ``c`` correct of ``n`` (Chen et al. 2021, "Evaluating large
  language models trained on code"), averaged over questions;
* ``majority_at_{k}``: whether the most frequent answer among k samples is correct (answers
  compared by the task's :meth:`~gfnlm.tasks.base.Task.answer_key`; ties go to the answer seen
  first), averaged over the ``n // k`` disjoint groups of k consecutive samples (each group is k
  independent samples, so the mean is an unbiased estimate; ``k = n`` is the vote over all n);
* ``pass_at_k`` / ``majority_at_k``: the same at the largest k (``k = n`` unless given);
* ``greedy_accuracy``: one greedy response per question;
* ``mean_length``: mean number of response tokens (EOS counted) of the T=1 samples;
* ``format_ok_rate``: share of the T=1 samples in the task's answer format (what ψ checks);
* ``truncated_rate``: share of the T=1 samples that reached ``max_new_tokens`` without EOS (their
  answers are cut off).

:attr:`EvalResult.questions` keeps what each question got: its prompt, its gold answers, every
sampled response and the greedy one, each with its extracted answer, correctness, length and
whether it was truncated (``gfnlm eval --json`` writes them; :meth:`EvalResult.as_dict`, what a
run caches, leaves them out).
"""

import contextlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from gfnlm.contracts.errors import InputError
from gfnlm.contracts.paths import write_text_atomic
from gfnlm.models.decoding import decode_with_cache, rollouts_from_generated
from gfnlm.samplers.hf import HFSampler
from gfnlm.samplers.server import ServerSampler
from gfnlm.tasks.prompts import PromptSet, default_task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples: ``1 − C(n−c, k) / C(n, k)``."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_at_k(keys: Sequence[str], correct: Sequence[bool], k: int) -> float:
    """maj@k from ``n >= k`` samples of one question (their answer ``keys`` and ``correct``ness):
    the share of the ``n // k`` disjoint groups of ``k`` consecutive samples whose most frequent
    answer (ties: the one seen first) is correct."""
    groups = len(keys) // k
    hits = 0
    for start in range(0, groups * k, k):
        group = list(keys[start : start + k])
        top = Counter(group).most_common(1)[0][0]
        hits += bool(correct[start + group.index(top)])
    return hits / groups


def check_ks(k: int | Sequence[int], samples: int) -> tuple[int, ...]:
    """The k of pass@k / maj@k, sorted without repeats (``0`` or empty: the number of samples);
    each must be in ``[1, samples]``."""
    values = [k] if isinstance(k, int) else list(k)
    ks = sorted({value or samples for value in values} or {samples})
    for value in ks:
        if not 1 <= value <= samples:
            raise InputError(f"k={value}: pass@k needs 1 <= k <= the number of samples ({samples})")
    return tuple(ks)


@attrs.frozen
class EvalResult:
    """Accuracies in [0, 1] and mean lengths in tokens; ``pass_at`` / ``majority_at`` map each
    evaluated k to pass@k / maj@k (``pass_at_k`` / ``majority_at_k``: at the largest, ``k``);
    ``questions``: the per-question records (see the module docstring)."""

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
    pass_at: dict[int, float] = attrs.field(factory=dict, eq=False)
    majority_at: dict[int, float] = attrs.field(factory=dict, eq=False)
    questions: tuple[dict[str, Any], ...] = attrs.field(default=(), repr=False, eq=False)

    def as_dict(self) -> dict[str, float]:
        """The aggregate metrics as a flat dict of numbers (cached as JSON in the run directory),
        with ``pass_at_{k}`` and ``majority_at_{k}`` for every evaluated k; no per-question
        records."""
        flat = attrs.asdict(
            self, filter=lambda a, _: a.name not in ("pass_at", "majority_at", "questions")
        )
        for k in sorted(self.pass_at):
            flat[f"pass_at_{k}"] = self.pass_at[k]
            flat[f"majority_at_{k}"] = self.majority_at[k]
        return flat


def evaluate(
    policy,
    prompts: PromptSet,
    samples: int,
    max_new_tokens: int,
    batch_questions: int = 16,
    progress: bool = True,
    temperature: float = 1.0,
    task=None,
    k: int | Sequence[int] = 0,
    sampler=None,
) -> EvalResult:
    """Evaluate ``policy`` (a :class:`~gfnlm.training.policy.CausalLMPolicy`) on every question of
    ``prompts``, graded by ``task`` (default: the ``factual`` task).

    The n = ``samples`` samples are drawn by ``sampler`` (a registered sampler not yet set up;
    this sets it up and closes it), by default the ``hf`` sampler at ``temperature`` (1 for the
    avg@n the docs report; ``1/α`` is the low-temperature baseline, whose ``accuracy_t1`` field
    then holds the accuracy at that T); the greedy response is the policy's own. ``k``: the k (or
    several) of pass@k and maj@k, each ``<= samples`` (default n), all from the same samples."""
    task = task if task is not None else default_task()
    ks = check_ks(k, samples)
    if any(a is None for a in prompts.answers):
        raise InputError("evaluation needs a prompt file whose every line has 'answers'")
    if sampler is None:
        sampler = HFSampler(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)
    sampler.setup(policy)
    try:
        questions = _sample_and_grade(
            policy, prompts, samples, max_new_tokens, task, sampler, batch_questions, progress
        )
    finally:
        sampler.close()
    return _aggregate(questions, ks, samples)


def _sample_and_grade(
    policy, prompts: PromptSet, samples: int, max_new_tokens: int, task, sampler, batch, progress
) -> list[dict[str, Any]]:
    """One record per question: ``samples`` responses from ``sampler`` and the greedy one, graded.
    The progress bar counts sampled sequences as they finish (:func:`_finished_sequences`)."""
    # Samplers that decode a batch of prompts at once get whole batches; the others (power
    # sampling runs prompt by prompt) one question per call, so that the bar moves per question.
    per_call = batch if isinstance(sampler, HFSampler | ServerSampler) else 1
    records: list[dict[str, Any]] = []
    bar = sequence_bar("eval", len(prompts) * samples, progress)
    for start in range(0, len(prompts), per_call):
        indices = list(range(start, min(start + per_call, len(prompts))))
        batch_prompts = prompts.batch(indices)
        with _finished_sequences(sampler, policy, bar, len(indices) * samples):
            rollouts = sampler.sample(batch_prompts, samples)
        greedy = greedy_rollouts(policy, batch_prompts, max_new_tokens)
        graded = _graded(task, rollouts, [list(prompts.answers[i] or ()) for i in indices], samples)
        greedy_graded = _graded(task, greedy, [list(prompts.answers[i] or ()) for i in indices], 1)
        for q, i in enumerate(indices):
            records.append(
                {
                    "index": i,
                    "question": prompts.questions[i],
                    "prompt": prompts.texts[i],
                    "answers": list(prompts.answers[i] or ()),
                    "samples": graded[q],
                    "greedy": greedy_graded[q][0],
                }
            )
    bar.close()
    return records


def _graded(task, rollouts, answers: list[list[str]], n: int) -> list[list[dict[str, Any]]]:
    """Each response of ``rollouts`` (``n`` per question, grouped) as a record: its text, the
    answer the task extracts, whether it is correct and well-formed, its length in tokens (EOS
    counted) and whether it was truncated (no EOS)."""
    texts = rollouts.response_text
    assert texts is not None
    lengths, ended = rollouts.lengths.tolist(), rollouts.ended_with_eos.tolist()
    out = []
    for q, gold in enumerate(answers):
        rows = range(q * n, (q + 1) * n)
        out.append(
            [
                {
                    "response": texts[r],
                    "answer": task.answer_key(texts[r]),
                    "correct": bool(task.is_correct(texts[r], gold)),
                    "format_ok": bool(task.format_ok(texts[r])),
                    "length": int(lengths[r]),
                    "truncated": not ended[r],
                }
                for r in rows
            ]
        )
    return out


def _aggregate(questions: list[dict[str, Any]], ks: tuple[int, ...], samples: int) -> EvalResult:
    """The metrics of the module docstring from the per-question records."""
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))
    drawn = [s for q in questions for s in q["samples"]]
    correct = [[s["correct"] for s in q["samples"]] for q in questions]
    keys = [[s["answer"] for s in q["samples"]] for q in questions]
    pass_at = {k: mean([pass_at_k(len(c), sum(c), k) for c in correct]) for k in ks}
    majority_at = {
        k: mean([majority_at_k(key, c, k) for key, c in zip(keys, correct, strict=True)])
        for k in ks
    }
    top = ks[-1]
    return EvalResult(
        accuracy_t1=mean([mean(c) for c in correct]),
        pass_at_k=pass_at[top],
        majority_at_k=majority_at[top],
        greedy_accuracy=mean([q["greedy"]["correct"] for q in questions]),
        mean_length=mean([s["length"] for s in drawn]),
        greedy_mean_length=mean([q["greedy"]["length"] for q in questions]),
        num_questions=len(questions),
        samples_per_question=samples,
        k=top,
        format_ok_rate=mean([s["format_ok"] for s in drawn]),
        truncated_rate=mean([s["truncated"] for s in drawn]),
        pass_at=pass_at,
        majority_at=majority_at,
        questions=tuple(questions),
    )


def sequence_bar(description: str, total: int, progress: bool) -> tqdm:
    """The evaluations' progress bar, counting sampled sequences (questions × samples), not batches
    of questions: a slow CPU evaluation of one batch would otherwise show 0/1 until it ends."""
    return tqdm(total=total, desc=description, unit="seq", disable=not progress, leave=False)


@contextlib.contextmanager
def _finished_sequences(sampler, policy, bar: tqdm, rows: int) -> Iterator[None]:
    """Advance ``bar`` by the ``rows`` sequences of one sampler call as they finish.

    The ``hf`` sampler's cached decoding drops each row from the batch once it has emitted EOS, so
    the batch of every decoding step after the first (the prompts' prefill) holds the sequences
    still generating; a forward hook on the policy's model counts the ones gone. Other samplers
    (and ``hf`` decoding in chunks or with ``model.generate``) advance the bar when the call
    returns."""
    counted = 0
    handle = None
    if isinstance(sampler, HFSampler) and sampler.engine == "cached" and not sampler.batch_size:
        calls = 0

        def count(module, args, kwargs) -> None:
            nonlocal counted, calls
            calls += 1
            ids = kwargs.get("input_ids", args[0] if args else None)
            if calls == 1 or ids is None:  # the prefill: one row per prompt, not per sample
                return
            finished = rows - int(ids.shape[0])
            if finished > counted:
                bar.update(finished - counted)
                counted = finished

        handle = policy.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
    bar.update(rows - counted)


@torch.no_grad()
def greedy_rollouts(policy, batch, max_new_tokens: int):
    """Greedy decoding of each prompt, as :class:`~gfnlm.contracts.types.Rollouts` (one per
    prompt)."""
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
    return rollouts_from_generated(policy, batch, 1, generated, logp)


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
