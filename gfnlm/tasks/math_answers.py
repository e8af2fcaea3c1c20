"""Grading of math answers (MATH / GSM8K style) with math-verify: pure functions, no model.

**What is extracted.** A response's answer is the content of its *last* ``\\boxed{...}``
(``\\boxed {...}`` and ``\\fbox{...}`` count too), found by brace counting so nested braces
(``\\boxed{\\frac{\\sqrt{3}}{2}}``) survive; escaped braces ``\\{``/``\\}`` are content, not
delimiters, so ``\\boxed{\\{1,2\\}}`` gives ``\\{1,2\\}``. A response without a box, or whose
last box is never closed, has no answer and is graded wrong even when the right number appears
in its text: that is the standard Qwen2.5-Math grading (answers must be boxed), and it is what
the format check :func:`format_ok` rewards. Boxes without braces (``\\boxed 5``) are not
recognised. Boxed contents longer than :data:`MAX_ANSWER_CHARS` are not parsed (no MATH answer is
that long, and sympy's work grows with them).

**What counts as equal.** The boxed content and each gold answer are parsed the same way by
math-verify (``math_verify.parse``, LaTeX extraction of ``\\boxed{<content>}``; Python's ``**`` is
read as ``^``) into sympy objects and compared with ``math_verify.verify(gold, prediction)``; any
matching gold answer is enough. math-verify (0.9.0) decides, among others:

* numbers in any notation: ``\\frac{1}{2}`` = ``\\dfrac12`` = ``1/2`` = ``0.5``;
  ``1,000`` = ``1000``; ``18.0`` = ``18``; ``−3`` (Unicode minus) = ``-3``; floats match a
  fraction when they agree to 6 decimal places (``0.333333`` = ``1/3``, but ``0.33`` ≠ ``1/3``);
* symbolic equality after simplification: ``\\sqrt{8}`` = ``2\\sqrt{2}``,
  ``\\pi/2`` = ``\\frac{\\pi}{2}``;
* sets are unordered (``\\{1,2\\}`` = ``\\{2,1\\}``, and a bare list ``1, 2`` is a set),
  intervals compare ends and brackets (``[1,3)`` ≠ ``[1,3]``; ``(1,2)`` is read as an open
  interval), tuples are ordered;
* an assignment matches its value (``x=3`` = ``3``, both ways), ``x=5`` ≠ ``y=5``;
* units and decorations are dropped, as the MATH grader drops them: ``5\\text{ cm}`` = ``5``
  (so a wrong unit is not noticed: ``5\\text{ m}`` = ``5\\text{ cm}``), ``\\$18`` = ``18``,
  ``90^\\circ`` = ``90`` (degrees are *not* converted to radians: ``90^\\circ`` ≠
  ``\\frac{\\pi}{2}``), ``\\text{(B)}`` = ``(B)`` = ``B``;
* percentages: ``50\\%`` matches both ``50`` (the MATH convention strips ``\\%``) and ``0.5`` (its
  value).

**Limits.** Words outside ``\\text{}`` other than common unit names are read as products of
symbols (``5 cm`` = ``5``, but ``10 dollars`` ≠ ``10``); a trailing full stop makes the box
unparseable (``\\boxed{7.}`` is wrong; the MATH grader, which compares normalised strings, rejects
it too). Bounded time: math-verify interrupts parsing and each comparison with ``signal.alarm``
after :data:`PARSE_TIMEOUT_S` / :data:`VERIFY_TIMEOUT_S` seconds (a timed-out comparison is
"not equal"), which only works in the main thread of the main interpreter — elsewhere
math-verify 0.9.0 raises ``ValueError`` instead of grading. In other threads these functions
therefore pass ``None`` (no timeout), and only the length cap bounds the work: an adversarial
answer such as ``\\boxed{10^{10^{10}}}`` can then run for a very long time, so grade in the main
thread or in worker *processes*. In the main thread, an alarm the caller had set (e.g.
pytest-timeout's) is re-armed after each call, since math-verify cancels it.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import sympy
from math_verify import LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout

from gfnlm.contracts.errors import InputError

PARSE_TIMEOUT_S = 2
"""Seconds math-verify may spend parsing one answer (``signal.alarm`` takes whole seconds)."""
VERIFY_TIMEOUT_S = 2
"""Seconds math-verify may spend on one (gold, prediction) comparison; past it: not equal."""
MAX_ANSWER_CHARS = 1000
"""Boxed contents longer than this are not parsed: never equivalent, keyed by their text."""

# `\boxed{`, `\boxed {` and `\fbox{`; the brace is in the match, so the content starts at .end().
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# LaTeX extraction of `\boxed{<answer>}`, boxed first. No ExprExtractionConfig fallback: it takes
# the first number-like piece of text that LaTeX rejects (`1..2` -> 1), which would hide bad golds.
_LATEX = [LatexExtractionConfig(boxed_match_priority=0)]


def last_boxed(response: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` of ``response``, braces balanced.

    ``None`` when there is no box or the last one is never closed. A backslash escapes the next
    character, so ``\\{`` and ``\\}`` are kept as content and do not count as braces.
    """
    last = None
    for last in _BOX_OPEN.finditer(response):
        pass
    if last is None:
        return None
    start = last.end()
    depth = 1
    i = start
    while i < len(response):
        ch = response[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return response[start:i]
        i += 1
    return None


def format_ok(response: str) -> bool:
    """Whether the last ``\\boxed{}`` of ``response`` is closed and holds some non-blank text.

    This is the format the ψ penalty checks for the math task: it says nothing about correctness.
    """
    content = last_boxed(response)
    return content is not None and content.strip() != ""


def _in_main_thread() -> bool:
    # signal.signal (used by math-verify's timeout) raises ValueError outside the main thread.
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _outer_alarm_kept() -> Iterator[None]:
    """Re-arm the caller's ITIMER_REAL alarm after math-verify, which cancels it with alarm(0)."""
    delay, interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    try:
        yield
    finally:
        if delay > 0:
            left = delay - (time.monotonic() - started)
            # An alarm that came due while math-verify held the timer fires right away instead.
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


def _timeouts() -> tuple[int | None, int | None]:
    """(parsing, comparison) timeouts for math-verify: ``None`` outside the main thread."""
    if _in_main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


def _parse_answer(answer: str) -> list:
    """math-verify's parse of one bare answer: a list with one sympy object, or empty.

    The answer is parsed as the content of a box, so gold answers and predictions go through the
    same path (a gold answer, boxed, always matches itself). Python's ``**`` (``3**2``), which
    LaTeX parsing rejects, is read as ``^``.
    """
    parse_timeout, _ = _timeouts()
    text = "\\boxed{" + answer.replace("**", "^") + "}"
    try:
        with _outer_alarm_kept() if parse_timeout else contextlib.nullcontext():
            return parse(
                text,
                extraction_config=_LATEX,
                fallback_mode="no_fallback",
                parsing_timeout=parse_timeout,
            )
    except Exception:  # noqa: BLE001 - math-verify catches its own; a second net for model text
        return []


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple:
    """Cached :func:`_parse_answer` for gold answers and boxed contents alike: a response graded
    and then keyed is parsed once, and a parse that timed out stays "unparseable" for the process
    instead of costing the time again."""
    return tuple(_parse_answer(answer))


def parse_gold(answer: str, where: str) -> list:
    """math-verify's parse of the gold ``answer`` (a one-element list of sympy objects).

    Gold answers are usually bare (``1/2``, ``\\frac{1}{2}``, ``0.5``, ``[1,3)``, ``\\{1,2\\}``,
    ``5\\text{ cm}``, ``x=3``): each is parsed as the content of a ``\\boxed{}``, exactly as a
    prediction is, by math-verify's LaTeX parser, which reads plain expressions (``1/2``, ``2*3``,
    ``2^10``) too. Junk around a number is not forgiven (``7.`` and ``1..2`` are rejected).
    Raises :class:`~gfnlm.contracts.errors.InputError` naming ``where`` (e.g. ``data.eval row 12``)
    when math-verify cannot parse it. Results are cached by string.
    """
    parsed = _parsed(answer) if isinstance(answer, str) else ()
    if not parsed:
        raise InputError(f"{where}: answer {answer!r} cannot be parsed as math (math-verify)")
    return list(parsed)


def _parsed_prediction(response: str) -> list | None:
    """The parsed last box of ``response``; ``None`` when there is no usable boxed answer."""
    content = last_boxed(response)
    if content is None or not content.strip() or len(content) > MAX_ANSWER_CHARS:
        return None
    return list(_parsed(content)) or None


def is_equivalent(response: str, gold_answers: Sequence[str]) -> bool:
    """Whether the last ``\\boxed{}`` of ``response`` is equal to one of ``gold_answers``.

    No box (or an unclosed, empty or unparseable one) is ``False``: the standard Qwen2.5-Math
    grading, which grades only boxed answers. Model text never makes this raise (math-verify's
    errors and timeouts count as "not equal"); a gold answer math-verify cannot parse raises
    :class:`~gfnlm.contracts.errors.InputError`, as :func:`parse_gold` does (validate gold answers
    when loading data so this never happens mid-run).
    """
    golds = [parse_gold(answer, "gold answer") for answer in gold_answers]
    try:
        prediction = _parsed_prediction(response)
        if prediction is None:
            return False
        _, verify_timeout = _timeouts()
        with _outer_alarm_kept() if verify_timeout else contextlib.nullcontext():
            return any(verify(gold, prediction, timeout_seconds=verify_timeout) for gold in golds)
    except Exception:  # noqa: BLE001 - model text must never crash grading: not equal
        return False


def _canonical_scalar(expr: Any) -> Any:
    """Evaluate, make floats exact decimals, simplify and expand one sympy expression."""
    expr = expr.doit()  # percentages (50 * 1/100 kept unevaluated by the parser) become 1/2
    expr = expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
    expr = sympy.simplify(expr)
    return sympy.expand(expr) if isinstance(expr, sympy.Expr) else expr


def _canonical(expr: Any) -> Any:
    """A canonical form of a parsed answer: containers rebuilt from canonical elements."""
    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs  # math-verify grades `x = 3` as its value 3
    if isinstance(expr, sympy.MatrixBase):
        return expr.applyfunc(_canonical_scalar)
    if isinstance(expr, sympy.FiniteSet):  # sympy's FiniteSet orders its elements
        return sympy.FiniteSet(*(_canonical(arg) for arg in expr.args))
    if isinstance(expr, sympy.Tuple):
        return sympy.Tuple(*(_canonical(arg) for arg in expr.args))
    if isinstance(expr, sympy.Interval):
        return sympy.Interval(
            _canonical(expr.start), _canonical(expr.end), expr.left_open, expr.right_open
        )
    return _canonical_scalar(expr)


def _canonical_str(expr: Any) -> str:
    """``str`` of :func:`_canonical`, falling back to ``str(expr)`` when sympy fails."""
    try:
        return str(_canonical(expr))
    except Exception:  # noqa: BLE001 - sympy fails on odd parses: keep the parsed form
        return str(expr)


def answer_key(response: str) -> str | None:
    """A canonical string of the last boxed answer, for majority voting and answer clustering.

    The boxed content is parsed by math-verify and rendered as ``str`` of a canonical sympy form
    (assignments reduced to their value, percentages evaluated, floats made exact, simplified,
    expanded; sets and tuples canonicalised element-wise), so ``\\frac{1}{2}``, ``1/2``, ``0.5``
    and ``50\\%`` all give ``"1/2"``, and ``\\{2,1\\}`` and ``\\{1,2\\}`` give ``"{1, 2}"``.
    ``None`` when there is no closed, non-empty box. A box math-verify cannot parse (or longer than
    :data:`MAX_ANSWER_CHARS`) is keyed by its whitespace-normalised text.

    Limits: keys compare exactly where :func:`is_equivalent` has tolerances and conventions, so
    some answers it grades equal get different keys: ``0.333333`` and ``1/3`` (equal to 6
    decimals), ``50\\%`` (``"1/2"``) and ``50``, and expressions that sympy's simplification does
    not bring to one form (some trigonometric identities). Conversely assignments lose their
    variable, so ``x=5`` and ``y=5`` share the key ``"5"`` though ``is_equivalent`` tells them
    apart; units are dropped as in grading (``5\\text{ cm}`` and ``5\\text{ m}`` give ``"5"``).
    Simplification runs under the same main-thread timeout as parsing; past it the unsimplified
    form is used.
    """
    content = last_boxed(response)
    if content is None or not content.strip():
        return None
    text_key = " ".join(content.split())
    parsed = _parsed_prediction(response)
    if not parsed:
        return text_key
    limit, _ = _timeouts()
    try:
        with _outer_alarm_kept() if limit else contextlib.nullcontext():
            return timeout(timeout_seconds=limit)(_canonical_str)(parsed[0])
    except (Exception, TimeoutException):  # noqa: BLE001 - timed out or failed: parsed form
        return str(parsed[0])
