"""The Task interface: what a data set's records, prompts and answers mean.

A task owns every task-specific decision, so that the trainer, ``gfnlm eval``, the targets and the
baselines' rewards stay generic:

* how a record becomes the chat prompt (:meth:`Task.format_prompt`; system and user templates are
  options, so a user overrides them from the config),
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

from gfnlm.contracts.errors import InputError


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
        raise InputError(f"task {getattr(self, 'registry_name', type(self).__name__)!r} grades no answers "
                         "(its metrics are open-ended); choose a task with answers")

    def answer_key(self, response: str) -> str:
        """The answer a response gives, as majority voting compares it (``""`` for none)."""
        return response.strip()

    def format_ok(self, response: str) -> bool:
        """Whether a response has the task's answer format (ψ penalises the others)."""
        return bool(response.strip())
