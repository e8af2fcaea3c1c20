"""Every public class, function and method of gfnlm has a docstring (the API reference is built
from them, so an undocumented name is a hole in the docs).

Public means: no leading underscore in the name (nor in the module path), and defined in the module
being walked (re-exports are checked where they are defined). Methods and properties are checked in
the class body that defines them; an override with no docstring of its own counts as documented when
the method it overrides has one (``inspect.getdoc`` inherits it, and so does the rendered
reference).
"""

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import gfnlm


def _modules() -> Iterator[str]:
    yield gfnlm.__name__
    for info in pkgutil.walk_packages(gfnlm.__path__, prefix=f"{gfnlm.__name__}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield info.name


def _members(cls: type) -> Iterator[tuple[str, object]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            yield name, value


def _has_doc(obj: object) -> bool:
    return bool((inspect.getdoc(obj) or "").strip())


def _method_has_doc(cls: type, name: str, value: object) -> bool:
    if _has_doc(value):
        return True
    for base in cls.__mro__[1:]:  # documented where it is first declared
        inherited = vars(base).get(name)
        if inherited is not None and _has_doc(getattr(inherited, "__func__", inherited)):
            return True
    return False


def undocumented_names() -> list[str]:
    """``module.name`` (or ``module.Class.method``) for every public name without a docstring."""
    missing: list[str] = []
    for module_name in _modules():
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not _has_doc(obj) or (inspect.isclass(obj) and obj.__doc__ is None):
                missing.append(f"{module_name}.{name}")
            if inspect.isclass(obj):
                for member_name, member in _members(obj):
                    if not _method_has_doc(obj, member_name, member):
                        missing.append(f"{module_name}.{name}.{member_name}")
    return missing


def test_every_public_name_has_a_docstring() -> None:
    missing = undocumented_names()
    assert not missing, f"{len(missing)} public names lack a docstring:\n  " + "\n  ".join(missing)


def test_the_walk_sees_the_core_modules() -> None:
    seen = set(_modules())
    for module in (
        "gfnlm.contracts.types",
        "gfnlm.contracts.registry",
        "gfnlm.objectives.la_tb",
        "gfnlm.training.trainer",
    ):
        assert module in seen
