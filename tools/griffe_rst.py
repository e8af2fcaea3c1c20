"""Griffe extension for the API reference: gfnlm's docstrings use a few reStructuredText habits
(Sphinx roles, ``.. math::`` blocks, ``Example::``) that Markdown would show literally.

* ``:class:`~gfnlm.contracts.types.Rollouts``` becomes a cross-reference link when the target is
  a full ``gfnlm.`` path (mkdocs-autorefs resolves it; ``--strict`` fails on one that does not
  exist), and inline code otherwise; a leading ``~`` keeps only the last component as the text.
* ``.. math::`` and its indented body become a ``$$ … $$`` block, typeset by MathJax like the
  formulas of the Concepts page.
* A paragraph ending in ``::`` ends in ``:`` (its indented block is already a Markdown code block).
* A star right after a Greek letter (``λ*``, ``π*``: an optimum) is escaped outside code, so two of
  them in a paragraph do not turn the text between them into italics.
"""

import ast
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|const):`(?P<body>[^`]+)`")
_EXPLICIT = re.compile(r"^(?P<text>.+?)\s*<(?P<target>[^>]+)>$")


def _role(match: re.Match[str]) -> str:
    body = match.group("body").strip()
    explicit = _EXPLICIT.match(body)
    if explicit:
        text, target = explicit.group("text"), explicit.group("target")
    else:
        target = body.lstrip("~")
        text = target.rsplit(".", 1)[-1] if body.startswith("~") else target
    if target.startswith("gfnlm."):
        return f"[`{text}`][{target}]"
    return f"`{text}`"


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == ".. math::":
            indent = len(line) - len(line.lstrip())
            i += 1
            body: list[str] = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            math = textwrap.dedent("\n".join(body)).strip("\n")
            out.extend(["", "$$", math, "$$", ""])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`|\$\$.*?\$\$)", re.DOTALL)
_GREEK_STAR = re.compile(r"([\u0391-\u03a9\u03b1-\u03c9])\*")


def _escape_greek_stars(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if not line.startswith("    "):  # an indented code block stays as it is
            pieces = _CODE_SPAN.split(line)
            line = "".join(
                p if i % 2 else _GREEK_STAR.sub(r"\1\\*", p) for i, p in enumerate(pieces)
            )
        lines.append(line)
    return "\n".join(lines)


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with the reStructuredText habits above turned into Markdown."""
    text = _math_blocks(text)
    text = _ROLE.sub(_role, text)
    text = _escape_greek_stars(text)
    return re.sub(r"(?m)(\S)::$", r"\1:", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once griffe has loaded the package."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Convert ``obj``'s docstring in place."""
        if obj.is_alias:  # re-exports and imports: the object is converted where it is defined
            return
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)


# Field declarations whose source the API reference should not show: ``option(4.0, "help",
# converter=float, validator=greater_than(0))`` reads as the value 4.0 and the help as its text.
_FIELD_DECLARATIONS = {"option", "setting", "run_fact", "task_field", "attrs.field", "field"}


def _literal(expression: object) -> Any:
    """The Python value of a griffe expression that is a literal (``None`` when it is not one)."""
    try:
        return ast.literal_eval(str(expression))
    except (ValueError, SyntaxError):
        return None


def declared_default(call: Any) -> tuple[str | None, str | None]:
    """``(default, help)`` of a field declaration call, as source text and plain text; the default
    is ``None`` where there is none (a required field) and ``"from the run (FACT)"`` for a run
    fact."""
    positional = [a for a in call.arguments if not isinstance(a, griffe.ExprKeyword)]
    keywords = {a.name: a.value for a in call.arguments if isinstance(a, griffe.ExprKeyword)}
    default: str | None = None
    if str(call.function) == "run_fact":
        fact = _literal(positional[0]) if positional else None
        default = f"from the run ({fact})"
    elif "default" in keywords:
        default = str(keywords["default"])
    elif "factory" in keywords:
        factory = str(keywords["factory"])
        empty = {"list": "[]", "dict": "{}", "tuple": "()"}
        called = empty.get(factory, factory + "()")
        default = factory.removeprefix("lambda: ") if factory.startswith("lambda") else called
    elif positional:
        default = str(positional[0])
    help_value = keywords.get("help", positional[1] if len(positional) > 1 else None)
    help_text = _literal(help_value) if help_value is not None else None
    return default, help_text if isinstance(help_text, str) else None


class FieldDefaults(griffe.Extension):
    """Show an attrs field declared with ``option()``/``setting()``/``run_fact()`` as its default
    value, and its ``help`` as its description when it has no docstring of its own."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        """Rewrite ``attr``'s value (and docstring) when it is a field declaration."""
        call = attr.value
        if not isinstance(call, griffe.ExprCall) or str(call.function) not in _FIELD_DECLARATIONS:
            return
        default, help_text = declared_default(call)
        attr.value = default
        if help_text and attr.docstring is None:
            attr.docstring = griffe.Docstring(help_text, parent=attr)
