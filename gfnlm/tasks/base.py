"""The Task interface: what a data set's records, prompts and answers mean.

A task owns every task-specific decision, so that the trainer, ``gfnlm eval``, the targets and the
baselines' rewards stay generic:

* how a record becomes the chat prompt (:meth:`Task.format_prompt`; system and user templates are
  options, so a user overrides them from the config), and which record fields that reads
  (:attr:`Task.required_fields`, checked against a data set's records when it loads, before any
  model, by :meth:`Task.check_records`),
* the gold answers a record carries (:meth:`Task.answers_for`, checked at load time by
  :meth:`Task.check_answers`): labels travel with the prompts through the batch
  (``PromptBatch.labels`` → ``Rollouts.labels``), never looked up by text,
* how a response is graded (:meth:`Task.is_correct`) and which answer it gives
  (:meth:`Task.answer_key`, what majority voting and answer clusters compare),
* what the format penalty ψ checks (:meth:`Task.format_ok`),
* which metrics ``gfnlm eval`` reports (:attr:`Task.metrics`: ``accuracy`` or ``creative``).

Tasks register under the kind ``task`` and are chosen with ``task.name`` (options in
``task.options``); see the "Write a task" guide. A task whose user message is a format string of the
record's fields subclasses :class:`ChatTask`, which owns the ``template`` and ``system_prompt``
options, their checks and :meth:`ChatTask.format_prompt`.
"""

import re
import string
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
from jinja2 import TemplateError

from gfnlm.contracts.errors import InputError, quoted, shortened
from gfnlm.contracts.registry import component_name, option
from gfnlm.tasks.prompt_files import TEMPLATES

TEMPLATE_HELP = (
    "the user message: a template name (short_answer, plain) or a format string with "
    "{question} and, optionally, other fields of the records ({source})"
)
SYSTEM_PROMPT_HELP = "a system message before the user message ('' = none)"


def chat_prompt(tokenizer: Any, user: str, system: str = "") -> str:
    """``user`` (after an optional ``system`` message) through the tokenizer's chat template, ending
    where the assistant's reply begins. A template without a system role (e.g. Gemma's) gets the
    system text at the start of the user message instead."""
    messages = [{"role": "user", "content": user}]
    if system:
        try:
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, *messages],
                tokenize=False,
                add_generation_prompt=True,
            )
        except TemplateError:
            messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class Task:
    """Base class of the registered tasks (attrs classes whose fields are the task's options)."""

    metrics: ClassVar[str] = (
        "accuracy"  # "accuracy": graded answers; "creative": open-ended metrics
    )
    # The record fields format_prompt and answers_for read: a record without one is refused when
    # the data set loads, naming the field and the fields the record has.
    required_fields: ClassVar[tuple[str, ...]] = ("question",)
    # The response length ``gfnlm eval --task NAME`` samples when neither --max-new-tokens nor the
    # run (a run of this very task) sets one; None: the run's (or default) sampling.max_new_tokens.
    default_max_new_tokens: ClassVar[int | None] = None

    def check_records(self, records: Sequence[dict[str, Any]], where: str) -> None:
        """Raise :class:`~gfnlm.contracts.errors.InputError` (one line naming ``where``, the row,
        the missing fields and the fields the row has) when a record lacks a field of
        :attr:`required_fields`, then let :meth:`check_record` look at each record. Called when a
        data set loads, so a data set the task cannot read fails before any model does."""
        for row, record in enumerate(records, start=1):
            missing = [name for name in self.required_fields if name not in record]
            if missing:
                raise InputError(
                    f"{where} row {row}: task {task_label(self)} needs the field(s) "
                    f"{', '.join(missing)}; the row has: {describe_fields(record)}"
                )
            self.check_record(record, f"{where} row {row}")

    def check_record(self, record: dict[str, Any], where: str) -> None:
        """Raise :class:`~gfnlm.contracts.errors.InputError` naming ``where`` when a record has
        the task's fields but values it cannot read (none by default)."""

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        """The chat prompt of one record (``record["question"]`` and any other fields it has)."""
        raise NotImplementedError

    def answers_for(self, record: dict[str, Any]) -> tuple[str, ...] | None:
        """The gold answers of a record (``None`` without any): its ``answers`` by default."""
        answers = record.get("answers")
        return tuple(answers) if answers else None

    def check_answers(self, answers: tuple[str, ...], where: str) -> None:
        """Raise :class:`~gfnlm.contracts.errors.InputError` naming ``where`` when a gold answer
        cannot be graded."""

    def is_correct(self, response: str, answers: Sequence[str]) -> bool:
        """Whether ``response`` gives one of the gold ``answers``."""
        raise InputError(
            f"task {task_label(self)} grades no answers "
            "(its metrics are open-ended); choose a task with answers"
        )

    def answer_key(self, response: str) -> str:
        """The answer a response gives, as majority voting compares it (``""`` for none)."""
        return response.strip()

    def format_ok(self, response: str) -> bool:
        """Whether a response has the task's answer format (ψ penalises the others)."""
        return bool(response.strip())


def placeholders(template: str) -> tuple[str, ...]:
    """The record fields a format string names, in order (``{source.name}`` and ``{tags[0]}``
    name ``source`` and ``tags``); ``ValueError`` for a string that is not a format string."""
    names = (name for _, name, _, _ in string.Formatter().parse(template) if name is not None)
    return tuple(dict.fromkeys(re.split(r"[.\[]", name, maxsplit=1)[0] for name in names))


def _check_template(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    """A template name, or a format string naming ``{question}`` and only record fields by name
    (whether the records have them is :meth:`ChatTask.check_record`'s check, at load time)."""
    if not isinstance(value, str):  # `template={question}` on the command line is a YAML mapping
        raise TypeError(
            f"{attribute.name}={quoted(value)}: must be a string (on the command line, "
            "quote a template with braces: task.options.template='\"Q: {question}\"')"
        )
    if value in TEMPLATES:
        return
    try:
        names = placeholders(value)
    except ValueError as error:  # "Single '}' encountered in format string"
        raise ValueError(
            f"{attribute.name}={quoted(value)}: not a valid format string ({error}); "
            "write a literal brace as {{ or }}"
        ) from None
    if "question" not in names:
        raise ValueError(
            f"{attribute.name}={quoted(value)}: must be one of {', '.join(TEMPLATES)} "
            "or a format string containing {question}"
        )
    unnamed = [name for name in names if not name.isidentifier()]
    if unnamed:
        raise ValueError(
            f"{attribute.name}={quoted(value)}: placeholder {{{unnamed[0]}}} must "
            "name a field of the records, e.g. {question} or {source}"
        )


def template_option(default: str = "{question}") -> str:
    """The ``template`` option of a :class:`ChatTask`, checked when the task is built; a subclass
    changes its default by declaring ``template: str = template_option("...")``."""
    return option(default, TEMPLATE_HELP, validator=_check_template, kw_only=True)


def system_prompt_option(default: str = "") -> str:
    """The ``system_prompt`` option of a :class:`ChatTask` (``""``: no system message); a subclass
    changes its default by declaring ``system_prompt: str = system_prompt_option("...")``."""
    return option(default, SYSTEM_PROMPT_HELP, kw_only=True)


@attrs.frozen
class ChatTask(Task):
    """A task whose prompt is one user message, its ``template`` filled with the record's fields
    (a record's own ``template`` field, a name in :data:`TEMPLATES`, wins), after the
    ``system_prompt`` if there is one, through the tokenizer's chat template.

    ``template`` is a template name or a format string with ``{question}`` and, optionally, other
    fields of the records (``{source}``), checked when the task is built; that the records have
    those fields is checked when a data set loads (:meth:`check_record`). Both options are
    keyword-only, so a subclass may add its own, required ones among them. Subclass it with
    ``@attrs.frozen``, change a default with :func:`template_option` / :func:`system_prompt_option`,
    and add the grading methods of :class:`Task`."""

    template: str = template_option()
    system_prompt: str = system_prompt_option()

    def format_prompt(self, tokenizer: Any, record: dict[str, Any]) -> str:
        """:meth:`user_message` after the ``system_prompt``, through the chat template."""
        return chat_prompt(tokenizer, self.user_message(record), self.system_prompt)

    def user_message(self, record: dict[str, Any]) -> str:
        """The record's user message: its own ``template`` field (a name in :data:`TEMPLATES`)
        or else the task's ``template``, filled with the record's fields (``question`` stripped of
        surrounding whitespace)."""
        chosen = record.get("template") or self.template
        fields = {**record, "question": str(record["question"]).strip()}
        return TEMPLATES.get(chosen, chosen).format_map(fields)

    def check_record(self, record: dict[str, Any], where: str) -> None:
        """A record's own ``template`` must be a template name, and the record must have every
        field the template it is formatted with names."""
        chosen = record.get("template") or self.template
        if chosen != self.template and chosen not in TEMPLATES:  # JSONL files: checked on reading
            raise InputError(
                f"{where}: template={quoted(chosen)}: must be one of {', '.join(TEMPLATES)}"
            )
        fields = placeholders(TEMPLATES.get(chosen, chosen))
        missing = [name for name in fields if name not in record]
        if missing:
            raise InputError(
                f"task.options.template={quoted(self.template)}: placeholder "
                f"{{{missing[0]}}} is not a field of {where}; its fields: "
                f"{describe_fields(record)}"
            )


def describe_fields(record: dict[str, Any]) -> str:
    """A record's field names for a one-line message (the first ten, then how many more)."""
    names = [str(name) for name in record]
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return ", ".join(shortened(name, limit=40) for name in names[:10]) + more


def task_label(task: Any) -> str:
    """A task's registered name, quoted, for messages."""
    return quoted(component_name(task))
