"""Reward functions on hand-made groups of responses."""

import attrs
import pytest
import torch
from conftest import build_rollouts

from gfnlm.rewards import answer_cluster_share, distinct_words, majority_vote


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


def test_factual_verifier_reads_the_questions_answers():
    """GRPO's supervised reward on the factual task: 1 for a correct first sentence, 0 otherwise;
    a question without known answers is a one-line error."""
    from gfnlm.rewards import factual_verifier

    texts = ["Paris.", "It is Lyon. Paris is larger.", "Berlin is the capital."]
    rollouts = attrs.evolve(rollouts_with(texts, [0, 0, 1]), prompt_text=(
        "What is the capital of France?", "What is the capital of France?", "What is the capital of Germany?"))
    assert factual_verifier(rollouts).tolist() == [1.0, 0.0, 1.0]
    unknown = attrs.evolve(rollouts, prompt_text=("What is the capital of Atlantis?",) * 3)
    with pytest.raises(ValueError, match="Atlantis"):
        factual_verifier(unknown)
