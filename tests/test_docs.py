"""The documentation site cannot drift from the code.

* The Python code blocks of the pages (```` ```python ````, collected with ``mktestdocs``) run, in
  order, in one namespace per page, from the repository root. A block meant to be shown only (it
  needs a real model or a long run) is fenced as ```` ```py ````.
* Every field of the run configuration (the attrs classes of ``gfnlm.training.config``) has
  ``help``; the configuration reference's tables, generated from those classes when the site is
  built, list exactly their fields, with their types, defaults and help.
* ``mkdocs build --strict`` passes with no warning, and the built site loads nothing from the
  network (MathJax is served from the site itself).
* Served on 127.0.0.1 and opened in headless Chromium, the Concepts page has its formulas typeset
  by MathJax (a screenshot is saved under pytest's tmp dir and its path printed), and the API page
  lists every registered target, objective, log Z and sampler.

Needs MathJax unpacked into ``docs/javascripts/mathjax/`` and Debian's ``chromium``: ``make setup``
installs both (``make test`` runs it first).
"""

import html
import html.parser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import typing
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import yaml
from mktestdocs import grab_code_blocks

from gfnlm.contracts import registry
from gfnlm.serving.serve import free_port
from gfnlm.training import config as config_module

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MATHJAX = DOCS / "javascripts" / "mathjax" / "tex-chtml.js"
SETUP_HINT = "run `make setup` (it unpacks MathJax from npm and installs Debian's chromium)"
# Pages whose Python blocks must exist and run (at least this many blocks each).
EXECUTED_PAGES = {
    "how-to.md": 6,
    "extending.md": 10,
    "concepts.md": 1,
    "python.md": 6,
    "quickstart.md": 1,
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ------------------------------------------------------------------------------------------------
# Code blocks


def test_every_page_with_python_is_executed() -> None:
    with_code = {
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if grab_code_blocks(p.read_text(), lang="python")
    }
    assert with_code <= set(EXECUTED_PAGES), (
        f"add these pages to EXECUTED_PAGES: {with_code - set(EXECUTED_PAGES)}"
    )


@pytest.mark.parametrize("page", sorted(EXECUTED_PAGES))
def test_code_blocks_run(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = grab_code_blocks((DOCS / page).read_text(), lang="python")
    assert len(blocks) >= EXECUTED_PAGES[page], (
        f"{page}: expected Python blocks, found {len(blocks)}"
    )
    monkeypatch.chdir(REPO)  # the pages refer to configs/ relative to the repository root
    before = {kind: set(registry.names(kind)) for kind in registry.KINDS}
    # The page runs as a module, as a user's script runs as __main__: its functions can be found
    # by their import path ("docs_python:my_reward"), which a run saves in its config.yaml.
    name = f"docs_{page.removesuffix('.md').replace('-', '_')}"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    namespace = module.__dict__
    try:
        for number, block in enumerate(blocks, start=1):
            exec(compile(block, f"docs/{page} (python block {number})", "exec"), namespace)  # noqa: S102
    finally:  # the pages register example components: leave the registry as it was
        for kind, names in before.items():
            for name in set(registry.names(kind)) - names:
                registry.unregister(kind, name)


# ------------------------------------------------------------------------------------------------
# Configuration reference


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _hooks() -> typing.Any:
    """``tools/mkdocs_hooks.py``, loaded as MkDocs loads it."""
    path = REPO / "tools" / "mkdocs_hooks.py"
    spec = importlib.util.spec_from_file_location("gfnlm_docs_hooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections() -> list[tuple[str, type, list[tuple[attrs.Attribute, object]]]]:
    """Per field of RunConfig: (section, the class holding its fields, [(field, default value)]);
    a section without subfields (``imports``) is its own one field."""
    defaults = config_module.RunConfig()
    sections = []
    for section in attrs.fields(config_module.RunConfig):
        value = getattr(defaults, section.name)
        if attrs.has(type(value)):
            fields = [(f, getattr(value, f.name)) for f in attrs.fields(type(value))]
            sections.append((section.name, type(value), fields))
        else:
            sections.append((section.name, config_module.RunConfig, [(section, value)]))
    return sections


def test_every_run_config_field_has_help() -> None:
    classes = [config_module.RunConfig, *dict.fromkeys(cls for _, cls, _ in _sections())]
    missing = [
        f"{cls.__name__}.{field.name}"
        for cls in classes
        for field in attrs.fields(cls)
        if not str(field.metadata.get("help", "")).strip()
    ]
    assert not missing, (
        "run-config fields without help (setting(..., help=...) in gfnlm/training/config.py): "
        + ", ".join(missing)
    )


def _page_markers() -> list[tuple[str | None, str]]:
    """(the ``## `section``` heading above it, section) of each generated table of the page."""
    markers, heading = [], None
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if found := re.fullmatch(r"## `(\w+)`", line.strip()):
            heading = found.group(1)
        if found := re.fullmatch(r"<!-- gfnlm:config-fields (\w+) -->", line.strip()):
            markers.append((heading, found.group(1)))
    return markers


def test_configuration_reference_matches_the_attrs_classes() -> None:
    """The page asks for one generated table per RunConfig field, under that section's heading, and
    keeps no hand-written field rows; each generated table lists exactly the section's fields, with
    their types, their defaults as YAML values and their help."""
    page = (DOCS / "configuration.md").read_text()
    names = [f.name for f in attrs.fields(config_module.RunConfig)]
    assert _page_markers() == [(name, name) for name in names]
    assert "| field | type | default | meaning |" not in page, "hand-kept field rows remain"
    hooks = _hooks()
    row = re.compile(r"\| `(\w+)` \| `([^`]+)` \| `([^`]*)` \| (.+) \|")
    problems = []
    for section, cls, fields in _sections():
        table = hooks.config_fields(section).splitlines()
        rows = [found.groups() for found in map(row.fullmatch, table) if found]
        shown, code = [r[0] for r in rows], [f.name for f, _ in fields]
        if shown != code:
            problems.append(f"{section}: fields {shown}, code {code}")
            continue
        hints = typing.get_type_hints(cls)
        for (name, type_text, default_text, meaning), (field, actual) in zip(rows, fields):
            where = f"{section}.{name}"
            if type_text.replace("\\|", "|") != _type_name(hints[name]):
                problems.append(f"{where}: type {type_text!r}, code {_type_name(hints[name])!r}")
            value = yaml.safe_load(default_text.replace("\\|", "|"))
            if (type(value), value) != (type(actual), actual):
                problems.append(f"{where}: default {default_text!r}, code {actual!r}")
            if not meaning.startswith(field.metadata["help"].replace("|", "\\|")):
                problems.append(f"{where}: meaning {meaning!r} is not the field's help")
    assert not problems, "configuration tables differ from the code:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------
# The built site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict`` into a temporary folder; fails on any warning."""
    if not MATHJAX.is_file():
        pytest.fail(f"{MATHJAX.relative_to(REPO)} is missing: {SETUP_HINT}")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    return out


def test_build_is_strict_and_offline(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 15
    external = re.compile(r"""<(?:script|link|img)[^>]*(?:src|href)=["'](?:https?:)?//""")
    for page in pages:
        found = external.findall(page.read_text())
        assert not found, f"{page.relative_to(site)} loads from the network: {found}"
    assert (site / "javascripts" / "mathjax" / "tex-chtml.js").is_file()


def test_configuration_page_shows_every_field(site: Path) -> None:
    text = (site / "configuration" / "index.html").read_text()
    assert "gfnlm:config-fields" not in text, "a configuration table was not generated"
    for section, _, fields in _sections():
        start = text.index(f'id="{section}"')
        part = text[start : text.find("<h2", start + 1)]
        for field, _ in fields:
            assert f"<code>{field.name}</code>" in part, f"{section}.{field.name} not shown"


def test_cli_reference_has_every_option(site: Path) -> None:
    from gfnlm.cli import build_parser

    text = (site / "cli" / "index.html").read_text()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        assert f"$ gfnlm {name} --help" in text
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"gfnlm {name} {option} missing from the CLI reference"


# ------------------------------------------------------------------------------------------------
# In a browser


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site on http://127.0.0.1:PORT/ (python -m http.server, stopped afterwards)."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(site),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail(f"headless Chromium is not installed: {SETUP_HINT}")


def browse(url: str, screenshot: Path | None = None, width: int = 1280) -> str:
    """The DOM of ``url`` after its scripts ran (virtual time), optionally with a screenshot of a
    window ``width`` pixels wide."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},2000",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ]
        if screenshot is not None:
            command.append(f"--screenshot={screenshot}")
        result = subprocess.run(
            [*command, url], check=False, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _MathCensus(html.parser.HTMLParser):
    """Counts arithmatex elements and those that contain MathJax output (``mjx-container``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []  # (tag, is an arithmatex element)
        self.total = self.typeset = self.errors = 0
        self._seen_in_current = False

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs_).get("class") or "").split()
        is_math = "arithmatex" in classes
        if is_math:
            self.total += 1
            self._seen_in_current = False
        inside = any(flag for _, flag in self.stack)
        if inside and tag == "mjx-container":
            self._seen_in_current = True
        if tag == "mjx-merror" or "data-mjx-error" in dict(attrs_):
            self.errors += 1
        self.stack.append((tag, is_math))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, is_math = self.stack.pop()
            if is_math and self._seen_in_current:
                self.typeset += 1
                self._seen_in_current = False
            if open_tag == tag:
                break


def test_concepts_formulas_are_typeset(
    served: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    screenshot = tmp_path_factory.mktemp("screenshots") / "concepts.png"
    dom = browse(served + "concepts/", screenshot)
    census = _MathCensus()
    census.feed(dom)
    assert census.total >= 40, f"only {census.total} formulas found on the Concepts page"
    assert census.typeset == census.total, (
        f"{census.total - census.typeset} of {census.total} formulas not typeset"
    )
    assert census.errors == 0, f"{census.errors} MathJax errors on the Concepts page"
    for loss in ("Trajectory balance", "Length-aware TB", "Sub-trajectory balance"):
        assert loss in dom
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    print(f"\nscreenshot of the Concepts page: {screenshot}")


def test_api_page_lists_the_registered_components(served: str) -> None:
    dom = browse(served + "api/")
    table = dom[dom.index('id="registered-components"') :]
    for kind in registry.KINDS:
        names = registry.names(kind)
        assert names, kind
        for name in names:
            assert f"<code>{name}</code>" in table, f"{kind} {name!r} is missing from the API page"


def test_home_page_lists_every_registered_component(served: str) -> None:
    dom = browse(served)
    for kind in registry.KINDS:
        for name in registry.names(kind):
            assert f"<code>{name}</code>" in dom, f"{kind} {name!r} is missing from the home page"


# A path in the docs or a docstring that names no file of the repository is a dead reference.
# Allowed: what a command generates into a git-ignored folder, and files the guides ask users to
# write.
_REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:configs|docs|benchmarks|gfnlm|tests|tools|recipes|\.ci)/[\w./-]*"
    r"\.(?:py|yaml|yml|md|jsonl|sh|txt|csv|png|json|toml))"
)
_USER_FILES = {"tests/test_my_components.py"}


def test_every_file_the_docs_and_docstrings_name_exists() -> None:
    sources = [
        *DOCS.rglob("*.md"),
        REPO / "README.md",
        *(REPO / "gfnlm").rglob("*.py"),
        *(REPO / "benchmarks").rglob("*.py"),
        *(REPO / "benchmarks").rglob("*.sh"),
        *(REPO / "configs").glob("*.yaml"),
        *(REPO / "recipes").glob("*.sh"),
    ]
    dead = []
    for source in sources:
        for match in _REPO_PATH.finditer(source.read_text(errors="replace")):
            path = match.group(1).rstrip(".")
            # a repository path, or a docs page's link relative to its own folder
            if (REPO / path).exists() or (source.parent / path).exists() or path in _USER_FILES:
                continue
            ignored = (
                subprocess.run(
                    ["git", "check-ignore", "-q", path], cwd=REPO, check=False
                ).returncode
                == 0
            )
            if not ignored:
                dead.append(f"{source.relative_to(REPO)}: {path}")
    assert not dead, "files named but not in the repository:\n  " + "\n  ".join(dead)


def test_api_page_shows_every_components_options_with_their_help(served: str) -> None:
    import attrs as attrs_module

    dom = browse(served + "api/")
    section = dom[dom.index('id="component-options"') :]
    for kind in registry.KINDS:
        for name in registry.names(kind):
            cls = registry.lookup(kind, name)
            start = section.index(f'id="{kind}-{name}"')
            entry = section[start : section.find("<h3", start + 1)]
            for field in attrs_module.fields(cls):
                if field.init:
                    assert f"<code>{field.name}</code>" in entry, (
                        f"{kind} {name}: option {field.name} not shown"
                    )
                    help_words = field.metadata["help"].split()[0]
                    assert help_words.replace("&", "&amp;") in entry or "'" in help_words, (
                        kind,
                        name,
                        field.name,
                    )


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("install/", "Supported versions"),
        ("troubleshooting/", "train.lr=nan: must be a finite number"),  # the generated table
        ("api/tasks/", "gfnlm.tasks.base.Task"),
        ("api/errors/", "gfnlm.contracts.errors.InputError"),
        ("benchmarks/exact/", "per objective and α ∈ {0.5, 2, 4}"),  # attr_list ate a trailing {…}
        ("benchmarks/", "Headline results"),
    ],
)
def test_the_user_pages_render_in_a_browser(served: str, page: str, expected: str) -> None:
    dom = browse(served + page)
    assert expected in dom, f"{page}: {expected!r} not rendered"
    assert "404" not in dom.split("<title>")[1].split("</title>")[0]


# A script added to a copy of a page: after load, it lists the inline code spans (identifiers,
# options, paths) that the browser laid out on more than one line although they hold no space.
_IDENTIFIER_CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [];
  const codes = document.querySelectorAll("article :not(pre) > code");
  for (const code of codes) {
    const text = code.textContent.trim();
    if (code.getClientRects().length > 1 && !/\\s/.test(text)) broken.push(text);
  }
  const out = document.createElement("pre");
  out.id = "identifier-check";
  out.textContent = JSON.stringify({checked: codes.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.parametrize("page", ["quickstart", "configuration"])
@pytest.mark.parametrize("width", [1280, 760])
def test_identifiers_are_not_broken_mid_word(
    site: Path, served: str, page: str, width: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    original = (site / page / "index.html").read_text()
    checked_copy = site / page / f"identifier-check-{width}.html"
    checked_copy.write_text(original.replace("</body>", _IDENTIFIER_CHECK + "</body>"))
    screenshot = tmp_path_factory.mktemp("screenshots") / f"{page}-{width}.png"
    dom = browse(f"{served}{page}/{checked_copy.name}", screenshot, width=width)
    found = re.search(r'<pre id="identifier-check">(.*?)</pre>', dom)
    assert found, f"the check did not run on the {page} page"
    report = json.loads(html.unescape(found.group(1)))
    assert report["checked"] >= 20, f"only {report['checked']} code spans on {page}"
    assert report["broken"] == [], f"{page} at {width}px breaks {report['broken']} mid-word"
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    print(f"\nscreenshot of the {page} page at {width}px: {screenshot}")
