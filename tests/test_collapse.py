"""The collapse recipe on a tiny random Llama (the real SmolLM2 tokenizer): self-distillation on its
own low-temperature answers must cut the diversity of its T = 1 samples, and the written folder
must load as an ordinary model."""

import json
import sys
from pathlib import Path

import pytest
import torch

from gfnlm.contracts.errors import ConfigError
from gfnlm.contracts.registry import build
from gfnlm.samplers.hf import HFSampler
from gfnlm.tasks import metrics
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from collapse import CollapseOptions, collapse_model

PROMPTS = [
    "Write a poem about the sea.",
    "Tell a joke about cats.",
    "Begin a story set in a forest.",
]


def t1_diversity(
    model_dir, prompt_file, samples: int = 8, max_new_tokens: int = 6
) -> tuple[float, float]:
    """Mean distinct-2 of each prompt's T = 1 samples, and the mean share of distinct responses."""
    policy = CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir), lora=False),
        model_dir,
        torch.device("cpu"),
        keep_base=False,
    )
    prompts = PromptSet.load(
        str(prompt_file), "prompts", policy.tokenizer, 64, task=build("task", "creative")
    )
    sampler = HFSampler(max_new_tokens=max_new_tokens)
    sampler.setup(policy)
    torch.manual_seed(123)
    texts = sampler.sample(prompts.batch(list(range(len(prompts)))), samples).response_text
    groups = [texts[i * samples : (i + 1) * samples] for i in range(len(prompts))]
    return (
        sum(metrics.distinct_n(g, 2) for g in groups) / len(groups),
        sum(len(set(g)) / samples for g in groups) / len(groups),
    )


def test_self_distillation_collapses_diversity(tiny_model_dir, tmp_path):
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text(
        "".join(json.dumps({"question": q, "template": "plain"}) + "\n" for q in PROMPTS)
    )
    options = CollapseOptions(
        temperature=0.3,
        samples=1,
        max_new_tokens=6,
        epochs=80,
        batch_prompts=3,
        lr=3e-2,
        lora=False,
    )
    out = collapse_model(
        str(tiny_model_dir), str(prompt_file), tmp_path / "collapsed", options, progress=False
    )
    record = json.loads((out / "collapse.json").read_text())
    assert (
        record["losses"][-1] < 0.5 * record["losses"][0]
    )  # it learnt its own low-temperature answers
    before_d2, before_unique = t1_diversity(tiny_model_dir, prompt_file)
    after_d2, after_unique = t1_diversity(out, prompt_file)
    assert before_d2 > 0.9 and before_unique == 1.0  # a random model: every T = 1 sample differs
    assert after_d2 < 0.5 * before_d2 and after_unique < 0.75, (before_d2, after_d2, after_unique)
    assert (
        collapse_model(str(tiny_model_dir), str(prompt_file), out, options) == out
    )  # finished: reused


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 1.0}, "collapse temperature=1.0: must be in (0, 1)"),
        ({"samples": 0}, "collapse samples=0: must be >= 1"),
        ({"lr": 0.0}, "collapse lr=0.0: must be > 0"),
    ],
)
def test_bad_collapse_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as error:
        CollapseOptions(**options)
    assert message in str(error.value)
