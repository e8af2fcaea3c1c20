"""MkDocs hooks: parts of the docs that are generated from the code at build time, so they cannot
drift from it. A page asks for one with an HTML comment on a line of its own:

* ``<!-- gfnlm:registered-components -->``: a table of every registered component (kind, name,
  class with a link to its API entry, what it requires and provides, the first docstring line),
  from :func:`gfnlm.contracts.registry.names` / :func:`gfnlm.contracts.registry.lookup`.
* ``<!-- gfnlm:cli-help -->``: the ``--help`` text of ``gfnlm`` and of each subcommand, from
  :func:`gfnlm.cli.build_parser`.
* ``<!-- gfnlm:component-names -->``: each kind's registered names in one row (the home page).
* ``<!-- gfnlm:component-options -->``: each component's constructor and options (type, default,
  the ``help`` of its attrs field metadata) and its source file.
* ``<!-- gfnlm:recommended-exploration -->``: each objective's declared exploration and replay
  (``recommended_exploration`` / ``recommended_replay``), as the config sections to write.
* ``<!-- gfnlm:config-fields SECTION -->``: the fields of one section of
  :class:`gfnlm.training.config.RunConfig` (type, default value, the ``help`` of its attrs field
  metadata), from :func:`config_fields`.
"""

import argparse
import importlib.util
import inspect
import os
import re
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _load_rst_converter() -> Any:
    spec = importlib.util.spec_from_file_location("gfnlm_docs_griffe_rst", _HERE / "griffe_rst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rst_to_markdown


def _capabilities(cls: type, attribute: str) -> str:
    from gfnlm.contracts import registry

    value = getattr(cls, attribute, frozenset())
    if isinstance(value, property):  # depends on the options: show a default instance's
        try:
            found = registry.capabilities(cls(), attribute)
        except Exception:  # noqa: BLE001 - no default instance: say so
            return "depends on options"
        note = " (default options)"
    else:
        found, note = frozenset(value), ""
    return (", ".join(f"`{c}`" for c in sorted(found)) or "—") + (note if found else "")


def _summary(cls: type, to_markdown: Any) -> str:
    doc = inspect.getdoc(cls) or ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return to_markdown(first)  # a | inside `code` does not split a Markdown table cell


_KIND_TITLES = {
    "target": "Targets",
    "objective": "Objectives",
    "logz": "log Z providers",
    "sampler": "Samplers",
    "task": "Tasks",
    "exploration": "Exploration",
    "replay": "Replay",
}
_KIND_PAGES = {
    "target": "concepts.md#targets",
    "objective": "concepts.md#objectives",
    "logz": "concepts.md#log-z",
    "sampler": "concepts.md#samplers",
    "task": "extending.md#a-new-task",
    "exploration": "concepts.md#off-policy-training-exploration-and-replay",
    "replay": "concepts.md#off-policy-training-exploration-and-replay",
}


def component_names_table() -> str:
    """Markdown: each kind with its registered names and the page that explains it (the home
    page)."""
    from gfnlm.contracts import registry

    rows = ["| component | registered names | the page that explains it |", "|---|---|---|"]
    for kind in registry.KINDS:
        names = ", ".join(f"`{name}`" for name in registry.names(kind)) or "none yet"
        rows.append(
            f"| {kind} | {names} | "
            f"[{_KIND_TITLES.get(kind, kind)}]({_KIND_PAGES.get(kind, 'api/index.md')}) |"
        )
    return "\n".join(rows)


def _default_text(field: Any) -> str:
    import attrs

    if field.default is attrs.NOTHING:
        return "required"
    if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        return f"`{field.default.factory()!r}`"
    return f"`{field.default!r}`"


def _type_text(cls: type, field: Any) -> str:
    import typing

    try:
        hint = typing.get_type_hints(cls).get(field.name, field.type)
    except Exception:  # noqa: BLE001 - a hint that does not resolve is shown as written
        hint = field.type
    text = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return f"`{text}`".replace("|", "\\|")


def _help_text(field: Any) -> str:
    return field.metadata.get("help", "—").replace("|", "\\|")  # a | would split the table cell


def component_options() -> str:
    """Markdown: each registered component's constructor, and per option its type, default and the
    one-line description of its attrs field metadata (``help``); the source file it is defined
    in."""
    import attrs

    from gfnlm.contracts import registry

    parts = []
    for kind in registry.KINDS:
        for name in registry.names(kind):
            cls = registry.lookup(kind, name)
            fields = [f for f in attrs.fields(cls) if f.init]
            signature = ", ".join(f"{f.name}={_default_text(f).strip('`')}" for f in fields)
            source = inspect.getsourcefile(cls) or ""
            where = os.path.relpath(source, _HERE.parent) if source else "?"
            rows = [
                f"### `{kind}` `{name}`",
                "",
                f"`{cls.__qualname__}({signature})` — defined in `{where}`",
                "",
            ]
            if fields:
                rows += ["| option | type | default | meaning |", "|---|---|---|---|"]
                rows += [
                    f"| `{f.name}` | {_type_text(cls, f)} | {_default_text(f)} | {_help_text(f)} |"
                    for f in fields
                ]
            else:
                rows.append("No options.")
            parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _value_text(value: Any, top: bool = True) -> str:
    """A default as the YAML a config file would hold: ``'smollm2'``, ``true``, ``0.0001``,
    ``[q_proj, v_proj]``, ``{}``. Strings are quoted, except inside a list or mapping where YAML
    reads the bare word back as the same string."""
    import yaml

    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        mantissa, exponent, power = repr(value).partition("e")
        if exponent and "." not in mantissa:  # YAML reads 1e-06 as a string, 1.0e-06 as a number
            mantissa += ".0"
        return mantissa + exponent + power
    if isinstance(value, str):
        if not top and re.fullmatch(r"[A-Za-z_][\w.-]*", value) and yaml.safe_load(value) == value:
            return value
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(item, top=False) for item in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{_value_text(k, top=False)}: {_value_text(v, top=False)}" for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    return repr(value)


def _components_note(kind: str, field: Any) -> str:
    """For a field that chooses a registered component: the names it takes (each linking to its
    options), or, for its options, a link to the options of every component."""
    from gfnlm.contracts import registry

    if field.type is str:
        names = [f"[`{name}`](api/index.md#{kind}-{name})" for name in registry.names(kind)]
        return f": one of {', '.join(names)}" if names else ": none registered"
    return " ([options of each component](api/index.md#component-options))"


def config_fields(section: str) -> str:
    """Markdown: the fields of one section of :class:`gfnlm.training.config.RunConfig` (for a
    section without subfields, ``imports``, the section itself), each with its type, its default
    as a YAML value and the ``help`` of its attrs field metadata."""
    import attrs

    from gfnlm.contracts import registry
    from gfnlm.training.config import ComponentConfig, RunConfig

    sections = attrs.fields_dict(RunConfig)
    if section not in sections:
        raise ValueError(
            f"<!-- gfnlm:config-fields {section} -->: no such section; sections: "
            f"{', '.join(sections)}"
        )
    value = getattr(RunConfig(), section)
    if attrs.has(type(value)):
        cls, fields = type(value), [(f, getattr(value, f.name)) for f in attrs.fields(type(value))]
    else:
        cls, fields = RunConfig, [(sections[section], value)]
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field, default in fields:
        kind = section if cls is ComponentConfig else field.metadata.get("components")
        meaning = _help_text(field)
        if kind is not None:
            assert kind in registry.KINDS, f"{section}.{field.name}: no component kind {kind!r}"
            meaning += _components_note(kind, field)
        default_text = _value_text(default).replace("|", "\\|")
        rows.append(f"| `{field.name}` | {_type_text(cls, field)} | `{default_text}` | {meaning} |")
    return "\n".join(rows)


def registered_components_table() -> str:
    """Markdown: one table of the registered components per kind."""
    from gfnlm.contracts import registry

    to_markdown = _load_rst_converter()
    parts, empty = [], []
    for kind in registry.KINDS:
        names = registry.names(kind)
        if not names:
            empty.append(kind)
            continue
        rows = [
            f"### {_KIND_TITLES.get(kind, kind)} (`{kind}`)",
            "",
            "| name | class | requires | provides | what it is |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            cls = registry.lookup(kind, name)
            path = f"{cls.__module__}.{cls.__qualname__}"
            rows.append(
                f"| `{name}` | [`{cls.__qualname__}`][{path}] | {_capabilities(cls, 'requires')} | "
                f"{_capabilities(cls, 'provides')} | {_summary(cls, to_markdown)} |"
            )
        parts.append("\n".join(rows))
    if empty:
        parts.append(
            "Kinds with nothing registered yet: " + ", ".join(f"`{k}`" for k in empty) + "."
        )
    return "\n\n".join(parts)


def _choice_yaml(kind: str, choice: Any) -> str:
    """A declared ``{"name", "options"}`` as the one-line YAML of its config section."""
    options = ", ".join(f"{key}: {value}" for key, value in choice["options"].items())
    return f"`{kind}: {{name: {choice['name']}" + (
        f", options: {{{options}}}}}`" if options else "}`"
    )


def recommended_exploration_table() -> str:
    """Markdown: every objective that declares an exploration and replay
    (:func:`gfnlm.exploration.recommended_choice`), with the config sections that follow it."""
    from gfnlm.contracts import registry
    from gfnlm.exploration import TARGET_REGIME, describe_choice, recommended_choice

    rows = ["| objective | recommended | in a config |", "|---|---|---|"]
    for name in registry.names("objective"):
        cls = registry.lookup("objective", name)
        choice = recommended_choice(cls)
        if choice is None:
            continue
        variants = [(f"`{name}`", choice)] + [
            (
                f"`{name}` toward a {value} target"
                if condition == TARGET_REGIME
                else f"`{name}` with `{condition}: {value}`",
                variant,
            )
            for (condition, value), variant in cls.recommended_when.items()
        ]
        for label, (exploration, replay) in variants:
            rows.append(
                f"| {label} | {describe_choice(exploration, replay)} | "
                f"{_choice_yaml('exploration', exploration)}<br>{_choice_yaml('replay', replay)} |"
            )
    return "\n".join(rows)


def cli_help() -> str:
    """Markdown: the help text of ``gfnlm`` and of each subcommand, in text blocks."""
    from gfnlm.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: make it fixed
    try:
        parser = build_parser()
        blocks = [("gfnlm --help", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    blocks.append((f"gfnlm {name} --help", sub.format_help()))
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    parts = []
    for command, text in blocks:
        title = command.removesuffix(" --help")
        parts.append(f"### `{title}`\n\n```text\n$ {command}\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


_GENERATORS = {
    "<!-- gfnlm:registered-components -->": registered_components_table,
    "<!-- gfnlm:cli-help -->": cli_help,
    "<!-- gfnlm:component-names -->": component_names_table,
    "<!-- gfnlm:component-options -->": component_options,
    "<!-- gfnlm:recommended-exploration -->": recommended_exploration_table,
}


_CONFIG_FIELDS = re.compile(r"<!-- gfnlm:config-fields (\w+) -->")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs hook: replace each placeholder line with its generated Markdown."""
    for marker, generate in _GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return _CONFIG_FIELDS.sub(lambda match: config_fields(match.group(1)), markdown)
