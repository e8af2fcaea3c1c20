"""Reward functions on hand-made groups of responses."""

import attrs
import pytest
import torch
from conftest import build_rollouts

from gfnlm.tasks.rewards import answer_cluster_share, distinct_words, majority_vote


def rollouts_with(texts: list[str], groups: list[int]):
    rollouts = build_rollouts([2] * len(texts), [True] * len(texts), 3, response_text=tuple(texts))
    return attrs.evolve(rollouts, group=torch.tensor(groups))


TEXTS = ["Paris.", "paris", "Lyon.", "Paris is the capital.", "Rome.", "Milan.", "Milan."]
GROUPS = [0, 0, 0, 0, 1, 1, 1]


def test_majority_vote_rewards_the_groups_most_frequent_answer():
    # group 0: "paris" twice (normalised), "lyon", "paris is the capital" -> majority "paris"
    # group 1: "milan" twice -> majority "milan"
    assert majority_vote(rollouts_with(TEXTS, GROUPS)).tolist() == [1, 1, 0, 0, 0, 1, 1]


def test_majority_vote_tie_goes_to_the_answer_seen_first():
    assert majority_vote(rollouts_with(["A.", "B."], [0, 0])).tolist() == [1, 0]


def test_answer_cluster_share_is_the_share_of_the_same_answer_in_the_group():
    values = answer_cluster_share(rollouts_with(TEXTS, GROUPS)).tolist()
    assert values == pytest.approx([0.5, 0.5, 0.25, 0.25, 1 / 3, 2 / 3, 2 / 3])


def test_distinct_words():
    values = distinct_words(rollouts_with(["a a a b", "x y", ""], [0, 0, 0])).tolist()
    assert values == pytest.approx([0.5, 1.0, 0.0])


def test_answer_rewards_need_texts():
    rollouts = build_rollouts([2], [True], 3)
    with pytest.raises(ValueError, match="response_text"):
        majority_vote(rollouts)


def test_verifier_grades_with_the_labels_that_travel_with_the_rollouts():
    """GRPO's supervised reward: 1 for a correct response to its own prompt's gold answers (the
    rollouts' labels, never a lookup by question text), graded by the task; a prompt without an
    answer is a one-line error naming it."""
    from gfnlm.contracts.registry import build
    from gfnlm.tasks.rewards import factual_verifier, verifier

    texts = ["Paris.", "It is Lyon. Paris is larger.", "Berlin is the capital."]
    rollouts = attrs.evolve(
        rollouts_with(texts, [0, 0, 1]),
        labels=(("Paris",), ("Paris",), ("Berlin",)),
        prompt_text=("Q1", "Q1", "Q2"),
    )
    assert verifier(rollouts, task=build("task", "factual")).tolist() == [1.0, 0.0, 1.0]
    assert factual_verifier(rollouts).tolist() == [1.0, 0.0, 1.0]
    # Labels, not the question text, decide: the same texts with swapped labels grade the other way.
    swapped = attrs.evolve(rollouts, labels=(("Lyon",), ("Lyon",), ("Paris",)))
    assert verifier(swapped).tolist() == [0.0, 1.0, 0.0]
    unlabelled = attrs.evolve(rollouts, labels=(("Paris",), None, ("Berlin",)))
    with pytest.raises(ValueError, match="prompt 'Q1' has no answer"):
        verifier(unlabelled)
    math = build("task", "math")
    boxed = attrs.evolve(
        rollouts_with(["so \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "1/2"], [0, 0, 0]),
        labels=(("1/2",),) * 3,
    )
    assert verifier(boxed, task=math).tolist() == [1.0, 1.0, 0.0]
