"""The package layout by layer: every import of every module (lazy ones inside functions included)
points down the layers or stays in its own, never up. Checked on the source (the AST), so an
import that only runs on some path is caught as well."""

import ast
import subprocess
import sys
from pathlib import Path

import gfnlm

PACKAGE = Path(gfnlm.__file__).parent

# Sub-package (or top-level module) → layer. A module may import its own layer and those below.
LAYERS = {
    "contracts": 0,
    "models": 1,
    "serving": 1,
    "objectives": 2,
    "logz": 2,
    "exploration": 2,
    "tasks": 2,
    "targets": 2,
    "samplers": 2,
    "training": 3,
    "evaluation": 3,
    "cli": 4,
}


def layer_of(module: str) -> int | None:
    """The layer of a dotted ``gfnlm`` module name (``None`` for the package itself and
    ``data``)."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else 0


def module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every ``gfnlm`` import in a module, wherever it stands (``from X
    import y`` counts as X.y; relative imports are resolved against the module's package)."""
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "gfnlm" or name.startswith("gfnlm.")]


def layer_violations(root: Path) -> list[str]:
    """``file:line: A (layer a) imports B (layer b)`` for each import of a higher layer under
    ``root`` (a folder laid out as the ``gfnlm`` package)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        if own is None:
            continue
        for line, name in imported_modules(
            ast.parse(path.read_text()), module, path.name == "__init__.py"
        ):
            other = layer_of(name)
            if other is not None and other > own:
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {module} (layer {own}) imports "
                    f"{name} (layer {other})"
                )
    return problems


def test_every_sub_package_has_a_layer():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert set(packages) - {"data"} <= set(LAYERS), set(packages) - set(LAYERS)
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "cli.py"]


def test_no_module_imports_a_higher_layer():
    assert layer_violations(PACKAGE) == []


def test_the_check_finds_a_planted_back_edge(tmp_path: Path):
    """A test of the test: a lazy import of the trainer inside a contracts function, in a copy of
    the package, is reported with its file and line; the untouched copy is clean."""
    copy = tmp_path / "gfnlm"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    assert layer_violations(copy) == []
    errors = copy / "contracts" / "errors.py"
    errors.write_text(
        errors.read_text() + "\n\ndef planted():\n    from gfnlm.training.trainer import Trainer\n"
        "    return Trainer\n"
    )
    (copy / "models" / "planted.py").write_text(
        "from ..samplers import hf\n"
    )  # relative, one layer up
    found = layer_violations(copy)
    assert len(found) == 2, found
    assert (
        "contracts/errors.py" in found[0]
        and "gfnlm.contracts.errors (layer 0) imports gfnlm.training" in found[0]
    )
    assert "gfnlm.models.planted (layer 1) imports gfnlm.samplers.hf (layer 2)" in found[1], found


def test_import_gfnlm_leaves_the_import_system_alone():
    """``import gfnlm`` adds no finder or hook; importing every layer adds none of gfnlm's own
    (transformers installs a finder of its own when it is imported, which is not gfnlm's doing)."""
    code = (
        "import sys\n"
        "before = list(sys.meta_path), list(sys.path_hooks)\n"
        "import gfnlm\n"
        "assert (list(sys.meta_path), list(sys.path_hooks)) == before, sys.meta_path\n"
        "import gfnlm.cli, gfnlm.training.trainer, gfnlm.evaluation.exact\n"
        "ours = [f for f in sys.meta_path + sys.path_hooks\n"
        "        if getattr(type(f), '__module__', '').startswith('gfnlm')\n"
        "        or getattr(f, '__module__', '').startswith('gfnlm')]\n"
        "assert not ours, ours\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr


def test_repository_paths_the_modules_name_exist():
    # Module-level paths into the checkout (the CPU server recipes) are relative to the module's
    # own folder: a module moved one level deeper must still find them.
    from gfnlm.serving import serve, vllm_serve
    from gfnlm.tasks import prompt_files

    for path in (serve.CPU_RECIPE, vllm_serve.CPU_RECIPE, prompt_files.DATA_DIR):
        assert path.exists(), path
