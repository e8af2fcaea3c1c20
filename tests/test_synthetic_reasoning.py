"""The synthetic reasoning task of the miniature replication: its scorer, its noisy solutions, its
tokenizer and its reward functions (hand-computed examples)."""

import random

import attrs
import pytest
import torch
from conftest import build_rollouts

from gfnlm.tasks import synthetic_reasoning as task


def test_solve_and_extract_by_hand():
    assert task.terms("Q a 3 b 5 c 8") == [3, 5, 8]
    assert task.solve("Q a 3 b 5 c 8") == "6"  # 16 mod 10
    assert task.extract_answer("a 3 b 5 = 8 c 8 = 6 A 6") == "6"
    assert task.extract_answer("a 3 A 3 A 7") == "7"  # the last A
    assert task.extract_answer("a 3 b 5 = 8") is None
    assert task.extract_answer("a 3 A") is None and task.answer_key("a 3 A") == ""
    assert task.is_correct("a 3 b 5 = 8 c 8 = 6 A 6", "Q a 3 b 5 c 8")
    assert not task.is_correct("a 3 b 5 = 9 c 8 = 7 A 7", "Q a 3 b 5 c 8")
    with pytest.raises(ValueError, match="question="):
        task.terms("a 3 b")


def test_noisy_solution_without_noise_is_the_correct_chain_and_with_noise_varies():
    question = "Q a 3 b 5 c 8"
    assert task.noisy_solution(question, random.Random(0), 0.0, 0.0) == "a 3 b 5 = 8 c 8 = 6 A 6"
    assert task.noisy_solution(question, random.Random(0), 0.0, 1.0) == "a 3 A 3"  # stops at once
    rng = random.Random(1)
    draws = [task.noisy_solution(question, rng, 0.3, 0.2) for _ in range(400)]
    accuracy = sum(task.is_correct(d, question) for d in draws) / len(draws)
    # P(correct) = (0.8 · 0.7)² plus wrong chains that land on 6 by chance: about 0.31-0.40
    assert 0.25 < accuracy < 0.45
    assert len({len(d.split()) for d in draws}) == 3  # early stops give 3 lengths


def test_tokenizer_round_trip_and_chat_prompt(tmp_path):
    from gfnlm.models.loading import load_tokenizer
    from gfnlm.tasks.prompt_files import format_prompt

    tokenizer = load_tokenizer(task.save_tokenizer(tmp_path))
    prompt = format_prompt(tokenizer, "Q a 3 b 5")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids)[-6:] == ["Q", "a", "3", "b", "5", "<assistant>"]
    solution = "a 3 b 5 = 8 A 8"
    ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == solution


def test_rewards_by_hand():
    """Two prompts of three responses, through the chain_sum task: the verifier grades against the
    answer computed from the question, TTRL majority and EMPO cluster share compare the extracted
    answers (a response without an answer has key '')."""
    from gfnlm.contracts.registry import build
    from gfnlm.tasks import rewards

    chain_sum = build("task", "chain_sum")
    texts = (
        "a 3 b 5 = 8 A 8",
        "a 3 b 5 = 1 A 1",
        "a 3 b 5 = 8 A 8",
        "a 1 b 1 = 2 A 2",
        "a 1 A",
        "a 1 A 1",
    )
    questions = ("Q a 3 b 5",) * 3 + ("Q a 1 b 1",) * 3
    rollouts = build_rollouts([3] * 6, [True] * 6, 4, response_text=texts)
    rollouts = attrs.evolve(
        rollouts,
        group=torch.tensor([0, 0, 0, 1, 1, 1]),
        prompt_text=questions,
        labels=tuple(chain_sum.answers_for({"question": q}) for q in questions),
    )
    assert rewards.verifier(rollouts, task=chain_sum).tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert rewards.majority_vote(rollouts, task=chain_sum).tolist() == [
        1.0,
        0.0,
        1.0,
        1.0,
        0.0,
        0.0,
    ]  # tie: first
    assert rewards.answer_cluster_share(rollouts, task=chain_sum).tolist() == pytest.approx(
        [2 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3]
    )


def test_the_verifier_through_chain_sum_grades_as_the_task_module_does():
    """On random noisy solutions the generic verifier with the chain_sum task and its labels gives
    the task module's own verdict (the answer recomputed from the question)."""
    from gfnlm.contracts.registry import build
    from gfnlm.tasks import rewards

    chain_sum, rng = build("task", "chain_sum"), random.Random(3)
    questions = [task.make_question(rng) for _ in range(6)]
    texts = tuple(task.noisy_solution(q, rng, 0.3, 0.2) for q in questions for _ in range(4))
    prompt_text = tuple(q for q in questions for _ in range(4))
    rollouts = attrs.evolve(
        build_rollouts([2] * 24, [True] * 24, 3, response_text=texts),
        group=torch.arange(6).repeat_interleave(4),
        prompt_text=prompt_text,
        labels=tuple(chain_sum.answers_for({"question": q}) for q in prompt_text),
    )
    expected = [float(task.is_correct(t, q)) for t, q in zip(texts, prompt_text, strict=True)]
    assert rewards.verifier(rollouts, task=chain_sum).tolist() == expected
    assert 0 < sum(expected) < 24  # some right, some wrong: the check can fail
