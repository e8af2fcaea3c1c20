"""``gfnlm eval`` and ``gfnlm sample`` draw with any registered sampler (``--sampler``, options as
``--sampler-option KEY=VALUE``): a bad name or option is one line before any model loads; the
server samplers are built to start their own server (CPU recipe) or to use a given URL; the power
samplers run end to end on a tiny random Llama. The last test evaluates through a real SGLang CPU
server (``make sglang-cpu``); its start-up alone takes ~40 s on two cores, so it is ``slow``."""

import argparse
import json
from pathlib import Path

import pytest
from test_eval_report import _factual_file
from test_input_checks import run_main
from test_trainer import REPO
from transformers import AutoModelForCausalLM

from gfnlm import cli
from gfnlm.contracts.registry import names
from gfnlm.samplers.sglang import SGLangSampler
from gfnlm.samplers.vllm import VLLMSampler


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: bad input must be found before one."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def _eval(model_dir: Path, prompts: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model_dir), "--prompts", str(prompts), "--device", "cpu"] + [
        *extra
    ]


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_an_unknown_sampler_is_one_line_listing_the_allowed_ones(
    command: str, tiny_model_dir: Path, tmp_path: Path, no_model_loads, capsys, monkeypatch
) -> None:
    where = (
        _eval(tiny_model_dir, _factual_file(tmp_path))
        if command == "eval"
        else ["sample", "--model", str(tiny_model_dir), "--prompt", "Hi?", "--device", "cpu"]
    )
    code, err = run_main([*where, "--sampler", "nope"], capsys, monkeypatch)
    allowed = names("sampler")
    assert {"hf", "sglang", "vllm", "power_mh", "power_smc"} <= set(allowed)
    assert code == 2
    assert err == f"gfnlm {command}: error: --sampler='nope': unknown sampler; allowed: " + (
        ", ".join(allowed)
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--sampler", "power_mh", "--temperature", "0.5"],
            "--temperature=0.5: sampler power_mh proposes at temperature 1/alpha",
        ),
        (
            ["--sampler", "power_smc", "--sampler-option", "particles=0"],
            "sampling.sampler_options.particles=0: must be an integer >= 1",
        ),
        (
            ["--sampler", "power_smc", "--sampler-option", "particle=4"],
            "sampler 'power_smc' has no option 'particle'",
        ),
        (["--sampler-option", "alpha"], "--sampler-option='alpha': must be KEY=VALUE"),
        (
            ["--sampler", "sglang", "--sampler-option", "url=localhost"],
            "sampling.sampler_options.url='localhost'",
        ),
        (["--k", "1", "5", "--samples", "4"], "--k=5: must be <= --samples=4"),
        (["--k", "0"], "--k=0: must be >= 1"),
    ],
)
def test_bad_sampler_flags_are_one_line_before_any_model_loads(
    extra: list[str],
    message: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    no_model_loads,
    capsys,
    monkeypatch,
) -> None:
    code, err = run_main(
        _eval(tiny_model_dir, _factual_file(tmp_path), *extra), capsys, monkeypatch
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("gfnlm eval: error: ") and message in err, err


def _args(**values) -> argparse.Namespace:
    defaults = {
        "sampler_option": [],
        "temperature": 0.7,
        "top_p": 0.9,
        "min_p": 0.0,
        "seed": 3,
        "device": "cpu",
    }
    return argparse.Namespace(**{**defaults, **values})


@pytest.mark.parametrize("engine", [SGLangSampler, VLLMSampler])
def test_a_server_sampler_uses_a_given_url_with_the_flags(engine) -> None:
    name = "sglang" if engine is SGLangSampler else "vllm"
    url = "http://127.0.0.1:30000"
    args = _args(sampler=name, sampler_option=[f"url={url}"])
    sampler = cli._build_sampler(args, 12, from_checkpoint=True)
    assert isinstance(sampler, engine) and sampler.url == url and sampler.launch is None
    assert (sampler.temperature, sampler.top_p, sampler.max_new_tokens) == (0.7, 0.9, 12)
    assert sampler.weight_sync == "full"  # a checkpoint's weights go to the server
    sampler = cli._build_sampler(args, 12, from_checkpoint=False)
    assert sampler.weight_sync == "none"  # the server already serves the base model


@pytest.mark.parametrize("name", ["sglang", "vllm"])
def test_a_server_sampler_without_url_starts_the_cpu_recipe(name: str) -> None:
    if not (REPO / ".bench-venvs" / name / "bin" / "python").is_file():
        pytest.skip(f"no .bench-venvs/{name} (make {name}-cpu)")
    sampler = cli._build_sampler(_args(sampler=name), 12, from_checkpoint=False)
    assert sampler.launch == {"cpu": True} and not sampler.url
    assert f".bench-venvs/{name}" in sampler._launch_config.python  # checked, not started
    sampler.close()


def test_power_samplers_take_the_seed_and_leave_temperature_alone() -> None:
    args = _args(sampler="power_smc", sampler_option=["alpha=2", "particles=3"])
    sampler = cli._build_sampler(args, 5, from_checkpoint=False)
    assert (sampler.alpha, sampler.particles, sampler.seed, sampler.max_new_tokens) == (
        2.0,
        3,
        3,
        5,
    )
    assert sampler.temperature == 1.0  # unused by the power samplers, not set from the flag


def test_eval_with_power_smc_writes_its_records(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "smc.json"
    argv = _eval(
        tiny_model_dir,
        _factual_file(tmp_path),
        *["--sampler", "power_smc", "--sampler-option", "particles=2", "--sampler-option"],
        *["alpha=2", "--samples", "2", "--max-new-tokens", "3", "--json", str(out)],
    )
    code, err = run_main(argv, capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["sampler"] == "power_smc"
    assert report["sampler_options"] == {"particles": 2, "alpha": 2}
    assert [len(q["samples"]) for q in report["questions"]] == [2, 2]
    assert all(s["length"] <= 3 for q in report["questions"] for s in q["samples"])


def test_sample_with_power_mh_prints_its_responses_and_cost(
    tiny_model_dir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(cli, "raise_on_sigterm", lambda: None)
    capsys.readouterr()
    code = cli.main(
        ["sample", "--model", str(tiny_model_dir), "--prompt", "Name a colour.", "-n", "3"]
        + ["--sampler", "power_mh", "--sampler-option", "mh_steps=2", "--max-new-tokens", "4"]
        + ["--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert [line[:3] for line in out.splitlines()[:3]] == ["[0]", "[1]", "[2]"]
    cost = float(out.splitlines()[3].split(": ")[1].split(" tokens")[0])
    assert out.splitlines()[3].startswith("(power_mh: ") and cost > 1.0  # MH re-proposes


@pytest.mark.slow
def test_eval_through_a_launched_sglang_cpu_server(tmp_path: Path, capsys, monkeypatch) -> None:
    """A real SGLang server started by ``gfnlm eval --sampler sglang`` on a 2-layer SmolLM2,
    stopped when the evaluation ends; its responses are graded like the in-process sampler's."""
    import psutil

    from gfnlm.models.loading import ensure_smollm2

    model = tmp_path / "small"
    _two_layer_copy(ensure_smollm2(), model)
    out = tmp_path / "sglang.json"
    argv = _eval(
        model, _factual_file(tmp_path), "--sampler", "sglang", "--samples", "2", "--json", str(out)
    )
    code, err = run_main(argv, capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["sampler"] == "sglang" and len(report["questions"]) == 2
    assert 0.0 <= report["metrics"]["accuracy_t1"] <= 1.0
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "sglang" in " ".join(p.info["cmdline"] or [])
        and str(model) in " ".join(p.info["cmdline"] or [])
    ]  # the launched server is gone


def _two_layer_copy(source: Path, out: Path) -> None:
    """SmolLM2-135M-Instruct cut to its first 2 blocks (real embeddings and tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = 2
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
