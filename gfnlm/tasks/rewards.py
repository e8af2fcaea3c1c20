"""Reward functions ``Rollouts -> Tensor[B]`` for the ``reward`` / ``reward_tilted`` targets,
named in configs by import path (``target.options.reward=gfnlm.tasks.rewards:distinct_words``)."""

from collections.abc import Callable
from typing import Any

import torch

from gfnlm.contracts.errors import InputError
from gfnlm.contracts.types import Rollouts


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


def _answers_by_group(
    rollouts: Rollouts, key: Callable[[str], str] | None, task: Any = None
) -> tuple[list[str], list[int]]:
    """Each response's answer (``key``, else the task's :meth:`~gfnlm.tasks.base.Task.answer_key`,
    else the factual task's :func:`gfnlm.tasks.factual_answers.answer_key`) and its group id."""
    if key is None and task is not None:
        key = task.answer_key
    if key is None:  # a local import: evaluation imports the sampler stack
        from gfnlm.tasks.factual_answers import answer_key as key

    if rollouts.response_text is None:
        raise InputError("answer-based rewards need rollouts with response_text")
    return [key(t) for t in rollouts.response_text], rollouts.group.tolist()


def majority_vote(
    rollouts: Rollouts, key: Callable[[str], str] | None = None, task: Any = None
) -> torch.Tensor:
    """TTRL (Zuo et al. 2025): 1 if a response's answer equals its group's most frequent answer
    (ties: the answer seen first), else 0. Label-free. Answers are compared by ``key``, else by the
    run's ``task`` (given by the trainer), else as the factual task's normalised first sentences."""
    answers, groups = _answers_by_group(rollouts, key, task)
    counts: dict[int, dict[str, int]] = {}
    for answer, group in zip(answers, groups, strict=True):
        counts.setdefault(group, {}).setdefault(answer, 0)
        counts[group][answer] += 1
    majority = {
        g: max(c, key=c.__getitem__) for g, c in counts.items()
    }  # dicts keep first-seen order
    values = [float(a == majority[g]) for a, g in zip(answers, groups, strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)


def answer_cluster_share(
    rollouts: Rollouts, key: Callable[[str], str] | None = None, task: Any = None
) -> torch.Tensor:
    """EMPO (Zhang et al. 2025): the share of a response's group whose answer is the same as its
    own (answers clustered by exact ``key`` equality, as :func:`majority_vote`; semantic clustering
    is a drop-in replacement)."""
    answers, groups = _answers_by_group(rollouts, key, task)
    sizes: dict[int, int] = {}
    same: dict[tuple[int, str], int] = {}
    for answer, group in zip(answers, groups, strict=True):
        sizes[group] = sizes.get(group, 0) + 1
        same[group, answer] = same.get((group, answer), 0) + 1
    values = [same[g, a] / sizes[g] for a, g in zip(answers, groups, strict=True)]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)


def verifier(rollouts: Rollouts, task: Any = None) -> torch.Tensor:
    """GRPO's supervised reward: 1 if the response is correct for its prompt's gold answers (which
    travel with the rollouts, ``Rollouts.labels``) as the run's task grades it, else 0. Uses labels:
    the supervised reference, not a label-free method."""
    if task is None:
        from gfnlm.tasks.prompts import default_task

        task = default_task()
    if rollouts.response_text is None or rollouts.labels is None:
        raise InputError(
            "verifier needs rollouts with response_text and labels (a sampler that decodes text)"
        )
    missing = next((i for i, gold in enumerate(rollouts.labels) if not gold), None)
    if missing is not None:
        question = rollouts.prompt_text[missing] if rollouts.prompt_text else f"#{missing}"
        raise InputError(
            f"verifier: the training prompt {question!r} has no answer; the verifier reward needs "
            "data.train with answers (data.answer_field)"
        )
    values = [
        float(task.is_correct(text, gold))
        for text, gold in zip(rollouts.response_text, rollouts.labels, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.lengths.device)


def factual_verifier(rollouts: Rollouts, task: Any = None) -> torch.Tensor:
    """:func:`verifier` under its earlier name (the factual task's supervised reference)."""
    return verifier(rollouts, task)
