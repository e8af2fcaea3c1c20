"""The style the repository claims is the style it has: ``ruff check`` (with E501 at the configured
width of 100) and ``ruff format --check`` pass on the package, the tests, the benchmarks and the
tools, as ``make lint`` runs them."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ["gfnlm", "tests", "benchmarks", "tools"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *FOLDERS],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check_is_clean_with_line_length_enforced():
    result = ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    settings = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-settings", "gfnlm/cli.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "line-too-long (E501)" in settings and "linter.line_length = 100" in settings


def test_ruff_format_leaves_every_file_as_it_is():
    result = ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
