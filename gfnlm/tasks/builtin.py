"""The tasks gfnlm ships: ``factual`` (short answers to factual questions, the embedded default),
``math`` (step-by-step reasoning with a final ``\\boxed{}`` answer, graded by math-verify),
``creative`` (open-ended prompts, creative metrics) and ``chain_sum`` (the synthetic reasoning task
of the replication benchmark)."""

from collections.abc import Sequence
from typing import Any

import attrs

from gfnlm.contracts.errors import InputError
from gfnlm.contracts.registry import option, register
from gfnlm.tasks.base import Task, chat_prompt
from gfnlm.tasks.factual_answers import first_sentence, is_correct, normalize_answer
from gfnlm.tasks.prompt_files import TEMPLATES

# The prompt of Qwen2.5-Math's chain-of-thought evaluation (and of the PowerFlow paper's runs).
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def _user_message(template: str, record: dict[str, Any]) -> str:
    """A record's user message: its own ``template`` field (a name in :data:`TEMPLATES`) wins over
    the task's ``template``, which is a name in :data:`TEMPLATES` or a format string with ``{question}``."""
    chosen = record.get("template") or template
    return TEMPLATES.get(chosen, chosen).format(question=str(record["question"]).strip())


def _check_template(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in TEMPLATES and "{question}" not in value:
        raise ValueError(f"{attribute.name}={value!r}: must be one of {', '.join(TEMPLATES)} "
                         "or a format string containing {question}")


@register("task", "factual")
@attrs.frozen
class FactualTask(Task):
    """Short answers to factual questions: correct when an accepted answer occurs as a whole phrase
    in the first sentence (:func:`~gfnlm.tasks.factual_answers.is_correct`); majority voting
    compares normalised first sentences; ψ's format is a non-empty first sentence."""

    template: str = option("short_answer", "the user message: a template name (short_answer, plain) or a format string with {question}",
        validator=_check_template)
    system_prompt: str = option("", "a system message before the user message ('' = none)")

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        return chat_prompt(tokenizer, _user_message(self.template, record), self.system_prompt)

    def check_answers(self, answers: tuple[str, ...], where: str) -> None:
        for answer in answers:  # matched after normalisation: something must be left to match
            if not normalize_answer(answer):
                raise InputError(f"{where}: answer {answer!r} has no letters or digits left after "
                                 "normalisation (articles and punctuation are dropped), so nothing can match it")

    def is_correct(self, response: str, answers: Sequence[str]) -> bool:
        return is_correct(response, list(answers))

    def answer_key(self, response: str) -> str:
        return normalize_answer(first_sentence(response))

    def format_ok(self, response: str) -> bool:
        return bool(self.answer_key(response))


@register("task", "math")
@attrs.frozen
class MathTask(Task):
    """Math word problems and exercises: the model reasons step by step and puts its final answer in
    ``\\boxed{}``; the last box is compared with the gold answers by math-verify (fractions,
    decimals, LaTeX, sets and intervals are equal when their values are;
    :mod:`gfnlm.tasks.math_answers`). A response without a box is wrong; ψ's format is a closed,
    non-empty ``\\boxed{}``. The default prompt is Qwen2.5-Math's: the system message
    :data:`MATH_SYSTEM_PROMPT` and the question as the user message."""

    system_prompt: str = option(MATH_SYSTEM_PROMPT, "a system message before the user message ('' = none)")
    template: str = option("{question}", "the user message: a template name (short_answer, plain) or a format string with {question}",
        validator=_check_template)

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        return chat_prompt(tokenizer, _user_message(self.template, record), self.system_prompt)

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
class CreativeTask(Task):
    """Open-ended prompts (stories, poems, ideas): no gold answers; ``gfnlm eval`` reports the
    creative metrics of :mod:`gfnlm.tasks.metrics` (diversity, redundancy, fluency, the prompts' own checks)."""

    metrics = "creative"
    template: str = option("plain", "the user message: a template name (short_answer, plain) or a format string with {question}",
        validator=_check_template)
    system_prompt: str = option("", "a system message before the user message ('' = none)")

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        return chat_prompt(tokenizer, _user_message(self.template, record), self.system_prompt)


@register("task", "chain_sum")
@attrs.frozen
class ChainSumTask(Task):
    """The synthetic chain-sum task of the replication benchmark (:mod:`gfnlm.tasks.synthetic_reasoning`):
    the gold answer is computed from the question, the answer is the digit after the last ``A``."""

    template: str = option("short_answer", "the user message: a template name (short_answer, plain) or a format string with {question}",
        validator=_check_template)

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        return chat_prompt(tokenizer, _user_message(self.template, record))

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
