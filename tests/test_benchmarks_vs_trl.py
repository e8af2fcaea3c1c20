"""benchmarks/vs_trl.py's random-model path (what ``--device cuda`` runs on a GPU) on CPU: a tiny
random Llama, 2 steps, gfnlm alone; its MFU arithmetic and device look-up; one-line option
errors."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_trl.py"


def vs_trl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def module():
    spec = importlib.util.spec_from_file_location("vs_trl", SCRIPT)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_random_model_path_runs_on_cpu_and_reports_positive_numbers(tmp_path: Path) -> None:
    # This interpreter (gfnlm's venv) has no trl: the run says so in one line and goes on alone.
    result = vs_trl(
        "--device",
        "cpu",
        "--model",
        "random-tiny",
        "--steps",
        "2",
        "--prompts",
        "2",
        "--samples",
        "2",
        "--max-new-tokens",
        "4",
        "--pairs",
        "powerflow",
        "--trl-python",
        sys.executable,
        "--out-dir",
        str(tmp_path / "out"),
        "--work-dir",
        str(tmp_path / "work"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TRL not available" in result.stdout and "running gfnlm alone" in result.stdout
    report = json.loads((tmp_path / "out" / "vs_trl_cpu_random-tiny.json").read_text())
    assert list(report["systems"]) == ["gfnlm PowerFlow"]
    numbers = report["systems"]["gfnlm PowerFlow"]
    for key in ("step_s", "rollout_tokens_per_s", "update_tokens_per_s", "peak_memory_gb"):
        assert math.isfinite(numbers[key]) and numbers[key] > 0, (key, numbers[key])
    assert numbers["update_mfu"] is None  # no peak FLOP/s for a CPU
    assert numbers["generated_tokens_per_step"] <= 2 * 2 * 4
    # The update runs each distinct prompt once, plus every generated token.
    assert numbers["update_tokens_per_step"] > numbers["generated_tokens_per_step"]
    assert 0 < report["linear_params"] <= report["params"]
    table = (tmp_path / "out" / "vs_trl_cpu_random-tiny.md").read_text()
    assert (
        table.startswith("device: CPU")
        and "| gfnlm PowerFlow |" in table
        and "| gfnlm PowerFlow |" in result.stdout
    )


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["--model", "huge"], "--model", "huge"),
        (["--device", "tpu"], "--device", "tpu"),
        (["--steps", "1", "--model", "random-tiny"], "--steps", "1"),
        (["--samples", "1", "--model", "random-tiny"], "--samples", "1"),
        (["--budget-s", "0", "--model", "random-tiny"], "--budget-s", "0"),
        (["--into-docs", "no-such-table.md"], "--into-docs", "no-such-table.md"),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_option(
    args: list[str], option: str, value: str
) -> None:
    result = vs_trl(*args, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert option in lines[0] and value in lines[0], lines[0]


def test_mfu_is_four_n_per_update_token_over_the_peak(module) -> None:
    run = {
        "step_times": [9.0, 2.0, 4.0],
        "peak_gpu_gb": 3.0,
        "peak_rss_gb": 1.0,
        "records": [
            {"generated_tokens": 1, "sample_s": 1.0, "update_tokens": 1, "update_s": 1.0},
            {"generated_tokens": 100, "sample_s": 2.0, "update_tokens": 300, "update_s": 0.5},
            {"generated_tokens": 100, "sample_s": 2.0, "update_tokens": 300, "update_s": 0.5},
        ],
    }
    numbers = module.per_system_numbers([run], linear_params=10**9, flops=1e15, device="cuda")
    assert numbers["step_s"] == 3.0 and (numbers["step_s_min"], numbers["step_s_max"]) == (
        2.0,
        4.0,
    )  # step 1 dropped
    assert numbers["rollout_tokens_per_s"] == 50.0 and numbers["update_tokens_per_s"] == 600.0
    assert numbers["update_mfu"] == pytest.approx(4 * 10**9 * 600 / 1e15)
    assert numbers["peak_memory_gb"] == 3.0
    assert module.per_system_numbers([run], 10**9, None, "cpu")["update_mfu"] is None


@pytest.mark.parametrize(
    ("name", "flops"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_flops_is_looked_up_from_the_device_name(
    module, monkeypatch, name: str, flops: float | None
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    found, text = module.peak_flops("cuda")
    assert found == flops and text.startswith(name)
    assert flops is not None or "MFU omitted" in text
    assert module.peak_flops("cpu")[0] is None
