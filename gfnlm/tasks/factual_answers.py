"""Answer checking for short factual questions: normalisation and whole-phrase matching in the
first sentence of a response (:func:`is_correct`), the checker of the ``factual`` task."""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_NUMBER_WORDS.update(
    {
        "thirty": "30",
        "forty": "40",
        "fifty": "50",
        "sixty": "60",
        "seventy": "70",
        "eighty": "80",
        "ninety": "90",
        "hundred": "100",
    }
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


def answer_key(response: str) -> str:
    """What majority voting compares on the factual task: the normalised first sentence."""
    return normalize_answer(first_sentence(response))
