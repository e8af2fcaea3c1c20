"""The tasks gfnlm ships: ``factual`` (short answers to factual questions, the embedded default),
``math`` (step-by-step reasoning with a final ``\\boxed{}`` answer, graded by math-verify),
``creative`` (open-ended prompts, creative metrics) and ``chain_sum`` (the synthetic reasoning task
of the replication benchmark)."""

import re
import string
from collections.abc import Sequence
from typing import Any

import attrs

from gfnlm.contracts.errors import InputError, quoted
from gfnlm.contracts.registry import option, register
from gfnlm.tasks.base import Task, chat_prompt, describe_fields
from gfnlm.tasks.factual_answers import first_sentence, is_correct, normalize_answer
from gfnlm.tasks.prompt_files import TEMPLATES

# The prompt of Qwen2.5-Math's chain-of-thought evaluation (and of the PowerFlow paper's runs).
TEMPLATE_HELP = ("the user message: a template name (short_answer, plain) or a format string with "
                 "{question} and, optionally, other fields of the records ({source})")
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def placeholders(template: str) -> tuple[str, ...]:
    """The record fields a format string names, in order (``{source.name}`` and ``{tags[0]}``
    name ``source`` and ``tags``); ``ValueError`` for a string that is not a format string."""
    names = (name for _, name, _, _ in string.Formatter().parse(template) if name is not None)
    return tuple(dict.fromkeys(re.split(r"[.\[]", name, maxsplit=1)[0] for name in names))


def _user_message(template: str, record: dict[str, Any]) -> str:
    """A record's user message: its own ``template`` field (a name in :data:`TEMPLATES`) wins over
    the task's ``template``, which is a name in :data:`TEMPLATES` or a format string with
    ``{question}`` and, optionally, other fields of the record (``{source}``)."""
    chosen = record.get("template") or template
    fields = {**record, "question": str(record["question"]).strip()}
    return TEMPLATES.get(chosen, chosen).format_map(fields)


def _check_template(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    """A template name, or a format string naming ``{question}`` and only record fields by name
    (whether the records have them is :meth:`TemplatedTask.check_record`'s check, at load time)."""
    if not isinstance(value, str):  # `template={question}` on the command line is a YAML mapping
        raise TypeError(f"{attribute.name}={quoted(value)}: must be a string (on the command line, "
                        "quote a template with braces: task.options.template='\"Q: {question}\"')")
    if value in TEMPLATES:
        return
    try:
        names = placeholders(value)
    except ValueError as error:  # "Single '}' encountered in format string"
        raise ValueError(f"{attribute.name}={quoted(value)}: not a valid format string ({error}); "
                         "write a literal brace as {{ or }}") from None
    if "question" not in names:
        raise ValueError(f"{attribute.name}={quoted(value)}: must be one of {', '.join(TEMPLATES)} "
                         "or a format string containing {question}")
    unnamed = [name for name in names if not name.isidentifier()]
    if unnamed:
        raise ValueError(f"{attribute.name}={quoted(value)}: placeholder {{{unnamed[0]}}} must "
                         "name a field of the records, e.g. {question} or {source}")


class TemplatedTask(Task):
    """A task whose user message is its ``template`` option (or a record's own ``template``)
    filled with the record's fields: a record must have every field the template names."""

    template: str

    def check_record(self, record: dict[str, Any], where: str) -> None:
        chosen = record.get("template") or self.template
        if chosen != self.template and chosen not in TEMPLATES:  # JSONL files: checked on reading
            raise InputError(f"{where}: template={quoted(chosen)}: must be one of "
                             f"{', '.join(TEMPLATES)}")
        fields = placeholders(TEMPLATES.get(chosen, chosen))
        missing = [name for name in fields if name not in record]
        if missing:
            raise InputError(f"task.options.template={quoted(self.template)}: placeholder "
                             f"{{{missing[0]}}} is not a field of {where}; its fields: "
                             f"{describe_fields(record)}")


@register("task", "factual")
@attrs.frozen
class FactualTask(TemplatedTask):
    """Short answers to factual questions: correct when an accepted answer occurs as a whole phrase
    in the first sentence (:func:`~gfnlm.tasks.factual_answers.is_correct`); majority voting
    compares normalised first sentences; ψ's format is a non-empty first sentence."""

    template: str = option("short_answer", TEMPLATE_HELP, validator=_check_template)
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
class MathTask(TemplatedTask):
    """Math word problems and exercises: the model reasons step by step and puts its final answer in
    ``\\boxed{}``; the last box is compared with the gold answers by math-verify (fractions,
    decimals, LaTeX, sets and intervals are equal when their values are;
    :mod:`gfnlm.tasks.math_answers`). A response without a box is wrong; ψ's format is a closed,
    non-empty ``\\boxed{}``. The default prompt is Qwen2.5-Math's: the system message
    :data:`MATH_SYSTEM_PROMPT` and the question as the user message."""

    system_prompt: str = option(MATH_SYSTEM_PROMPT, "a system message before the user message ('' = none)")
    template: str = option("{question}", TEMPLATE_HELP, validator=_check_template)

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
class CreativeTask(TemplatedTask):
    """Open-ended prompts (stories, poems, ideas): no gold answers; ``gfnlm eval`` reports the
    creative metrics of :mod:`gfnlm.tasks.metrics` (diversity, redundancy, fluency, the prompts' own checks)."""

    metrics = "creative"
    template: str = option("plain", TEMPLATE_HELP, validator=_check_template)
    system_prompt: str = option("", "a system message before the user message ('' = none)")

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        return chat_prompt(tokenizer, _user_message(self.template, record), self.system_prompt)


@register("task", "chain_sum")
@attrs.frozen
class ChainSumTask(TemplatedTask):
    """The synthetic chain-sum task of the replication benchmark (:mod:`gfnlm.tasks.synthetic_reasoning`):
    the gold answer is computed from the question, the answer is the digit after the last ``A``."""

    template: str = option("short_answer", TEMPLATE_HELP, validator=_check_template)

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        return chat_prompt(tokenizer, _user_message(self.template, record))

    def check_record(self, record: dict[str, Any], where: str) -> None:
        from gfnlm.tasks.synthetic_reasoning import terms

        super().check_record(record, where)
        try:
            terms(str(record["question"]))
        except ValueError:
            question = quoted(str(record["question"]), limit=60)
            raise InputError(f"{where}: task 'chain_sum' reads questions 'Q a 3 b 5 ...' (digits "
                             f"tagged by letters), got {question}; the row has: "
                             f"{describe_fields(record)}") from None

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
