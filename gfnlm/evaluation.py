"""Held-out evaluation of a policy on questions with answers: avg@k at T=1, pass@k, maj@k, greedy
(and, for open-ended prompts, :func:`evaluate_creative` with the metrics of :mod:`gfnlm.metrics`).

* ``accuracy_t1`` (avg@k): mean correctness over k samples per question at temperature 1, top-p 1;
* ``pass_at_k``: share of questions with at least one correct sample among the k;
* ``majority_at_k``: correctness of the most frequent answer among the k (answers compared after
  :func:`answer_key` normalisation; ties go to the answer seen first);
* ``greedy_accuracy``: one greedy response per question;
* ``mean_length``: mean number of response tokens (EOS counted) of the T=1 samples.
"""

from collections import Counter

import attrs
import torch
from tqdm.auto import tqdm

from gfnlm.errors import InputError
from gfnlm.prompts import PromptSet
from gfnlm.samplers.hf import HFSampler, decode_with_cache, rollouts_from_generated
from gfnlm.tasks import first_sentence, is_correct, normalize_answer


def answer_key(response: str) -> str:
    """What majority voting compares: the normalised first sentence of a response."""
    return normalize_answer(first_sentence(response))


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

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (cached as JSON in the run directory)."""
        return attrs.asdict(self)


def evaluate(policy, prompts: PromptSet, samples: int, max_new_tokens: int,
             batch_questions: int = 16, progress: bool = True, temperature: float = 1.0) -> EvalResult:
    """Evaluate ``policy`` (a :class:`~gfnlm.policy.CausalLMPolicy`) on every question of ``prompts``.

    The k samples are drawn at ``temperature`` (1 for the avg@k the docs report; ``1/α`` is the
    low-temperature baseline, whose ``accuracy_t1`` field then holds the accuracy at that T)."""
    if any(a is None for a in prompts.answers):
        raise InputError("evaluation needs a prompt file whose every line has 'answers'")
    sampler = HFSampler(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)
    sampler.setup(policy)
    sample_correct, majority_correct, lengths, greedy_correct, greedy_lengths = [], [], [], [], []
    chunks = range(0, len(prompts), batch_questions)
    for start in tqdm(chunks, desc="eval", unit="batch", disable=not progress, leave=False):
        indices = list(range(start, min(start + batch_questions, len(prompts))))
        batch = prompts.batch(indices)
        rollouts = sampler.sample(batch, samples)
        texts = rollouts.response_text
        assert texts is not None
        lengths.extend(rollouts.lengths.tolist())
        for q, i in enumerate(indices):
            answers = list(prompts.answers[i] or ())
            group = texts[q * samples : (q + 1) * samples]
            correct = [is_correct(t, answers) for t in group]
            sample_correct.append(correct)
            votes = Counter(answer_key(t) for t in group)
            top_key = votes.most_common(1)[0][0]
            representative = next(t for t in group if answer_key(t) == top_key)
            majority_correct.append(is_correct(representative, answers))
        greedy_texts, greedy_lens = greedy_responses(policy, batch, max_new_tokens)
        greedy_lengths.extend(greedy_lens)
        greedy_correct.extend(is_correct(t, list(prompts.answers[i] or ()))
                              for t, i in zip(greedy_texts, indices, strict=True))
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))
    return EvalResult(
        accuracy_t1=mean([mean(c) for c in sample_correct]),
        pass_at_k=mean([any(c) for c in sample_correct]),
        majority_at_k=mean(majority_correct),
        greedy_accuracy=mean(greedy_correct),
        mean_length=mean(lengths),
        greedy_mean_length=mean(greedy_lengths),
        num_questions=len(prompts),
        samples_per_question=samples,
    )


@torch.no_grad()
def greedy_responses(policy, batch, max_new_tokens: int) -> tuple[list[str], list[int]]:
    """Greedy decoding of each prompt: texts and lengths (EOS counted)."""
    with policy.decoding():
        generated, logp = decode_with_cache(
            policy.model, batch.prompt_ids.to(policy.device), batch.prompt_mask.to(policy.device), 1,
            max_new_tokens=max_new_tokens, eos_token_id=policy.eos_token_id,
            pad_token_id=policy.tokenizer.pad_token_id, greedy=True, synced=policy.synced_decoding)
    rollouts = rollouts_from_generated(policy, batch, 1, generated, logp)
    return list(rollouts.response_text or ()), rollouts.lengths.tolist()


@attrs.frozen
class CreativeResult:
    """Open-ended generation metrics (:mod:`gfnlm.metrics`), each averaged over prompts of the
    per-prompt value over its k samples (fluency, repetition, checks and lengths: over responses).

    ``fluency`` is the reference (base) model's mean token log-prob; ``check_pass_rate`` the share
    of responses that pass every rule their prompt states; ``truncated_rate`` the share cut at
    ``max_new_tokens`` (no EOS). ``responses`` holds the sampled texts, grouped by prompt.
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

    def as_dict(self) -> dict[str, float]:
        """The metrics as a plain dict (without the responses)."""
        return attrs.asdict(self, filter=lambda a, _: a.name != "responses")


def evaluate_creative(policy, prompts: PromptSet, checks: list[dict], samples: int, max_new_tokens: int, *,
                      temperature: float = 1.0, top_p: float = 1.0, embedder=None, batch_questions: int = 8,
                      progress: bool = True) -> CreativeResult:
    """Sample ``samples`` responses per prompt at ``temperature`` / ``top_p`` and score them with
    :mod:`gfnlm.metrics`. ``checks[i]`` are the rules of prompt ``i`` (``{}`` for none);
    ``embedder`` defaults to a new :class:`~gfnlm.metrics.SentenceEmbedder` (MiniLM)."""
    from gfnlm import metrics

    if samples < 2:
        raise InputError(f"--samples={samples}: creative metrics compare samples of a prompt; must be >= 2")
    if len(checks) != len(prompts):
        raise InputError(f"checks: {len(checks)} rule sets for {len(prompts)} prompts")
    embedder = embedder or metrics.SentenceEmbedder()
    sampler = HFSampler(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    sampler.setup(policy)
    per_prompt: dict[str, list[float]] = {k: [] for k in ("div", "red", "d1", "d2", "d3")}
    per_response: dict[str, list[float]] = {k: [] for k in ("len", "flu", "rep", "ok", "trunc")}
    groups: list[tuple[str, ...]] = []
    chunks = range(0, len(prompts), batch_questions)
    for start in tqdm(chunks, desc="creative eval", unit="batch", disable=not progress, leave=False):
        indices = list(range(start, min(start + batch_questions, len(prompts))))
        rollouts = sampler.sample(prompts.batch(indices), samples)
        texts = rollouts.response_text
        assert texts is not None
        base = policy.score_base(rollouts, need_eos_logp=False)
        per_response["flu"].extend(metrics.mean_token_logprob(base.token_logp, rollouts.response_mask).tolist())
        per_response["len"].extend(rollouts.lengths.tolist())
        per_response["trunc"].extend((~rollouts.ended_with_eos).float().tolist())
        embeddings = embedder.encode(texts)
        for q, i in enumerate(indices):
            group = texts[q * samples : (q + 1) * samples]
            groups.append(tuple(group))
            per_prompt["div"].append(metrics.semantic_diversity(embeddings[q * samples : (q + 1) * samples]))
            per_prompt["red"].append(metrics.lexical_redundancy(group))
            for n in (1, 2, 3):
                per_prompt[f"d{n}"].append(metrics.distinct_n(group, n))
            per_response["rep"].extend(metrics.repetition_rate(t) for t in group)
            per_response["ok"].extend(float(not metrics.failed_checks(t, checks[i])) for t in group)
    mean = lambda xs: float(sum(xs) / max(len(xs), 1))
    return CreativeResult(
        semantic_diversity=mean(per_prompt["div"]), lexical_redundancy=mean(per_prompt["red"]),
        distinct_1=mean(per_prompt["d1"]), distinct_2=mean(per_prompt["d2"]), distinct_3=mean(per_prompt["d3"]),
        mean_length=mean(per_response["len"]), fluency=mean(per_response["flu"]),
        repetition_rate=mean(per_response["rep"]), check_pass_rate=mean(per_response["ok"]),
        truncated_rate=mean(per_response["trunc"]), num_prompts=len(prompts), samples_per_prompt=samples,
        responses=tuple(groups),
    )
