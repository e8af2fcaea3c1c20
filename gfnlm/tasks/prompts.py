"""Prompt sets: a data set (or a bundled set's name) → task-formatted, tokenised prompts with their
gold answers."""

from typing import Any

import attrs
import torch
from transformers import PreTrainedTokenizerBase

from gfnlm.contracts.errors import ConfigError, quoted
from gfnlm.contracts.types import PromptBatch


def check_records(
    records: list[dict[str, Any]],
    spec: str,
    field: str,
    task: Any,
    require_answers: bool = False,
    answer_field: str = "answers",
) -> tuple[Any, ...]:
    """Everything about ``records`` the task decides, checked without a tokenizer or a model: the
    fields its prompt reads (:meth:`~gfnlm.tasks.base.Task.check_records`), the gold answers it
    grades and, with ``require_answers``, that every record has some. Returns each record's gold
    answers (``None`` for none); errors are one line naming ``field``, ``spec`` and the row."""
    where = f"{field}={quoted(spec)}"
    task.check_records(records, where)
    answers = tuple(task.answers_for(r) for r in records)
    for row, gold in enumerate(answers, start=1):
        if gold is not None:
            task.check_answers(gold, f"{where} row {row}")
    if require_answers and any(a is None for a in answers):
        row = next(i for i, a in enumerate(answers) if a is None) + 1
        raise ConfigError(
            f"{where}: row {row} has no answer (column {answer_field!r}; needed for evaluation)"
        )
    return answers


def default_task() -> Any:
    """The ``factual`` task with its default options (the embedded default's task)."""
    from gfnlm.contracts.registry import build

    return build("task", "factual")


@attrs.frozen
class PromptSet:
    """Questions (with optional answers), formatted with the model's chat template and tokenised."""

    questions: tuple[str, ...]
    answers: tuple[tuple[str, ...] | None, ...]
    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    pad_token_id: int

    @classmethod
    def load(
        cls,
        spec: str | Any,
        field: str,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int,
        require_answers: bool = False,
        task: Any = None,
        question_field: str = "question",
        answer_field: str = "answers",
    ) -> "PromptSet":
        """Load a data set (JSONL, parquet, JSON, CSV, a ``save_to_disk`` folder, or a bundled
        set's name; in Python also a ``datasets.Dataset`` or a list of dicts;
        :func:`~gfnlm.tasks.records.load_records`), format every record with ``task`` (default:
        the ``factual`` task) and tokenise it.

        ``field`` names the config field in error messages; gold answers the task cannot grade,
        prompts longer than ``max_tokens`` tokens and, with ``require_answers``, records without
        answers are one-line errors naming the row.
        """
        # local: tasks import this module's helpers
        from gfnlm.tasks.records import data_label, load_records

        records = load_records(
            spec, field, question_field=question_field, answer_field=answer_field
        )
        name = data_label(spec)  # a data set given in memory is named by its label
        return cls.from_records(
            records, name, field, tokenizer, max_tokens, require_answers, task, answer_field
        )

    @classmethod
    def from_records(
        cls,
        records: list[dict[str, Any]],
        spec: str,
        field: str,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int,
        require_answers: bool = False,
        task: Any = None,
        answer_field: str = "answers",
    ) -> "PromptSet":
        """:meth:`load` from records already read (:func:`~gfnlm.tasks.records.load_records`);
        ``spec`` and ``answer_field`` only name the data set in error messages."""
        task = task if task is not None else default_task()
        answers = check_records(records, spec, field, task, require_answers, answer_field)
        questions = tuple(str(r["question"]) for r in records)
        texts = tuple(task.format_prompt(tokenizer, r) for r in records)
        token_ids = tuple(tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        for i, ids in enumerate(token_ids):
            if len(ids) > max_tokens:
                raise ConfigError(
                    f"{field}={quoted(spec)}: prompt on line {i + 1} has {len(ids)} tokens, more "
                    f"than data.max_prompt_tokens={max_tokens}"
                )
        return cls(questions, answers, texts, token_ids, int(tokenizer.pad_token_id))

    def __len__(self) -> int:
        return len(self.questions)

    def head(self, count: int) -> "PromptSet":
        """The first ``count`` prompts (all of them when there are fewer)."""
        keep = slice(0, count)
        return attrs.evolve(
            self,
            questions=self.questions[keep],
            answers=self.answers[keep],
            texts=self.texts[keep],
            token_ids=self.token_ids[keep],
        )

    def batch(self, indices: list[int]) -> PromptBatch:
        """The prompts at ``indices``, left-padded to a common length."""
        width = max(len(self.token_ids[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, i in enumerate(indices):
            tokens = self.token_ids[i]
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = True
        return PromptBatch(
            prompt_ids=ids,
            prompt_mask=mask,
            prompt_index=torch.tensor(indices),
            prompt_text=tuple(self.questions[i] for i in indices),
            labels=tuple(self.answers[i] for i in indices),
        )
