"""The package layout by layer, and the earlier import paths that still work for one release."""

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import gfnlm
from gfnlm._compat import MOVED_MODULES

PACKAGE = Path(gfnlm.__file__).parent


def test_top_level_holds_only_the_cli_and_layer_packages():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "_compat.py", "cli.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["contracts", "data", "exploration", "logz", "objectives", "samplers", "serving", "targets",
                        "tasks", "training"]


def test_every_moved_module_exists_at_its_new_path():
    for old, new in MOVED_MODULES.items():
        assert not (PACKAGE / f"{old}.py").exists(), old
        assert importlib.util.find_spec(new) is not None, new


def test_old_import_paths_are_the_new_modules_and_warn():
    # A fresh interpreter: in this one the aliases may already be imported (no second warning).
    code = (
        "import importlib, json, sys, warnings\n"
        "moved = json.loads(sys.argv[1])\n"
        "for old, new_name in moved.items():\n"
        "    new = importlib.import_module(new_name)\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        assert importlib.import_module('gfnlm.' + old) is new, old\n"
        "    print(*[str(w.message) for w in caught if w.category is DeprecationWarning])\n"
        "    module = __import__('gfnlm', fromlist=[old])\n"
        "    assert getattr(module, old) is new, old\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(MOVED_MODULES)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for old, new in MOVED_MODULES.items():
        assert f"gfnlm.{old} moved to {new}" in out.stdout, old


def test_unknown_module_is_still_an_import_error():
    with warnings.catch_warnings(), pytest.raises(ModuleNotFoundError):
        importlib.import_module("gfnlm.no_such_module")


def test_repository_paths_the_modules_name_exist():
    # Module-level paths into the checkout (the CPU server recipes) are relative to the module's
    # own folder: a module moved one level deeper must still find them.
    from gfnlm.serving import serve, vllm_serve
    from gfnlm.tasks import prompt_files

    for path in (serve.CPU_RECIPE, vllm_serve.CPU_RECIPE, prompt_files.DATA_DIR):
        assert path.exists(), path
