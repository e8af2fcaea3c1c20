"""Benchmarks write what they measured into docs/benchmarks.md, between a pair of markers
``<!-- NAME:begin ... -->`` and ``<!-- NAME:end -->``, so the page shows the latest measured run."""

from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_between_markers(text: str, marker: str, page: Path = PAGE) -> bool:
    """Replace what lies between the page's ``marker`` comments with ``text``; False (and nothing
    written) when the page lacks them."""
    content = page.read_text()
    begin_at, end_at = content.find(f"<!-- {marker}:begin"), content.find(f"<!-- {marker}:end -->")
    if begin_at < 0 or end_at < begin_at:
        print(f"{page}: no <!-- {marker}:begin/end --> markers; nothing written there")
        return False
    begin = content.index("\n", begin_at) + 1
    page.write_text(content[:begin] + text.rstrip("\n") + "\n" + content[end_at:])
    return True
