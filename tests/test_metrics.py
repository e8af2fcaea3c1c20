"""Creative metrics (gfnlm.tasks.metrics) on hand-made examples, with the real MiniLM embedding
model; the prompt-check rules; the bundled creative prompt sets; ``evaluate_creative`` and ``gfnlm
eval --metrics creative`` on a tiny random Llama with the real SmolLM2 tokenizer."""

import json
from pathlib import Path

import pytest
import torch

from gfnlm.cli import main
from gfnlm.evaluation.held_out import evaluate_creative
from gfnlm.models.loading import ensure_smollm2, load_tokenizer
from gfnlm.samplers.hf import HFSampler
from gfnlm.tasks import metrics
from gfnlm.tasks.prompt_files import DATA_DIR, PromptFileError, format_prompt, load_prompt_file
from gfnlm.tasks.prompts import PromptSet
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

POEM = "The sea is dark tonight\nand the moon hangs low above the waves."
DISJOINT = [
    "My cat sleeps all afternoon on the warm kitchen windowsill.",
    "Quarterly tax returns must be filed before any April deadline.",
    "Volcanic eruptions pour molten lava down steep mountain slopes.",
]


@pytest.fixture(scope="module")
def embedder() -> metrics.SentenceEmbedder:
    return metrics.SentenceEmbedder()


# --------------------------------------------------------------------------- diversity / redundancy


def test_identical_responses_have_zero_diversity_and_full_redundancy(embedder) -> None:
    group = [POEM] * 4
    assert metrics.semantic_diversity(embedder.encode(group)) == pytest.approx(0.0, abs=1e-6)
    assert metrics.lexical_redundancy(group) == pytest.approx(1.0)
    # 13 words, 11 distinct ("the" three times), repeated 4 times: 11 / 52; 12 distinct bigrams.
    assert metrics.distinct_n(group, 1) == pytest.approx(11 / 52)
    assert metrics.distinct_n(group, 2) == pytest.approx(12 / 48)


def test_disjoint_responses_have_high_diversity_and_no_redundancy(embedder) -> None:
    assert metrics.lexical_redundancy(DISJOINT) == 0.0
    assert metrics.distinct_n(DISJOINT, 1) == 1.0
    assert metrics.distinct_n(DISJOINT, 3) == 1.0
    assert metrics.semantic_diversity(embedder.encode(DISJOINT)) > 0.75


def test_semantic_diversity_sees_meaning_that_rouge_misses(embedder) -> None:
    """Paraphrases with no word in common: ROUGE-L says 0 overlap, MiniLM says they are close."""
    paraphrases = ["The physician arrived quickly.", "A doctor came fast."]
    assert metrics.lexical_redundancy(paraphrases) == 0.0
    close = metrics.semantic_diversity(embedder.encode(paraphrases))
    far = metrics.semantic_diversity(embedder.encode([paraphrases[0], DISJOINT[1]]))
    assert close < 0.5 < far


def test_semantic_diversity_by_hand() -> None:
    # Unit vectors at 0 and 90 degrees and one opposite to the first: cosines 0, -1, 0.
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert metrics.semantic_diversity(embeddings) == pytest.approx(1 - (0 - 1 + 0) / 3)
    with pytest.raises(ValueError, match="k >= 2"):
        metrics.semantic_diversity(embeddings[:1])


def test_weighted_pair_means_by_hand() -> None:
    # Cosines 0 (pair 0-1), -1 (pair 0-2), 0 (pair 1-2). Weights (2, 1, 1): pair weights 2, 2, 1.
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert metrics.semantic_diversity(embeddings, weights=[2, 1, 1]) == pytest.approx(
        1 - (2 * 0 + 2 * -1 + 0) / 5
    )
    # A zero weight drops a response: the others' pairs alone.
    assert metrics.semantic_diversity(embeddings, weights=[1, 0, 1]) == pytest.approx(2.0)
    texts = ["the sea is wide", "the sea is wide", "a cat sat down"]
    assert metrics.lexical_redundancy(texts, weights=[1, 1, 0]) == pytest.approx(1.0)
    assert metrics.lexical_redundancy(texts, weights=[0, 1, 1]) == pytest.approx(0.0)
    assert metrics.lexical_redundancy(texts) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="weights: must be 3 non-negative numbers"):
        metrics.semantic_diversity(embeddings, weights=[1, -1, 1])


def test_embedder_pooling_ignores_padding_and_is_unit_norm(embedder) -> None:
    together = embedder.encode(["A cat.", DISJOINT[1] + " " + DISJOINT[2]])
    alone = embedder.encode(["A cat."])
    assert together.shape == (2, 384)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


def test_lexical_redundancy_by_hand() -> None:
    # LCS("a b c d", "a b x y") = 2 of 4 words each: F1 = 0.5; the other two pairs share "a b" too.
    assert metrics.lexical_redundancy(["a b c d", "a b x y"]) == pytest.approx(0.5)
    assert metrics.lexical_redundancy(["a b c d", "a b x y", "d c b a"]) == pytest.approx(
        (0.5 + 0.25 + 0.25) / 3
    )
    with pytest.raises(ValueError, match="at least 2"):
        metrics.lexical_redundancy(["only one"])


def test_distinct_n_by_hand() -> None:
    assert metrics.distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)
    assert metrics.distinct_n(["a b a", "a c"], 2) == pytest.approx(3 / 3)
    assert metrics.distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert metrics.distinct_n(["", "!"], 1) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        metrics.distinct_n(["a"], 0)


# --------------------------------------------------------------------------- quality proxies


def test_repetition_rate_by_hand() -> None:
    # 3-grams: (the sea the) (sea the sea) (the sea the) (sea the sea): 2 of 4 repeat.
    assert metrics.repetition_rate("The sea, the sea, the sea!") == pytest.approx(0.5)
    assert metrics.repetition_rate(DISJOINT[0]) == 0.0
    assert metrics.repetition_rate("too short") == 0.0
    assert metrics.repetition_rate("a b a b a b a b", n=2) == pytest.approx(1 - 2 / 7)


def test_mean_token_logprob_by_hand() -> None:
    logp = torch.tensor([[-1.0, -3.0, -99.0], [-2.0, -99.0, -99.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    torch.testing.assert_close(
        metrics.mean_token_logprob(logp, mask), torch.tensor([-2.0, -2.0, 0.0])
    )


@pytest.mark.parametrize(
    ("text", "checks", "failed"),
    [
        ("one\ntwo\n\nthree\nfour\n", {"lines": 4}, []),  # blank lines do not count
        ("one\ntwo\nthree", {"lines": 4}, ["lines"]),
        ("Here is a poem:\na\nb\nc\nd", {"lines": 4}, ["lines"]),  # a preamble is a line
        ("The waves roll in.", {"mentions": ["sea", "wave"]}, []),  # plural allowed
        ("The tide is out.", {"mentions": ["sea", "wave"]}, ["mentions"]),
        (
            "A wavering voice, a seal.",
            {"mentions": ["sea", "wave"]},
            ["mentions"],
        ),  # whole words only
        ("The Atlantic Ocean.", {"mentions": ["atlantic ocean"]}, []),  # phrases
        ("Stars over the night sky", {"avoids": ["night"]}, ["avoids"]),
        ("Stars over the nightly sky", {"avoids": ["night"]}, []),
        ('"The map was WRONG," she said.', {"starts_with": "The map was wrong."}, []),
        ("Well, the map was wrong.", {"starts_with": "The map was wrong."}, ["starts_with"]),
        ("one two three", {"max_words": 3, "min_words": 3}, []),
        ("one two three four", {"max_words": 3, "min_words": 5}, ["max_words", "min_words"]),
        (
            "Why did the cat sit on the laptop? To keep an eye on the mouse.",
            {"max_words": 50, "mentions": ["cat"], "lines": 1},
            [],
        ),
    ],
)
def test_prompt_check_rules(text: str, checks: dict, failed: list[str]) -> None:
    assert metrics.failed_checks(text, metrics.validate_checks(checks, "test")) == failed


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        (
            {"rhymes": True},
            r"test: checks.rhymes=True: unknown rule; allowed: lines, .*starts_with",
        ),
        ({"lines": "four"}, r"checks.lines='four': must be an integer >= 0"),
        ({"lines": True}, r"checks.lines=True: must be an integer"),
        ({"mentions": []}, r"checks.mentions=\[\]: must be a non-empty list"),
        ({"mentions": "sea"}, r"checks.mentions='sea': must be a non-empty list"),
        ({"starts_with": "..."}, r"checks.starts_with='...': must be a phrase"),
        (["lines", 4], r"checks=\['lines', 4\]: must be an object of rules \(lines, "),
    ],
)
def test_bad_checks_are_one_line_errors(checks, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        metrics.validate_checks(checks, "test")
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- bundled prompts


def test_bundled_creative_sets() -> None:
    train = load_prompt_file(DATA_DIR / "creative_train.jsonl")
    held_out = load_prompt_file(DATA_DIR / "creative_eval.jsonl")
    assert len(train) + len(held_out) >= 60 and len(held_out) >= 20
    assert not {r["question"] for r in train} & {r["question"] for r in held_out}
    for records, spec in ((train, "creative_train"), (held_out, "creative_eval")):
        checks = metrics.load_checks(spec, "--prompts")
        assert len(checks) == len(records) and all(checks)  # every prompt states a checkable rule
        assert {r["kind"] for r in records} == {"poem", "story", "joke"}
        assert all(r["template"] == "plain" for r in records)


def test_plain_template_passes_the_prompt_as_is() -> None:
    tokenizer = load_tokenizer(ensure_smollm2())
    question = "Tell a short joke about a cat."
    plain = format_prompt(tokenizer, question, "plain")
    assert f"<|im_start|>user\n{question}<|im_end|>" in plain
    assert "Answer in a few words" in format_prompt(tokenizer, question)
    prompts = PromptSet.load("creative_eval", "--prompts", tokenizer, 256)
    assert "Answer in a few words" not in "".join(prompts.texts)


def test_unknown_template_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "Write a poem.", "template": "poem"}) + "\n")
    with pytest.raises(
        PromptFileError, match=r"p.jsonl:1: template='poem': must be one of short_answer, plain"
    ):
        load_prompt_file(path)


# --------------------------------------------------------------------------- evaluation and CLI


@pytest.fixture
def creative_file(tmp_path: Path) -> Path:
    path = tmp_path / "creative.jsonl"
    lines = [
        {
            "question": "Write a poem of exactly two lines about the sea.",
            "template": "plain",
            "checks": {"lines": 2, "mentions": ["sea"]},
        },
        {
            "question": "Tell a short joke about a cat.",
            "template": "plain",
            "checks": {"max_words": 50},
        },
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_evaluate_creative_on_a_tiny_model(
    tiny_model_dir: Path, creative_file: Path, embedder
) -> None:
    """An untrained policy at T = 1 samples from its own base model, so the fluency (the base
    model's mean token log-prob) must equal the mean of the behaviour log-probs of the same draw."""
    policy = CausalLMPolicy.from_config(
        ModelConfig(lora=True, lora_targets=["q_proj", "v_proj"]),
        tiny_model_dir,
        torch.device("cpu"),
    )
    prompts = PromptSet.load(str(creative_file), "--prompts", policy.tokenizer, 256)
    checks = metrics.load_checks(str(creative_file), "--prompts")
    torch.manual_seed(3)
    result = evaluate_creative(
        policy, prompts, checks, 3, 10, embedder=embedder, progress=False, target_alphas=(1.0, 0.5)
    )
    torch.manual_seed(3)
    sampler = HFSampler(max_new_tokens=10)
    sampler.setup(policy)
    rollouts = sampler.sample(prompts.batch([0, 1]), 3)
    assert [list(g) for g in result.responses] == [
        list(rollouts.response_text[:3]),
        list(rollouts.response_text[3:]),
    ]
    behaviour = metrics.mean_token_logprob(rollouts.behaviour_logp, rollouts.response_mask)
    assert result.fluency == pytest.approx(float(behaviour.mean()), abs=1e-4)
    assert result.mean_length == pytest.approx(float(rollouts.lengths.float().mean()))
    texts = rollouts.response_text
    expected_div = [metrics.semantic_diversity(embedder.encode(texts[i : i + 3])) for i in (0, 3)]
    assert result.semantic_diversity == pytest.approx(sum(expected_div) / 2, abs=1e-5)
    assert result.check_pass_rate == pytest.approx(
        sum(not metrics.failed_checks(t, checks[i // 3]) for i, t in enumerate(texts)) / 6
    )
    assert result.num_prompts == 2 and result.samples_per_prompt == 3
    assert "responses" not in result.as_dict() and "target_estimates" not in result.as_dict()
    # The target estimates, by hand: weights softmax(α·log p_base(y) − log π(y)) within each prompt.
    sequence_logp = (rollouts.behaviour_logp * rollouts.response_mask).sum(-1).double()
    embedded = embedder.encode(texts)
    for alpha in (1.0, 0.5):
        weights = [torch.softmax((alpha - 1) * sequence_logp[i : i + 3], 0) for i in (0, 3)]
        estimate = result.target_estimates[alpha]
        flu = [
            float((w * behaviour[i : i + 3]).sum()) for w, i in zip(weights, (0, 3), strict=True)
        ]
        assert estimate["fluency"] == pytest.approx(sum(flu) / 2, abs=1e-4)
        div = [
            metrics.semantic_diversity(embedded[i : i + 3], w)
            for w, i in zip(weights, (0, 3), strict=True)
        ]
        assert estimate["semantic_diversity"] == pytest.approx(sum(div) / 2, abs=1e-4)
        ess = sorted(float(1 / (w**2).sum()) for w in weights)
        assert estimate["ess_min"] == pytest.approx(ess[0], rel=1e-3)
    # α = 1 is the policy itself (an untrained adapter): uniform weights, the drawn metrics.
    assert result.target_estimates[1.0]["semantic_diversity"] == pytest.approx(
        result.semantic_diversity, abs=1e-4
    )
    assert result.target_estimates[1.0]["ess_min"] == pytest.approx(3.0, abs=1e-3)
    assert result.target_estimates[0.5]["ess_min"] < 3.0 - 1e-3


def test_cli_train_creative_config_then_eval_creative(
    tiny_model_dir: Path, creative_file: Path, tmp_path: Path, capsys
) -> None:
    """configs/powerflow_creative.yaml trains on the bundled creative prompts; the checkpoint is
    evaluated with ``gfnlm eval --metrics creative --run`` and written as JSON."""
    run, out = tmp_path / "run", tmp_path / "out.json"
    code = main(
        [
            "train",
            str(Path(__file__).resolve().parents[1] / "configs" / "powerflow_creative.yaml"),
            f"model.path={tiny_model_dir}",
            "model.lora_targets=[q_proj,v_proj]",
            "sampling.max_new_tokens=6",
            "train.steps=1",
            "train.device=cpu",
            "train.threads=0",
            f"train.out_dir={run}",
            "--quiet",
        ]
    )  # 0: leave torch's threads alone
    assert code == 0 and (run / "checkpoints").is_dir()
    code = main(
        [
            "eval",
            "--metrics",
            "creative",
            "--run",
            str(run),
            "--prompts",
            str(creative_file),
            "--samples",
            "2",
            "--max-new-tokens",
            "6",
            "--temperature",
            "1.3",
            "--top-p",
            "0.9",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--target-alpha",
            "0.5",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "semantic diversity" in printed and "T=1.3, top-p=0.9" in printed
    assert "p_base^0.5 (estimate)" in printed and "effective samples per prompt" in printed
    saved = json.loads(out.read_text())
    assert 1.0 <= saved["target_estimates"]["0.5"]["ess_min"] <= 2.0
    assert saved["temperature"] == 1.3 and saved["top_p"] == 0.9
    assert len(saved["responses"]) == 2 and all(len(g) == 2 for g in saved["responses"])
    assert 0.0 <= saved["metrics"]["lexical_redundancy"] <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--prompts: required with --metrics creative"),
        (["--prompts", "creative_eval", "--samples", "1"], "--samples=1: must be >= 2"),
        (["--prompts", "creative_eval", "--top-p", "0"], "--top-p=0.0: must be in (0, 1]"),
        (
            ["--prompts", "creative_eval", "--target-alpha", "0"],
            "--target-alpha=0.0: must be a finite number > 0",
        ),
        (["--prompts", "no_such_set"], "--prompts='no_such_set': no such file"),
        (["--prompts", "BAD"], "prompt 1: checks.rhyme=True: unknown rule; allowed: lines"),
    ],
)
def test_cli_eval_creative_bad_input(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    """One-line errors (exit 2) before any model is loaded (the model path does not exist)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Write a poem.", "checks": {"rhyme": True}}) + "\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    code = main(["eval", "--metrics", "creative", "--model", str(tmp_path / "no-model"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
