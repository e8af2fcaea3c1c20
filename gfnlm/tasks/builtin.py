"""The tasks gfnlm ships: ``factual`` (short answers to factual questions, the embedded default),
``math`` (step-by-step reasoning with a final ``\\boxed{}`` answer, graded by math-verify),
``creative`` (open-ended prompts, creative metrics) and ``chain_sum`` (the synthetic reasoning task
of the replication benchmark)."""

from collections.abc import Sequence
from typing import Any

import attrs

from gfnlm.contracts.errors import InputError, quoted
from gfnlm.contracts.registry import register
from gfnlm.tasks.base import ChatTask, describe_fields, system_prompt_option, template_option
from gfnlm.tasks.factual_answers import answer_key as factual_answer_key
from gfnlm.tasks.factual_answers import is_correct, normalize_answer

# The prompt of Qwen2.5-Math's chain-of-thought evaluation (and of the PowerFlow paper's runs).
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@register("task", "factual")
@attrs.frozen
class FactualTask(ChatTask):
    """Short answers to factual questions: correct when an accepted answer occurs as a whole phrase
    in the first sentence (:func:`~gfnlm.tasks.factual_answers.is_correct`); majority voting
    compares normalised first sentences; ψ's format is a non-empty first sentence."""

    template: str = template_option("short_answer")

    def check_answers(self, answers: tuple[str, ...], where: str) -> None:
        for answer in answers:  # matched after normalisation: something must be left to match
            if not normalize_answer(answer):
                raise InputError(
                    f"{where}: answer {answer!r} has no letters or digits left after "
                    "normalisation (articles and punctuation are dropped), so nothing can match it"
                )

    def is_correct(self, response: str, answers: Sequence[str]) -> bool:
        return is_correct(response, list(answers))

    def answer_key(self, response: str) -> str:
        return factual_answer_key(response)

    def format_ok(self, response: str) -> bool:
        return bool(self.answer_key(response))


@register("task", "math")
@attrs.frozen
class MathTask(ChatTask):
    """Math word problems and exercises: the model reasons step by step and puts its final answer in
    ``\\boxed{}``; the last box is compared with the gold answers by math-verify (fractions,
    decimals, LaTeX, sets and intervals are equal when their values are;
    :mod:`gfnlm.tasks.math_answers`). A response without a box is wrong; ψ's format is a closed,
    non-empty ``\\boxed{}``. The default prompt is Qwen2.5-Math's: the system message
    :data:`MATH_SYSTEM_PROMPT` and the question as the user message."""

    default_max_new_tokens = 1024  # worked solutions; 24 tokens cut every one off before its box
    system_prompt: str = system_prompt_option(MATH_SYSTEM_PROMPT)

    def check_answers(self, answers: tuple[str, ...], where: str) -> None:
        from gfnlm.tasks import math_answers

        for answer in answers:
            math_answers.parse_gold(answer, where)

    def is_correct(self, response: str, answers: Sequence[str]) -> bool:
        from gfnlm.tasks import math_answers

        return math_answers.is_equivalent(response, answers)

    def answer_key(self, response: str) -> str:
        from gfnlm.tasks import math_answers

        return math_answers.answer_key(response) or ""

    def format_ok(self, response: str) -> bool:
        from gfnlm.tasks import math_answers

        return math_answers.format_ok(response)


@register("task", "creative")
@attrs.frozen
class CreativeTask(ChatTask):
    """Open-ended prompts (stories, poems, ideas): no gold answers; ``gfnlm eval`` reports the
    creative metrics of :mod:`gfnlm.tasks.metrics` (diversity, redundancy, fluency, the prompts' own
    checks)."""

    metrics = "creative"
    template: str = template_option("plain")


@register("task", "chain_sum")
@attrs.frozen
class ChainSumTask(ChatTask):
    """The synthetic chain-sum task of the replication benchmark
    (:mod:`gfnlm.tasks.synthetic_reasoning`): the gold answer is computed from the question, the
    answer is the digit after the last ``A``."""

    template: str = template_option("short_answer")
    # Its prompts have no system message, and it has no system_prompt option (init=False).
    system_prompt: str = attrs.field(default="", init=False, repr=False)

    def check_record(self, record: dict[str, Any], where: str) -> None:
        from gfnlm.tasks.synthetic_reasoning import terms

        super().check_record(record, where)
        try:
            terms(str(record["question"]))
        except ValueError:
            question = quoted(str(record["question"]), limit=60)
            raise InputError(
                f"{where}: task 'chain_sum' reads questions 'Q a 3 b 5 ...' (digits "
                f"tagged by letters), got {question}; the row has: "
                f"{describe_fields(record)}"
            ) from None

    def answers_for(self, record: dict[str, Any]) -> tuple[str, ...]:
        from gfnlm.tasks.synthetic_reasoning import solve

        return (solve(str(record["question"])),)

    def is_correct(self, response: str, answers: Sequence[str]) -> bool:
        from gfnlm.tasks.synthetic_reasoning import extract_answer

        return extract_answer(response) in answers

    def answer_key(self, response: str) -> str:
        from gfnlm.tasks.synthetic_reasoning import answer_key

        return answer_key(response)

    def format_ok(self, response: str) -> bool:
        return bool(self.answer_key(response))
