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
``task.options``); see the "Write a task" guide.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

from jinja2 import TemplateError

from gfnlm.contracts.errors import InputError, quoted, shortened


def chat_prompt(tokenizer: Any, user: str, system: str = "") -> str:
    """``user`` (after an optional ``system`` message) through the tokenizer's chat template, ending
    where the assistant's reply begins. A template without a system role (e.g. Gemma's) gets the
    system text at the start of the user message instead."""
    messages = [{"role": "user", "content": user}]
    if system:
        try:
            return tokenizer.apply_chat_template([{"role": "system", "content": system}, *messages],
                                                 tokenize=False, add_generation_prompt=True)
        except TemplateError:
            messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class Task:
    """Base class of the registered tasks (attrs classes whose fields are the task's options)."""

    metrics: ClassVar[str] = "accuracy"  # "accuracy": graded answers; "creative": open-ended metrics
    # The record fields format_prompt and answers_for read: a record without one is refused when
    # the data set loads, naming the field and the fields the record has.
    required_fields: ClassVar[tuple[str, ...]] = ("question",)

    def check_records(self, records: Sequence[dict[str, Any]], where: str) -> None:
        """Raise :class:`~gfnlm.contracts.errors.InputError` (one line naming ``where``, the row,
        the missing fields and the fields the row has) when a record lacks a field of
        :attr:`required_fields`, then let :meth:`check_record` look at each record. Called when a
        data set loads, so a data set the task cannot read fails before any model does."""
        for row, record in enumerate(records, start=1):
            missing = [name for name in self.required_fields if name not in record]
            if missing:
                raise InputError(f"{where} row {row}: task {task_label(self)} needs the field(s) "
                                 f"{', '.join(missing)}; the row has: {describe_fields(record)}")
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
        """Raise :class:`~gfnlm.contracts.errors.InputError` naming ``where`` when a gold answer cannot be graded."""

    def is_correct(self, response: str, answers: Sequence[str]) -> bool:
        """Whether ``response`` gives one of the gold ``answers``."""
        raise InputError(f"task {task_label(self)} grades no answers "
                         "(its metrics are open-ended); choose a task with answers")

    def answer_key(self, response: str) -> str:
        """The answer a response gives, as majority voting compares it (``""`` for none)."""
        return response.strip()

    def format_ok(self, response: str) -> bool:
        """Whether a response has the task's answer format (ψ penalises the others)."""
        return bool(response.strip())


def describe_fields(record: dict[str, Any]) -> str:
    """A record's field names for a one-line message (the first ten, then how many more)."""
    names = [str(name) for name in record]
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return ", ".join(shortened(name, limit=40) for name in names[:10]) + more


def task_label(task: Any) -> str:
    """A task's registered name, quoted, for messages."""
    return quoted(getattr(task, "registry_name", type(task).__name__))
