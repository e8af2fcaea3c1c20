"""An exported folder is usable without gfnlm: a merged folder loads with plain transformers and
``generate()`` samples by default at the run's trained sampling settings; every export carries a
model card naming the target, its α and the objective; an adapter names its base model portably
(a hub id or a folder name, never a path of the machine that exported it). On a real 2-step LoRA
run of a tiny random Llama with the real SmolLM2 tokenizer."""

import json
from pathlib import Path

import pytest
import torch
from test_export import export, train_run
from transformers import AutoModelForCausalLM, AutoTokenizer

from gfnlm.training.model_card import EMBEDDED_HUB_IDS, portable_base_name

# Sampling settings and α unlike the defaults, so that the checks below see the run's values.
TEMPERATURE, TOP_P, ALPHA = 0.7, 0.9, 3.0


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(
        tiny_model_dir,
        tmp_path_factory.mktemp("card") / "run",
        **{
            "sampling.temperature": TEMPERATURE,
            "sampling.top_p": TOP_P,
            "target.options.alpha": ALPHA,
        },
    )


@pytest.fixture(scope="module")
def merged(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "model"
    assert export(run, "--merged", out) == 0
    return out


def test_generate_samples_by_default_at_the_trained_settings(merged: Path) -> None:
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["do_sample"] is True
    assert generation["temperature"] == TEMPERATURE and generation["top_p"] == TOP_P
    assert generation["top_k"] == 0  # the trained distribution: top-k off
    assert generation["max_new_tokens"] == 6  # the run's sampling.max_new_tokens

    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    inputs = tokenizer("What is the capital of France?", return_tensors="pt")
    draws = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        draws.append(model.generate(**inputs).tolist())
    greedy = model.generate(**inputs, do_sample=False).tolist()
    assert len({json.dumps(d) for d in draws}) > 1  # plain generate() samples
    assert any(d != greedy for d in draws)
    assert all(len(d[0]) - inputs["input_ids"].shape[1] <= 6 for d in draws)


def test_the_card_names_target_alpha_objective_steps_and_how_to_load(
    merged: Path, run: Path, tiny_model_dir: Path
) -> None:
    card = (merged / "README.md").read_text()
    assert "`alpha_power`" in card and f"α = {ALPHA:g}" in card and f"alpha={ALPHA}" in card
    assert "`la_tb`" in card  # the objective of configs/default.yaml, which the run keeps
    assert "| steps trained | 2 (of train.steps=2) |" in card
    assert f'folder = "{merged.name}"' in card and "from_pretrained(folder)" in card
    assert str(merged.parent) not in card  # the folder's name, not where this machine keeps it
    assert f"temperature {TEMPERATURE:g}" in card
    saved = (run / "config.yaml").read_text()
    assert saved.strip() in card  # the resolved config, as the run saved it
    # above the config, the base model is named by its folder, not by this machine's path to it
    summary = card.split("## Resolved config")[0]
    assert f"`{tiny_model_dir.name}`" in summary and str(tiny_model_dir) not in summary


def test_the_adapter_names_its_base_portably_and_carries_the_card(
    run: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "adapter"
    assert export(run, "--adapter", out) == 0
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == tiny_model_dir.name and not Path(base).is_absolute()
    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained(base, folder)" in card and "`alpha_power`" in card
    assert f"base_model: {tiny_model_dir.name}" in card


def test_portable_base_names(tmp_path: Path) -> None:
    assert portable_base_name("smollm2", tmp_path) == EMBEDDED_HUB_IDS["smollm2"]
    assert EMBEDDED_HUB_IDS["smollm2"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-Math-1.5B"}))
    assert portable_base_name(str(recorded), recorded) == "Qwen/Qwen2.5-Math-1.5B"
    # a local path recorded as the name is not a hub id
    (recorded / "config.json").write_text(json.dumps({"_name_or_path": str(recorded)}))
    assert portable_base_name(str(recorded), recorded) == "recorded"
    cached = tmp_path / "hub" / "models--meta-llama--Llama-3.2-1B" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert portable_base_name(str(cached), cached) == "meta-llama/Llama-3.2-1B"
