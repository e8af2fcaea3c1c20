"""Prompt files, prompt formatting and answer checking for short factual question tasks.

The embedded default task ("latent knowledge") uses ``gfnlm/data/factual_train.jsonl`` (questions
only: the sharpening target needs no answers) and ``gfnlm/data/factual_eval.jsonl`` (held-out
questions with accepted answers). Each line of a prompt file is a JSON object::

    {"question": "What is the capital of France?", "answers": ["Paris"]}

``"prompt"`` is accepted in place of ``"question"``; ``"answers"`` is optional (needed only to
score); ``"template"`` (optional) names how the question becomes the user message
(:data:`TEMPLATES`: ``short_answer``, the default, or ``plain`` for open-ended prompts such as
``gfnlm/data/creative_*.jsonl``). :func:`format_prompt` wraps a question in the model's chat template and
:func:`is_correct` checks a free-text response against the accepted answers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from gfnlm.errors import InputError

# Default data files of the embedded factual task.
DATA_DIR = Path(__file__).parent / "data"
FACTUAL_TRAIN = DATA_DIR / "factual_train.jsonl"
FACTUAL_EVAL = DATA_DIR / "factual_eval.jsonl"

PROMPT_TEMPLATE = "Answer in a few words. Question: {question}"
# How a prompt file's question becomes the user message (a line's optional "template" field).
TEMPLATES = {"short_answer": PROMPT_TEMPLATE, "plain": "{question}"}


class PromptFileError(InputError):
    """A prompt file that cannot be used; the message names the file and, where known, the line."""


def format_prompt(tokenizer: Any, question: str, template: str = "short_answer") -> str:
    """Render ``question`` as a chat prompt that asks for a short answer.

    The user message is ``"Answer in a few words. Question: <question>"`` (``template=
    "short_answer"``) or the question itself (``template="plain"``, for open-ended prompts); it is passed through
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` so the returned string ends
    where the assistant's reply begins. The string already contains the template's special
    tokens: tokenize it with ``add_special_tokens=False``.
    """
    messages = [{"role": "user", "content": TEMPLATES[template].format(question=question.strip())}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_prompt_file(path: str | Path) -> list[dict]:
    """Read a JSONL prompt file into a list of records, each with a non-empty ``"question"``.

    Blank lines are skipped. A record may give its text as ``"question"`` or ``"prompt"`` (copied
    to ``"question"``); ``"template"``, when present, must name one of :data:`TEMPLATES`;
    ``"answers"``, when present, must be a non-empty list of non-empty strings
    (a single string is wrapped in a list) and each must keep some text after
    :func:`normalize_answer` (a bare ``"A"`` or ``"the"`` cannot be matched). Other fields are
    kept as they are.

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
            raise PromptFileError(f"{where}: {key!r} must be a string, got {type(question).__name__} {question!r}")
        if not question.strip():
            raise PromptFileError(f"{where}: empty {key!r}")
        record = {**record, "question": question}
        if record.get("template", "short_answer") not in TEMPLATES:
            raise PromptFileError(f"{where}: template={record['template']!r}: must be one of "
                                  f"{', '.join(TEMPLATES)}")
        if "answers" in record:
            answers = record["answers"]
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(answers, list) or not answers:
                raise PromptFileError(f"{where}: 'answers' must be a non-empty list of strings")
            for answer in answers:
                if not isinstance(answer, str) or not normalize_answer(answer):
                    raise PromptFileError(
                        f"{where}: answer {answer!r} is not a string with letters or digits "
                        "left after normalisation (articles and punctuation are dropped)"
                    )
            record["answers"] = answers
        records.append(record)
    if not records:
        raise PromptFileError(f"{path}: prompt file is empty")
    return records


_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        [
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
            "eighteen", "nineteen", "twenty",
        ]
    )
}
_NUMBER_WORDS.update(
    {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
     "eighty": "80", "ninety": "90", "hundred": "100"}
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# A full stop after one of these is not a sentence end: an initial ("J.", "F. Scott") or a
# common title/abbreviation ("Dr. Seuss", "St. Petersburg", "Mt. Everest").
_NOT_SENTENCE_END = re.compile(r"(?:\b[A-Z]|\b(?:Dr|Mr|Mrs|Ms|St|Mt|Jr|Sr|Prof|Capt|Gen))\.$")


def normalize_answer(text: str) -> str:
    """Normalise text for matching: the canonical form used by :func:`is_correct`.

    Unicode NFKD with accents removed, lower case, a full stop between digits turned into a
    space (``"3.14"`` → ``"3 14"``), apostrophes and other full stops dropped (``"Newton's"`` →
    ``"newtons"``, ``"D.C."`` → ``"dc"``), every other non-alphanumeric character turned into a
    space, the articles *a*, *an*, *the* removed, number words from zero to twenty and the tens
    up to a hundred written as digits (``"eight"`` → ``"8"``), whitespace collapsed.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"(?<=\d)\.(?=\d)", " ", text)
    text = re.sub(r"['\u2019`.]", "", text)
    text = re.sub(r"[^0-9a-z]+", " ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def _sentence_end(line: str, *, allow_end_of_text: bool) -> int | None:
    """Index of the first sentence-ending ``.``/``!``/``?`` in ``line``, or ``None``."""
    for match in _SENTENCE_END.finditer(line):
        end = match.start()
        if not allow_end_of_text and end + 1 == len(line):
            continue
        if line[end] == "." and _NOT_SENTENCE_END.search(line[: end + 1]):
            continue
        return end
    return None


def first_sentence(response: str) -> str:
    """The part of ``response`` that is scored: its first non-empty line, cut at the first
    sentence end: ``.``, ``!`` or ``?`` followed by whitespace or the end of the line, except a
    full stop after a single capital letter (an initial) or a title such as ``Dr``/``St``/``Mt``.
    """
    line = next((ln for ln in response.strip().splitlines() if ln.strip()), "")
    end = _sentence_end(line, allow_end_of_text=True)
    return line if end is None else line[:end]


def first_sentence_complete(text: str) -> bool:
    """Whether :func:`first_sentence` of ``text`` can no longer change when text is appended.

    True once the first non-empty line has ended or contains a sentence end followed by
    whitespace. Generation can stop there: nothing after it is scored by :func:`is_correct`.
    """
    text = text.lstrip()
    if "\n" in text:
        return True
    return _sentence_end(text, allow_end_of_text=False) is not None


def is_correct(response: str, answers: list[str]) -> bool:
    """Whether ``response`` gives one of the accepted ``answers``.

    Exactly what is accepted: after :func:`normalize_answer` is applied to both sides, some
    answer must occur as a whole word or whole phrase (on word boundaries) in the first sentence
    of the response (:func:`first_sentence`). So for answers ``["Paris"]`` the responses
    ``"Paris"``, ``"The capital of France is Paris."`` and ``"paris!"`` are accepted, while
    ``"Parisian"``, ``"It is Lyon. Paris is larger."`` and an empty response are not; for
    ``["8", "eight"]`` both ``"Eight legs"`` and ``"8"`` are accepted.

    Known limits, accepted for a simple and predictable metric: a first sentence that names
    several candidates (``"Paris or Lyon"``) or negates the answer (``"not Paris"``) still counts
    as correct, and a correct answer given only after the first sentence does not. Accepted
    answers should therefore not occur in the question itself (the model often restates it).

    A symbolic checker such as math-verify is not used: it decides the equivalence of
    mathematical expressions (numbers, LaTeX, sets) and has no notion of names, places or free
    text, where alias lists plus normalised phrase matching are the standard approach (as in
    SQuAD/TriviaQA-style scoring).
    """
    text = f" {normalize_answer(first_sentence(response))} "
    for answer in answers:
        norm = normalize_answer(answer)
        if norm and f" {norm} " in text:
            return True
    return False
