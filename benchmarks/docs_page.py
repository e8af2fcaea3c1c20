"""Benchmarks write what they measured into the docs' Benchmarks pages (``docs/benchmarks/``,
one page per study), between a pair of markers ``<!-- NAME:begin ... -->`` and
``<!-- NAME:end -->``, so each page shows the latest measured run."""

from pathlib import Path

PAGES = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def page_with_marker(marker: str, pages: Path = PAGES) -> Path | None:
    """The Benchmarks page holding ``marker``'s begin comment, if one does."""
    for page in sorted(pages.glob("*.md")):
        if f"<!-- {marker}:begin" in page.read_text():
            return page
    return None


def write_between_markers(text: str, marker: str, page: Path | None = None) -> bool:
    """Replace what lies between ``marker``'s comments with ``text`` on ``page`` (by default the
    Benchmarks page that has them); False (and nothing written) when no page does."""
    page = page if page is not None else page_with_marker(marker)
    content = page.read_text() if page is not None else ""
    begin_at, end_at = content.find(f"<!-- {marker}:begin"), content.find(f"<!-- {marker}:end -->")
    if page is None or begin_at < 0 or end_at < begin_at:
        print(f"{page or PAGES}: no <!-- {marker}:begin/end --> markers; nothing written there")
        return False
    begin = content.index("\n", begin_at) + 1
    page.write_text(content[:begin] + text.rstrip("\n") + "\n" + content[end_at:])
    return True
