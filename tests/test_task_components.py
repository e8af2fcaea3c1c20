"""Tasks as registered components: prompts, grading, rewards and evaluation through the configured
task; data sets in the formats people have (parquet, save_to_disk) through the whole trainer; the
math recipe on a tiny model."""

import json
from pathlib import Path

import attrs
import datasets
import pytest
from test_trainer import REPO, run_cli, scalars, tiny_overrides

from gfnlm.contracts.registry import RegistryError, build, names
from gfnlm.evaluation.held_out import pass_at_k
from gfnlm.models.loading import ensure_smollm2, load_tokenizer
from gfnlm.tasks.base import chat_prompt
from gfnlm.tasks.prompt_files import format_prompt
from gfnlm.tasks.prompts import PromptSet
from gfnlm.tasks.synthetic_reasoning import save_tokenizer
from gfnlm.training.config import load_config
from gfnlm.training.trainer import Trainer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ensure_smollm2())


def test_the_shipped_tasks_are_registered() -> None:
    assert {"factual", "math", "creative", "chain_sum"} <= set(names("task"))


@pytest.mark.parametrize(
    "record",
    [
        {"question": "What is the capital of Peru?"},
        {"question": "Write a haiku about rain.", "template": "plain"},
    ],
)
def test_factual_prompts_are_todays_prompts(record, tokenizer) -> None:
    """The factual task formats a prompt exactly as ``format_prompt`` does, so the default run's
    numbers stay."""
    task = build("task", "factual")
    assert task.format_prompt(tokenizer, record) == format_prompt(
        tokenizer, record["question"], record.get("template", "short_answer")
    )


def test_math_prompt_is_qwen_math_cot(tokenizer) -> None:
    text = build("task", "math").format_prompt(tokenizer, {"question": "What is 2+3?"})
    system = text.index("Please reason step by step, and put your final answer within \\boxed{}.")
    assert system < text.index("What is 2+3?")
    custom = build("task", "math", system_prompt="", template="Solve: {question}").format_prompt(
        tokenizer, {"question": "What is 2+3?"}
    )
    assert "Solve: What is 2+3?" in custom and "reason step by step" not in custom


def test_a_chat_template_without_a_system_role_gets_the_system_text_in_the_user_message(
    tmp_path: Path,
) -> None:
    save_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<user> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert chat_prompt(tok, "Question : a", "Answer") == "<user> Answer\n\nQuestion : a <assistant>"


def test_task_options_are_checked_by_name() -> None:
    with pytest.raises(
        RegistryError,
        match=r"task 'math' has no option 'sytem_prompt'.*did you mean 'system_prompt'",
    ):
        build("task", "math", sytem_prompt="x")
    with pytest.raises(
        RegistryError, match=r"template='Q': must be one of short_answer, plain or a format string"
    ):
        build("task", "factual", template="Q")
    with pytest.raises(RegistryError, match=r"unknown task 'mathh'.*did you mean 'math'"):
        build("task", "mathh")


def test_chain_sum_answers_come_from_the_question() -> None:
    task = build("task", "chain_sum")
    gold = task.answers_for({"question": "Q a 3 b 5 c 8"})
    assert gold == ("6",)
    assert task.is_correct("a 3 b 5 = 8 c 8 = 6 A 6", gold) and not task.is_correct("A 5", gold)
    assert task.answer_key("x A 7") == "7" and not task.format_ok("no answer")


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 0, 2, 0.0),
        (4, 4, 1, 1.0),
        (4, 3, 2, 1.0),  # n - c < k: every k-subset has a correct one
        (8, 2, 8, 1.0),
        (8, 2, 1, 0.25),  # k = n: any correct; k = 1: avg@n
        (10, 3, 4, 1 - 35 / 210),  # C(7,4) / C(10,4)
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def _math_records() -> dict[str, list]:
    return {
        "problem": [
            "What is $1/2 + 1/4$?",
            "What is 6 times 7?",
            "Compute $10 - 3$.",
            "What is 9 / 3?",
        ],
        "solution_answer": ["\\frac{3}{4}", "42", "7", "3"],
    }


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_a_data_set_of_another_format_trains_and_evaluates(
    kind, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A parquet file and a save_to_disk folder, with their own column names, through the whole
    trainer on the math task: the eval set is graded and the run trains."""
    data = datasets.Dataset.from_dict(_math_records())
    if kind == "parquet":
        spec = str(tmp_path / "math.parquet")
        data.to_parquet(spec)
    else:
        spec = str(tmp_path / "math_set")
        data.save_to_disk(spec)
    overrides = tiny_overrides(
        tiny_model_dir,
        spec,
        spec,
        tmp_path / "run",
        **{
            "task.name": "math",
            "data.question_field": "problem",
            "data.answer_field": "solution_answer",
            "train.steps": 2,
            "sampling.max_new_tokens": 8,
        },
    )
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    assert trainer.eval_prompts.answers == (("\\frac{3}{4}",), ("42",), ("7",), ("3",))
    assert trainer.train_prompts.answers == trainer.eval_prompts.answers
    assert "reason step by step" in trainer.train_prompts.texts[0]
    results = trainer.train()
    assert set(results["after"]) >= {
        "accuracy_t1",
        "pass_at_k",
        "majority_at_k",
        "greedy_accuracy",
        "format_ok_rate",
        "mean_length",
    }
    assert [step for step, _ in scalars(tmp_path / "run/tb")["train/loss"]] == [1, 2]


def test_gfnlm_eval_grades_a_parquet_set_with_the_math_task_and_writes_json(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    spec = str(tmp_path / "math.parquet")
    datasets.Dataset.from_dict(_math_records()).to_parquet(spec)
    out = tmp_path / "eval.json"
    code, err = run_cli(
        [
            "eval",
            "--task",
            "math",
            "--prompts",
            spec,
            "--question-field",
            "problem",
            "--answer-field",
            "solution_answer",
            "--model",
            str(tiny_model_dir),
            "--samples",
            "4",
            "--k",
            "2",
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    assert (
        result["task"] == "math"
        and result["metrics"]["k"] == 2
        and result["metrics"]["num_questions"] == 4
    )
    # A random tiny model writes no \boxed{}: every answer is wrong and badly formatted.
    assert result["metrics"]["accuracy_t1"] == 0.0 and result["metrics"]["format_ok_rate"] == 0.0


def test_powerflow_reasoning_recipe_runs_on_a_tiny_model(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    """configs/powerflow_reasoning.yaml (math task, ψ = −0.5, bundled math set) end to end on
    CPU."""
    code, err = run_cli(
        [
            "train",
            str(REPO / "configs/powerflow_reasoning.yaml"),
            f"model.path={tiny_model_dir}",
            "model.lora_targets=[q_proj,v_proj]",
            "train.steps=2",
            "sampling.max_new_tokens=8",
            "data.eval_max_questions=4",
            "train.eval_samples=2",
            f"train.out_dir={tmp_path}",
            "train.device=cpu",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    found = scalars(tmp_path / "tb")
    assert [step for step, _ in found["train/target/format_ok_frac"]] == [1, 2]
    assert all(
        value == 0.0 for _, value in found["train/target/format_ok_frac"]
    )  # no box from a random model
    assert "eval/format_ok_rate" in found


def test_the_verifier_reward_grades_math_through_the_labels(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """GRPO with the verifier on the math task: the target gets the run's task and the rollouts
    carry each prompt's gold answers."""
    overrides = tiny_overrides(
        tiny_model_dir,
        "math_train",
        "''",
        tmp_path,
        **{
            "task.name": "math",
            "objective.name": "grpo",
            "target.name": "reward",
            "target.options.reward": "gfnlm.tasks.rewards:verifier",
            "sampling.samples_per_prompt": 2,
        },
    )
    trainer = Trainer(load_config(REPO / "configs/default.yaml", overrides), progress=False)
    assert trainer.components.target.task is trainer.task
    rollouts = trainer.components.sampler.sample(trainer.train_prompts.batch([0, 1]), 2)
    assert rollouts.labels == tuple(a for a in trainer.train_prompts.answers[:2] for _ in range(2))
    boxed = tuple(
        f"so \\boxed{{{gold[0]}}}" if i % 2 == 0 else "no idea"
        for i, gold in enumerate(rollouts.labels)
    )

    scores = trainer.components.target.score(attrs.evolve(rollouts, response_text=boxed), None)
    assert scores.log_reward.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_the_factual_task_refuses_an_answer_nothing_can_match(tokenizer, tmp_path: Path) -> None:
    """Gold answers are the task's to check: "The" normalises to nothing for the factual task (and
    would be a fine answer for another task), so loading the set with the factual task fails."""
    data = tmp_path / "qa.jsonl"
    data.write_text(
        json.dumps({"question": "q1", "answers": ["Paris"]})
        + "\n"
        + json.dumps({"question": "q2", "answers": ["The"]})
        + "\n"
    )
    with pytest.raises(
        ValueError, match=r"data\.eval='.*qa\.jsonl' row 2: answer 'The' has no letters or digits"
    ):
        PromptSet.load(str(data), "data.eval", tokenizer, 256, task=build("task", "factual"))
    assert PromptSet.load(
        str(data), "data.eval", tokenizer, 256, task=build("task", "creative")
    ).answers[1] == ("The",)
