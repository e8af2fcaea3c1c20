"""A synthetic task where sequence-level and per-token sharpening disagree by construction.

The questions, the answer and the scorer are those of the chain-sum task
(:mod:`gfnlm.tasks.synthetic_reasoning`, graded by the registered ``chain_sum`` task): add a chain
of tagged digits mod 10. What changes is the distribution of the pre-training solutions. Each
solution first names its route, then writes the chain:

* ``work`` (probability ``work_rate``, the *rarer* first step): the correct chain, one consistent
  continuation per question::

      work a 3 b 5 = 8 c 8 = 6 A 6

* ``guess`` (probability ``1 − work_rate``, the *common* first step): the same layout, but every
  running sum is a uniformly drawn *wrong* digit (any digit but the right running sum), so its
  continuations spread over ``9^(n−1)`` different wrong variants and its answers over the 9 wrong
  digits::

      guess a 3 b 5 = 1 c 8 = 4 A 4

Both routes are ``4n + 1`` tokens long for ``n`` terms, so response length does not tell them apart.

Why the methods separate: with ``work_rate = 0.35`` the first token of a T = 1 sample is ``guess``
65 % of the time, and low temperature (T = 1/α) sharpens that first choice *further* towards
``guess`` (``0.65⁴ / (0.65⁴ + 0.35⁴) ≈ 92 %`` at α = 4), whose continuation it cannot repair: a
uniform choice among wrong digits stays uniform at any temperature. The sequence-level power
distribution ``p^α`` compares whole solutions instead: the one ``work`` chain has probability 0.35
while each ``guess`` chain has ``0.65 · 9^−(n−1)``, so ``p^α`` puts almost all of its mass on the
``work`` route, and on the right answer. :func:`gfnlm.evaluation.exact.exact_fork_comparison`
shows this exactly on the enumerable tabular model of :mod:`gfnlm.evaluation.exact`.
"""

import random
from collections import Counter

from gfnlm.tasks.synthetic_reasoning import DIGITS, LETTERS, terms

ROUTES = ("work", "guess")
WORK_RATE = 0.35


def _check_rate(work_rate: float) -> None:
    if not 0.0 <= work_rate <= 1.0:
        raise ValueError(f"work_rate={work_rate}: must be in [0, 1]")


def fork_solution(question: str, rng: random.Random, work_rate: float = WORK_RATE) -> str:
    """A pre-training solution: the ``work`` route (the correct chain) with probability
    ``work_rate``, else the ``guess`` route (every running sum a uniformly drawn wrong digit)."""
    _check_rate(work_rate)
    digits = terms(question)
    works = rng.random() < work_rate
    total = written = digits[0]
    parts = [ROUTES[0] if works else ROUTES[1], f"a {total}"]
    for i, digit in enumerate(digits[1:], start=1):
        total = (total + digit) % 10
        written = total if works else rng.choice([d for d in range(10) if d != total])
        parts.append(f"{LETTERS[i]} {digit} = {written}")
    parts.append(f"A {written}")
    return " ".join(parts)


def route_of(response: str) -> str | None:
    """The route a response takes (its first word when that is a route), else ``None``."""
    words = response.split()
    return words[0] if words and words[0] in ROUTES else None


def answer_distribution(question: str, work_rate: float = WORK_RATE) -> dict[str, float]:
    """The exact distribution of the answer of :func:`fork_solution` for ``question``: the right
    digit with probability ``work_rate``, each of the 9 wrong digits ``(1 − work_rate) / 9``.
    (For a one-term question both routes write the first digit, which is the right answer.)"""
    _check_rate(work_rate)
    digits = terms(question)
    right = str(sum(digits) % 10)
    if len(digits) == 1:
        return {d: float(d == right) for d in DIGITS}
    return {d: work_rate if d == right else (1.0 - work_rate) / 9 for d in DIGITS}


# ---------------------------------------------------------------------------------------------
# The same structure on the enumerable model


def fork_response_log_probs(setting, work_rate: float = WORK_RATE, smoothing: float = 1e-6):
    """The log-probabilities over ``setting.enumerate_responses()`` of the fork structure on an
    :class:`~gfnlm.evaluation.exact.ExactSetting` with ``V`` tokens and ``max_len = m + 2``.

    A response is a route token (0 = work, 1 = guess), ``m`` step tokens and EOS. The work route
    continues with one fixed chain (every step token 0, the right answer); the guess route with
    every step a uniformly drawn *wrong* token (1..V−1), ``(V−1)^m`` variants. The answer is the
    last step token. ``smoothing`` mass is spread uniformly over every response, so that each has
    positive probability (a table of finite logits,
    :meth:`TabularPolicy.from_response_distribution`).
    """
    import torch

    _check_rate(work_rate)
    vocab, steps = setting.vocab_size, setting.max_len - 2
    if vocab < 3 or steps < 1:
        raise ValueError(
            f"setting of {vocab} tokens, max_len {setting.max_len}: "
            "need >= 3 tokens and max_len >= 3"
        )
    responses = setting.enumerate_responses()
    ids, lengths = responses.response_ids, responses.lengths
    complete = responses.ended_with_eos & (lengths == steps + 2)
    route, chain = ids[:, 0], ids[:, 1 : steps + 1]
    work = complete & (route == 0) & (chain == 0).all(-1)
    guess = complete & (route == 1) & (chain != 0).all(-1)
    probs = torch.zeros(len(lengths), dtype=torch.float64)
    probs[work] = work_rate
    probs[guess] = (1.0 - work_rate) / (vocab - 1) ** steps
    probs = (1.0 - smoothing) * probs + smoothing / len(lengths)
    return probs.log()


def answer_marginal(setting, log_probs) -> dict[int, float]:
    """Probability of each answer (the token before EOS of a complete response) under ``log_probs``;
    answers of other responses (shorter, truncated) are pooled under ``-1``."""
    responses = setting.enumerate_responses()
    steps = setting.max_len - 2
    complete = responses.ended_with_eos & (responses.lengths == steps + 2)
    answers = responses.response_ids[:, steps].where(complete, -1)
    totals: Counter = Counter()
    for answer, p in zip(answers.tolist(), log_probs.exp().tolist(), strict=True):
        totals[answer] += p
    return dict(totals)
