"""Earlier import paths of modules that moved into layer sub-packages keep working for one release.

``import gfnlm.trainer`` (or ``from gfnlm import trainer``) returns the very module object
``gfnlm.training.trainer``, so monkeypatching and ``isinstance`` behave as before, and emits a
``DeprecationWarning`` that names the new path. The aliases will be removed in gfnlm 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED_MODULES: dict[str, str] = {
    **{name: f"gfnlm.contracts.{name}" for name in ("types", "registry", "shapes", "errors")},
    **{name: f"gfnlm.training.{name}"
       for name in ("trainer", "policy", "checkpoint", "distributed", "config", "models", "exact")},
    **{name: f"gfnlm.serving.{name}" for name in ("sglang_client", "serve", "export")},
    **{name: f"gfnlm.tasks.{name}"
       for name in ("prompts", "rewards", "metrics", "evaluation", "synthetic_reasoning")},
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new_name}; the old path will be removed in gfnlm 0.3",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the already-imported new one."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "gfnlm" or name not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(MOVED_MODULES[name]))


def install_moved_module_aliases() -> None:
    """Put the finder of the old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
