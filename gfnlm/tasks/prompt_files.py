"""Prompt files and prompt formatting.

Each line of a JSONL prompt file is a JSON object::

    {"question": "What is the capital of France?", "answers": ["Paris"]}

``"prompt"`` is accepted in place of ``"question"``; ``"answers"`` is optional (needed only to
score); ``"template"`` (optional) names how the question becomes the user message
(:data:`TEMPLATES`: ``short_answer``, the default, or ``plain`` for open-ended prompts such as
``gfnlm/data/creative_*.jsonl``). :func:`format_prompt` wraps a question in the model's chat
template.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gfnlm.contracts.errors import InputError, quoted

DATA_DIR = Path(__file__).parents[1] / "data"
FACTUAL_TRAIN = DATA_DIR / "factual_train.jsonl"
FACTUAL_EVAL = DATA_DIR / "factual_eval.jsonl"

PROMPT_TEMPLATE = "Answer in a few words. Question: {question}"
# How a prompt file's question becomes the user message (a line's optional "template" field).
TEMPLATES = {"short_answer": PROMPT_TEMPLATE, "plain": "{question}"}


class PromptFileError(InputError):
    """A prompt file that cannot be used; the message names the file and, where known, the line."""


def format_prompt(tokenizer: Any, question: str, template: str = "short_answer") -> str:
    """Render ``question`` as a chat prompt that asks for a short answer.

    The user message is ``"Answer in a few words. Question: <question>"``
    (``template="short_answer"``) or the question itself (``template="plain"``, for open-ended
    prompts); it is passed through
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` so the returned string ends
    where the assistant's reply begins. The string already contains the template's special tokens:
    tokenize it with ``add_special_tokens=False``.
    """
    messages = [{"role": "user", "content": TEMPLATES[template].format(question=question.strip())}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# What answer_text returns for a value that is no answer (a bool, a dict, a nested list).
NOT_AN_ANSWER = object()


def answer_text(item: Any) -> Any:
    """One gold answer as text: a string as it is (``""`` when blank), a number in its string
    form (``4`` → ``"4"``; ``72.0`` → ``"72"``, as Arrow stores an integer in a float column),
    ``""`` for a null or NaN (no answer); :data:`NOT_AN_ANSWER` for anything else (``True`` is an
    ``int`` to Python but answers nothing). Every reader of answers converts through this."""
    if item is None:
        return ""
    if isinstance(item, str):
        return item if item.strip() else ""
    if isinstance(item, bool):
        return NOT_AN_ANSWER
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):  # how pandas marks an empty CSV cell
            return ""
        return str(int(item)) if item.is_integer() else repr(item)
    return NOT_AN_ANSWER


def load_prompt_file(path: str | Path) -> list[dict]:
    """Read a JSONL prompt file into a list of records, each with a non-empty ``"question"``.

    Blank lines are skipped. A record may give its text as ``"question"`` or ``"prompt"`` (copied
    to ``"question"``); ``"template"``, when present, must name one of :data:`TEMPLATES`;
    ``"answers"``, when present, must be a non-empty list of non-empty strings or numbers (a single
    one is wrapped in a list; numbers become strings, :func:`answer_text`); whether the task can
    grade them is the task's check (:meth:`~gfnlm.tasks.base.Task.check_answers`). Other fields
    are kept as they are.

    Raises :class:`PromptFileError` (a ``ValueError``) with a one-line message naming the file and
    line for: a missing or empty file, invalid JSON, a line that is not an object, a missing
    ``"question"``/``"prompt"`` field, an empty question, an unknown ``"template"``, or malformed
    ``"answers"``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"{path}: prompt file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"{path}: cannot read prompt file ({exc})") from None
    records: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise PromptFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
        key = "question" if "question" in record else "prompt" if "prompt" in record else None
        if key is None:
            raise PromptFileError(f"{where}: missing 'question' (or 'prompt') field")
        question = record[key]
        if not isinstance(question, str):
            raise PromptFileError(
                f"{where}: {key!r} must be a string, got "
                f"{type(question).__name__} {quoted(question)}"
            )
        if not question.strip():
            raise PromptFileError(f"{where}: empty {key!r}")
        record = {**record, "question": question}
        if record.get("template", "short_answer") not in TEMPLATES:
            raise PromptFileError(
                f"{where}: template={quoted(record['template'])}: must be one of "
                f"{', '.join(TEMPLATES)}"
            )
        if "answers" in record:
            answers = record["answers"]
            if not isinstance(answers, list):  # one answer alone; anything else is refused below
                answers = [answers] if isinstance(answers, str | int | float) else None
            if not answers:
                raise PromptFileError(
                    f"{where}: 'answers' must be a non-empty list of strings or numbers"
                )
            texts = [answer_text(answer) for answer in answers]
            for answer, text in zip(answers, texts, strict=True):
                if not isinstance(text, str) or not text:
                    raise PromptFileError(
                        f"{where}: answer {quoted(answer)} must be a non-empty string or a number"
                    )
            record["answers"] = texts
        records.append(record)
    if not records:
        raise PromptFileError(f"{path}: prompt file is empty")
    return records
