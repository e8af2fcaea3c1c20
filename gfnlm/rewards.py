"""Reward functions ``Rollouts -> Tensor[B]`` for the ``reward`` / ``reward_tilted`` targets,
named in configs by import path (``target.options.reward=gfnlm.rewards:distinct_words``)."""

import functools
from collections.abc import Callable

import torch

from gfnlm.errors import InputError
from gfnlm.types import Rollouts


def distinct_words(rollouts: Rollouts) -> torch.Tensor:
    """Share of distinct words among a response's words (0 for an empty response): a cheap,
    label-free reward that varies within a group, used by the speed benchmarks."""
    if rollouts.response_text is None:
        raise InputError("distinct_words needs rollouts with response_text")
    values = []
    for text in rollouts.response_text:
        words = text.lower().split()
        values.append(len(set(words)) / len(words) if words else 0.0)
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)


def _answers_by_group(rollouts: Rollouts, key: Callable[[str], str] | None) -> tuple[list[str], list[int]]:
    """Each response's answer key (``key``, default :func:`gfnlm.evaluation.answer_key`) and its group id."""
    if key is None:  # a local import: evaluation imports the sampler stack
        from gfnlm.evaluation import answer_key as key

    if rollouts.response_text is None:
        raise InputError("answer-based rewards need rollouts with response_text")
    return [key(t) for t in rollouts.response_text], rollouts.group.tolist()


def majority_vote(rollouts: Rollouts, key: Callable[[str], str] | None = None) -> torch.Tensor:
    """TTRL (Zuo et al. 2025): 1 if a response's answer equals its group's most frequent answer
    (ties: the answer seen first), else 0. Label-free. ``key`` extracts a response's answer (a
    task's own extractor; default: the factual task's normalised first sentence)."""
    answers, groups = _answers_by_group(rollouts, key)
    counts: dict[int, dict[str, int]] = {}
    for answer, group in zip(answers, groups, strict=True):
        counts.setdefault(group, {}).setdefault(answer, 0)
        counts[group][answer] += 1
    majority = {g: max(c, key=c.__getitem__) for g, c in counts.items()}  # dicts keep first-seen order
    values = [float(a == majority[g]) for a, g in zip(answers, groups, strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)


def answer_cluster_share(rollouts: Rollouts, key: Callable[[str], str] | None = None) -> torch.Tensor:
    """EMPO (Zhang et al. 2025): the share of a response's group whose answer is the same as its
    own (answers clustered by exact ``key`` equality, as :func:`majority_vote`; semantic clustering
    is a drop-in replacement)."""
    answers, groups = _answers_by_group(rollouts, key)
    sizes: dict[int, int] = {}
    same: dict[tuple[int, str], int] = {}
    for answer, group in zip(answers, groups, strict=True):
        sizes[group] = sizes.get(group, 0) + 1
        same[group, answer] = same.get((group, answer), 0) + 1
    values = [same[g, a] / sizes[g] for a, g in zip(answers, groups, strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)


@functools.cache
def _factual_answers() -> dict[str, tuple[str, ...]]:
    from gfnlm.tasks import DATA_DIR, load_prompt_file

    records = load_prompt_file(DATA_DIR / "factual_candidates.jsonl")
    return {r["question"]: tuple(r["answers"]) for r in records if r.get("answers")}


def factual_verifier(rollouts: Rollouts) -> torch.Tensor:
    """GRPO's supervised reward on the bundled factual task: 1 if the response is correct
    (:func:`gfnlm.tasks.is_correct`) for the accepted answers of its question in
    ``gfnlm/data/factual_candidates.jsonl`` (which holds every training and held-out question), else 0.
    Uses labels: the supervised reference, not a label-free method."""
    from gfnlm.tasks import is_correct

    if rollouts.response_text is None or rollouts.prompt_text is None:
        raise InputError("factual_verifier needs rollouts with response_text and prompt_text")
    answers = _factual_answers()
    missing = next((q for q in rollouts.prompt_text if q not in answers), None)
    if missing is not None:
        raise InputError(f"factual_verifier: question {missing!r} is not in factual_candidates.jsonl")
    values = [float(is_correct(r, list(answers[q]))) for r, q in zip(rollouts.response_text, rollouts.prompt_text,
                                                                       strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)
