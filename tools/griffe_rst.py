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
