"""Components register by (kind, name); runs are built and composed from names + keyword config.

A component is an attrs class whose fields are its configuration. It may declare:

* ``requires``: capabilities it needs from the other components of the run
  (e.g. SubTB requires ``"prefix_rewards"``, LA-TB requires ``"log_z"``);
* ``provides``: capabilities it offers (the α-power target provides ``"prefix_rewards"``);
* ``withheld()``: optionally, the capabilities its kind usually offers but this configuration does
  not, each with the reason (the SGLang sampler at ``top_p < 1`` withholds
  ``"exact_behaviour_logp"``), quoted in the composition error.

:func:`check_composition` fails when a run is composed, not mid-training, if a requirement has no
provider. Registration wraps every public tensor method with run-time shape checks
(:mod:`gfnlm.contracts.shapes`).

Example::

    @register("objective", "my_tb")
    @attrs.frozen
    class MyTB(Objective):
        ...

    objective = build("objective", "my_tb", penalty="huber")
"""

import contextlib
import difflib
import importlib
import importlib.metadata
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from gfnlm.contracts.errors import InputError, quoted, shortened
from gfnlm.contracts.shapes import wrap_public_methods

KINDS = ("target", "objective", "sampler", "logz", "task", "exploration", "replay")

# What a capability promises, quoted by the composition error (capabilities not listed are
# named only).
CAPABILITY_MEANINGS = {
    "exact_behaviour_logp": (
        "behaviour_logp is the exact log-probability each rollout was sampled with"
    ),
    "behaviour_transform": (
        "the sampler can draw each token from a transformed next-token distribution"
    ),
    "tempered_sampling": (
        "the sampler can draw each token at its temperature times a factor and report the exact "
        "log-probability of what it drew"
    ),
    "prefix_rewards": "the target scores stopping after every prefix",
    "log_z": "a learned log Z",
}

C = TypeVar("C", bound=type)


class RegistryError(InputError):
    """A bad registry request: unknown kind or name, duplicate name, bad config, bad composition."""


_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}

# Modules whose import registers the built-in components (imported lazily on first lookup).
_BUILTIN_MODULES = (
    "gfnlm.targets",
    "gfnlm.objectives",
    "gfnlm.logz",
    "gfnlm.samplers",
    "gfnlm.tasks.builtin",
    "gfnlm.exploration",
)


# Installed packages register their components through this entry-point group: each entry point
# names a module whose import registers them, e.g. in the plugin's pyproject.toml
#   [project.entry-points."gfnlm.components"]
#   my_components = "my_pkg.components"
ENTRY_POINT_GROUP = "gfnlm.components"
_plugins_loaded = False


def _load_builtins() -> None:
    global _plugins_loaded
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    if not _plugins_loaded:
        # first: a plugin that looks names up while importing must not recurse
        _plugins_loaded = True
        load_plugins()


def load_plugins() -> list[str]:
    """Import the modules of every installed ``gfnlm.components`` entry point; returns their names.
    A plugin that fails to import is a one-line error naming it."""
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # noqa: BLE001 - any failure of a third-party import is reported by name
            raise RegistryError(
                f"plugin {entry_point.name!r} ({entry_point.value}, entry point group "
                f"{ENTRY_POINT_GROUP!r}) failed to import: {type(error).__name__}: {error}"
            ) from None
        loaded.append(entry_point.name)
    return loaded


def import_components(modules: Iterable[str], field: str = "--import") -> None:
    """Import modules that register components (``--import my_pkg.components``, a config's
    ``imports``). A module that cannot be imported, or raises while it is, is a one-line error
    naming ``field``, the module and the first line of its error with where it was raised.

    The working directory is on ``sys.path`` while they import (as ``python -m`` puts it there;
    a console script such as ``gfnlm`` does not), so ``--import my_components`` finds the
    ``my_components.py`` of the folder the command runs in."""
    for module in modules:
        _import_one(module, field)


def _import_one(module: str, field: str, given: str | None = None) -> None:
    """Import ``module``; a failure is one line naming ``field`` and what it was ``given`` (by
    default the module name itself)."""
    where = f"{field}={quoted(given if given is not None else module)}"
    if not module.strip():
        raise RegistryError(f"{where}: must name a module (e.g. my_pkg.components)")
    with _working_directory_on_path():
        try:
            importlib.import_module(module)
        except SyntaxError as error:
            file = Path(error.filename or module).name
            place = f" at {file} line {error.lineno}" if error.lineno else ""
            raise RegistryError(f"{where}: syntax error{place}: {error.msg}") from None
        except ImportError as error:
            raise RegistryError(
                f"{where}: cannot import it ({_first_line(error)}); it must be "
                "importable from this Python (installed, on PYTHONPATH, or a .py "
                "file in the working directory)"
            ) from None
        except Exception as error:  # noqa: BLE001 - whatever a user's module raises is reported
            raise RegistryError(
                f"{where}: raises {type(error).__name__}: {_first_line(error)}{_raised_at(error)}"
            ) from None


def import_object(spec: str, field: str) -> Any:
    """The object named by ``"package.module:qualname"`` (``qualname`` may be dotted:
    ``module:Class.method``), imported as :func:`import_components` imports (the working directory
    on ``sys.path``). A spec of another form, or one that does not import, is a one-line error
    naming ``field``."""
    where = f"{field}={quoted(spec)}"
    module, _, qualname = spec.partition(":")
    if not (module.strip() and qualname.strip()):
        raise RegistryError(f"{where}: must name an object as 'package.module:function'")
    _import_one(module, field, given=spec)
    found: Any = sys.modules[module]
    for part in qualname.split("."):
        if not hasattr(found, part):
            missing = f"module {module!r} has no {qualname!r}"
            raise RegistryError(f"{where}: cannot import it ({missing})")
        found = getattr(found, part)
    return found


def object_path(value: Any) -> str | None:
    """``"package.module:qualname"`` of a module-level function or class, when importing that
    path gives back this very object (so a config file can name it); ``None`` for a lambda, a
    function defined inside another, or an object its module no longer holds under that name."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<" in qualname:
        return None  # "<lambda>", "f.<locals>.g": no import path leads to them
    spec = f"{module}:{qualname}"
    try:
        return spec if import_object(spec, "object") is value else None
    except RegistryError:
        return None


@contextlib.contextmanager
def _working_directory_on_path() -> Iterator[None]:
    """The working directory first on ``sys.path`` (where ``python -m`` puts it) while a module
    imports, unless it is there already; removed afterwards, so later imports are unchanged."""
    cwd = os.getcwd()
    if "" in sys.path or cwd in sys.path:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return shortened(lines[0], limit=200) if lines else "(no message)"


def _raised_at(error: BaseException) -> str:
    """`` (my_mod.py, line 3)``: the innermost frame of the error in a real file (the import
    machinery's frozen frames skipped), or nothing when there is none."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<")
    ]
    if not frames:
        return ""
    return f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")


def register(kind: str, name: str) -> Callable[[C], C]:
    """Class decorator: register an attrs component class under ``kind`` and ``name``."""
    _check_kind(kind)

    def decorator(cls: C) -> C:
        if name in _REGISTRY[kind] and _same_class(_REGISTRY[kind][name], cls):
            # the same class defined again (a notebook cell run twice): the new definition wins
            pass
        elif name in _REGISTRY[kind]:
            other = _REGISTRY[kind][name]
            raise RegistryError(
                f"{kind} {name!r} is already registered "
                f"(by {other.__module__}.{other.__qualname__}); "
                "choose another name"
            )
        if not attrs.has(cls):
            raise RegistryError(f"{kind} {name!r}: {cls.__qualname__} must be an attrs class")
        wrap_public_methods(cls, f"{kind} {name!r}")
        cls.registry_kind = kind  # type: ignore[attr-defined]
        cls.registry_name = name  # type: ignore[attr-defined]
        _REGISTRY[kind][name] = cls
        return cls

    return decorator


def _same_class(a: type, b: type) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def unregister(kind: str, name: str) -> None:
    """Remove a registration (for tests and interactive sessions)."""
    _check_kind(kind)
    _REGISTRY[kind].pop(name, None)


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _check_kind(kind)
    _load_builtins()
    return sorted(_REGISTRY[kind])


def lookup(kind: str, name: str) -> type:
    """The class registered as ``name``; a one-line error with the choices otherwise."""
    _check_kind(kind)
    _load_builtins()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = sorted(_REGISTRY[kind])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {kind} {quoted(name)}; registered {kind}s: {', '.join(known) or 'none'}"
            f"{hint} (your own components: --import your.module or imports: [your.module] in the "
            f"config, or a package's {ENTRY_POINT_GROUP!r} entry point)"
        ) from None


def option(default: Any, help: str, **field_kwargs: Any) -> Any:
    """A component option with a one-line description (attrs field metadata ``help``), which the
    API reference shows with the option's type and default."""
    return attrs.field(
        default=default, metadata={**field_kwargs.pop("metadata", {}), "help": help}, **field_kwargs
    )


def run_fact(name: str, **field_kwargs: Any) -> Any:
    """An option the run fills in when the config leaves it out: ``name`` is one of the facts the
    trainer knows before the model loads (``num_train_prompts``, ``hidden_size``), e.g.
    ``num_prompts: int = run_fact("num_train_prompts", default=1)``."""
    metadata = {**field_kwargs.pop("metadata", {}), "run_fact": name}
    return attrs.field(metadata=metadata, **field_kwargs)


def build(
    kind: str,
    name: str,
    config: Mapping[str, Any] | None = None,
    run_facts: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """Instantiate ``name`` of ``kind`` from keyword config; unknown options are rejected by name.
    Options declared with :func:`run_fact` and not given take their value from ``run_facts``."""
    cls = lookup(kind, name)
    options = {**(config or {}), **overrides}
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    for field in fields.values():
        fact = field.metadata.get("run_fact")
        if fact is not None and field.name not in options and run_facts and fact in run_facts:
            options[field.name] = run_facts[fact]
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(
                f"{kind} {name!r} has no option {quoted(key)}; options are: "
                f"{', '.join(fields) or 'none'}{hint}"
            )
    for key, value in options.items():
        # `alpha=inf` on the CLI is text
        if fields[key].type in (float, "float") and isinstance(value, str):
            try:
                value = options[key] = float(value)
            except ValueError:
                raise RegistryError(
                    f"{kind} {name!r}: {key}={quoted(value)}: must be a number"
                ) from None
        # NaN slips through `value < bound` checks
        if isinstance(value, float) and not math.isfinite(value):
            raise RegistryError(f"{kind} {name!r}: {key}={value!r}: must be a finite number")
    try:
        return cls(**options)
    except (TypeError, ValueError) as error:
        raise RegistryError(f"{kind} {name!r}: {error}") from None


def capabilities(component: Any, attribute: str) -> frozenset[str]:
    """A component's ``requires`` or ``provides`` set (empty when it declares none)."""
    value = getattr(component, attribute, frozenset())
    return frozenset(value() if callable(value) else value)


def check_composition(components: Mapping[str, Any], provided_by_run: Iterable[str] = ()) -> None:
    """Fail if some component requires a capability no other component (or the run) provides.

    ``components`` maps a role (``"target"``, ``"objective"``, ...) to the built component;
    ``provided_by_run`` lists capabilities the run itself offers (e.g. ``"labels"`` when the prompt
    file has answers, ``"prompt_hidden"`` when the policy is a transformer).
    """
    offered: dict[str, str] = {cap: "the run" for cap in provided_by_run}
    for role, component in components.items():
        if component is not None:
            for cap in capabilities(component, "provides"):
                offered.setdefault(cap, f"{role} {_label(component)}")
    for role, component in components.items():
        if component is None:
            continue
        for need in sorted(capabilities(component, "requires")):
            if need not in offered:
                providers = _providers_of(need)
                meaning = f" ({CAPABILITY_MEANINGS[need]})" if need in CAPABILITY_MEANINGS else ""
                raise RegistryError(
                    f"{role} {_label(component)} requires {need!r}{meaning}, "
                    "which no component of this run provides "
                    f"({_describe_components(components)})"
                    f"{_withheld_reasons(components, need)}; "
                    f"provided by: {', '.join(providers) or 'the run configuration'}"
                )


def _withheld_reasons(components: Mapping[str, Any], capability: str) -> str:
    """``; sampler 'sglang' withholds it: <why>`` for each component that says why it does not
    provide ``capability`` in this configuration."""
    reasons = []
    for role, component in components.items():
        withheld = getattr(component, "withheld", None)
        why = withheld().get(capability) if callable(withheld) else None
        if why:
            reasons.append(f"; {role} {_label(component)} withholds it: {why}")
    return "".join(reasons)


def component_name(component: Any) -> str:
    """The name ``component`` (or its class) was registered under; its class's name if none."""
    return getattr(component, "registry_name", type(component).__name__)


def _label(component: Any) -> str:
    return repr(component_name(component))


def _describe_components(components: Mapping[str, Any]) -> str:
    return ", ".join(f"{role}={_label(c)}" for role, c in components.items() if c is not None)


def _providers_of(capability: str) -> list[str]:
    found = []
    for kind, entries in _REGISTRY.items():
        for name, cls in sorted(entries.items()):
            provides = getattr(cls, "provides", ())
            if isinstance(provides, property):  # depends on the options: ask a default instance
                try:
                    provides = capabilities(cls(), "provides")
                except Exception:  # noqa: BLE001, S112 - no default instance: it cannot be listed
                    continue
            if capability in frozenset(provides):
                found.append(f"{kind} {name!r}")
    return found
