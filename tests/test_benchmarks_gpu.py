"""The GPU benchmarks still run where no GPU is: benchmarks/gpu/trainer_gpu.py's and
decoding_gpu.py's own code on CPU (a tiny random Llama, float32), and every shell script parses and
names only files that exist."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gfnlm.models.loading import ensure_smollm2

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
REPO = GPU.parents[1]


@pytest.mark.parametrize("mode", [[], ["--full"]], ids=["lora", "full"])
def test_trainer_script_runs_on_cpu_and_recomputes_the_behaviour_log_probs(
    tmp_path: Path, mode: list[str]
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(GPU / "trainer_gpu.py"),
            "--tokenizer",
            str(ensure_smollm2()),
            "--device",
            "cpu",
            "--size",
            "tiny",
            "--steps",
            "2",
            "--prompts",
            "2",
            "--samples",
            "2",
            "--max-new-tokens",
            "6",
            "--work-dir",
            str(tmp_path),
            *mode,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = re.search(
        r"median of steps 2\.\.2: step ([\d.]+) s .* rollout (\d+) tokens/s", result.stdout
    )
    assert summary and float(summary[1]) > 0 and int(summary[2]) > 0, result.stdout[-1000:]
    # In float32 the trainer's pass over the rollouts gives the sampler's log-probs back.
    mean, largest = re.search(
        r"\|behaviour - recomputed\| token log-prob: mean (\S+), max (\S+) \(float32\)",
        result.stdout,
    ).groups()
    assert float(largest) < 1e-4 and float(mean) <= float(largest)


def test_decoding_script_runs_on_cpu_and_both_paths_draw_the_same_tokens(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(GPU / "decoding_gpu.py"),
            "--device",
            "cpu",
            "--size",
            "tiny",
            "--batches",
            "2x2",
            "--max-new-tokens",
            "6",
            "--rounds",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "decoding_gpu_cpu.json").read_text())["results"]
    assert [row["path"] for row in rows] == ["dynamic", "static"]
    assert all(row["tokens_per_s"] > 0 and row["same_tokens"] == 1.0 for row in rows), rows
    assert "| 2x2 | static |" in (tmp_path / "decoding_gpu_cpu.md").read_text()


@pytest.mark.parametrize("script", sorted(GPU.glob("*.sh")), ids=lambda path: path.name)
def test_shell_script_parses_and_its_files_exist(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    named = set(
        re.findall(
            r"(?<![\w/$])((?:benchmarks|tools|configs)/[\w./-]+\.(?:py|sh|yaml|txt))",
            script.read_text(),
        )
    )
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"{script.name} names files that do not exist: {missing}"
