"""The forks task: its solutions by hand, its answer distribution measured against the exact one,
and the exact disagreement of T = 1/α and p^α on the enumerable model (against closed forms)."""

import math
import random
from collections import Counter

import pytest

from gfnlm.evaluation.exact import exact_fork_comparison
from gfnlm.tasks import synthetic_forks as forks
from gfnlm.tasks import synthetic_reasoning as task

QUESTION = "Q a 3 b 5 c 8"  # running sums 3, 8, 6


def test_routes_by_hand():
    work = forks.fork_solution(QUESTION, random.Random(0), work_rate=1.0)
    assert work == "work a 3 b 5 = 8 c 8 = 6 A 6"
    assert forks.route_of(work) == "work" and task.is_correct(work, QUESTION)
    rng = random.Random(0)
    for _ in range(50):
        guess = forks.fork_solution(QUESTION, rng, work_rate=0.0)
        words = guess.split()
        assert forks.route_of(guess) == "guess" and len(words) == len(work.split())
        assert words[1:5] == ["a", "3", "b", "5"] and words[7:9] == [
            "c",
            "8",
        ]  # the question's digits, copied
        assert (
            words[6] != "8" and words[10] != "6" and words[12] == words[10]
        )  # every running sum wrong
        assert not task.is_correct(guess, QUESTION)
    with pytest.raises(ValueError, match="work_rate=1.5"):
        forks.fork_solution(QUESTION, rng, work_rate=1.5)


def test_generator_answer_distribution_matches_the_exact_one():
    """6,000 draws: every answer's frequency within 4 standard errors of answer_distribution, and
    the route shares with it."""
    rng, draws = random.Random(7), 6000
    solutions = [forks.fork_solution(QUESTION, rng) for _ in range(draws)]
    counts = Counter(task.extract_answer(s) for s in solutions)
    expected = forks.answer_distribution(QUESTION)
    assert expected["6"] == forks.WORK_RATE and math.isclose(sum(expected.values()), 1.0)
    for digit, p in expected.items():
        standard_error = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[digit] / draws - p) < 4 * standard_error, (
            digit,
            counts[digit] / draws,
            p,
        )
    work_share = sum(forks.route_of(s) == "work" for s in solutions) / draws
    assert abs(work_share - forks.WORK_RATE) < 4 * math.sqrt(0.35 * 0.65 / draws)
    # the right answer is the mode of the answers, but a minority of the first steps
    assert counts.most_common(1)[0][0] == "6" and work_share < 0.5


@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_exact_low_temperature_and_power_disagree(alpha):
    """On 4 tokens and 3 steps: the work chain has probability w, each of the 3³ guess chains
    (1 − w)/27. T = 1/α sharpens the first token: P(work) = w^α / (w^α + (1 − w)^α), and leaves the
    uniform guess steps uniform; p^α weighs whole chains:
    P(work) = w^α / (w^α + 27 ((1 − w)/27)^α)."""
    w = forks.WORK_RATE
    result = exact_fork_comparison(alpha, work_rate=w, vocab_size=4, steps=3)
    low_temp_work = w**alpha / (w**alpha + (1 - w) ** alpha)
    power_work = w**alpha / (w**alpha + 27 * ((1 - w) / 27) ** alpha)
    assert result["num_responses"] == 1365
    assert result["base_right"] == pytest.approx(w, abs=1e-5)
    assert result["low_temp_work_route"] == pytest.approx(low_temp_work, abs=1e-4)
    assert result["low_temp_right"] == pytest.approx(low_temp_work, abs=1e-4)
    assert result["power_right"] == pytest.approx(power_work, abs=1e-4)
    assert (
        result["base_top_answer"] == 0 and result["power_top_answer"] == 0
    )  # 0 is the right answer
    assert result["low_temp_top_answer"] != 0  # per-token sharpening ranks a wrong answer first
    assert result["low_temp_top_answer_p"] == pytest.approx((1 - low_temp_work) / 3, abs=1e-4)
    # TV(T=1/α, p^α): the two disagree on the route mass, |P_T(work) − P_pow(work)| at least
    assert result["tv_low_temp_power"] >= power_work - low_temp_work - 1e-4 > 0.6
    # both routes are equally long, so the LA-TB length tilt leaves p^α as it is
    assert result["tv_la_tb_power"] < 1e-4
