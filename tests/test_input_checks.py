"""Input checks that need a set-up of their own beside the table of tests/test_bad_input.py: user
modules imported from the working directory, output files written atomically, answers given as
numbers, creative prompts in parquet, the evaluation's progress bar and an interrupted run's
last message."""

import io
import json
import re
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import mounted_tmpfs
from test_trainer import REPO, tiny_overrides

from gfnlm import cli
from gfnlm.contracts.errors import RunError, quoted, shortened
from gfnlm.contracts.paths import write_text_atomically
from gfnlm.contracts.registry import RegistryError, import_components, lookup, names, unregister
from gfnlm.evaluation import held_out as evaluation
from gfnlm.evaluation.held_out import CreativeResult, evaluate
from gfnlm.tasks.prompts import PromptSet
from gfnlm.tasks.records import load_records
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy


def run_main(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    monkeypatch.setattr(cli, "raise_on_sigterm", lambda: None)  # keep pytest's own SIGTERM handling
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


# ------------------------------------------------------------ messages stay short


def test_quoted_shortens_long_values_to_their_ends() -> None:
    assert quoted("abc") == "'abc'"
    long = "x" * 40 + "y" * 5000 + "z" * 20
    assert quoted(long) == repr("x" * 40 + "…" + "z" * 20)
    assert shortened("a" * 10, limit=8) == "aaaa…aa"


def test_unknown_long_component_name_is_shortened_and_short_typos_keep_the_suggestion() -> None:
    with pytest.raises(RegistryError) as error:
        lookup("objective", "q" * 300)
    assert len(str(error.value)) < 400 and "q" * 41 not in str(error.value)
    with pytest.raises(RegistryError, match=r"did you mean 'la_tb'"):
        lookup("objective", "la_tbb")


# ------------------------------------------------------------ --import and imports:


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        (
            "gfnlm_test_divides",
            "x = 1\n\ny = 1 / 0\n",
            (
                r"--import='{name}': raises ZeroDivisionError: division by zero "
                r"\({name}\.py, line 3\)$"
            ),
        ),
        (
            "gfnlm_test_syntax",
            "x = 1\ndef f(:\n",
            r"--import='{name}': syntax error at {name}\.py line 2: invalid syntax",
        ),
        (
            "gfnlm_test_raises",
            "raise RuntimeError('no GPU here\\nsecond line')\n",
            r"--import='{name}': raises RuntimeError: no GPU here \({name}\.py, line 1\)$",
        ),
    ],
)
def test_a_module_that_fails_to_import_is_one_line_naming_it(
    name: str, source: str, expected: str, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError) as error:
        import_components([name])
    message = str(error.value)
    assert "\n" not in message
    assert re.search(expected.format(name=name), message), message
    assert name not in sys.modules


@pytest.fixture
def registered_here():
    """Names of modules the test imports; their tasks are unregistered and the modules forgotten
    afterwards, so the registry's listings in other tests' messages stay the built-in ones."""
    modules: list[str] = []
    yield modules
    for name in modules:
        unregister("task", f"{name}_task")
        sys.modules.pop(name, None)


def _components_module(folder: Path, name: str) -> None:
    """A module registering a task of its own (the factual task's behaviour under another name)."""
    (folder / f"{name}.py").write_text(
        "import attrs\n"
        "from gfnlm.contracts.registry import register\n"
        "from gfnlm.tasks.builtin import FactualTask\n\n\n"
        f"@register('task', '{name}_task')\n"
        "@attrs.frozen\n"
        "class MyTask(FactualTask):\n"
        '    """The factual task under another name."""\n'
    )


def test_import_finds_a_module_of_the_working_directory_as_python_m_does(
    tmp_path: Path, monkeypatch, registered_here
) -> None:
    name = "gfnlm_test_my_components"
    registered_here.append(name)
    _components_module(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    without_cwd = [p for p in sys.path if p not in ("", str(tmp_path))]  # a console script's path
    monkeypatch.setattr(sys, "path", without_cwd)
    import_components([name])
    assert f"{name}_task" in names("task")
    assert str(tmp_path) not in sys.path  # only while importing


def test_cli_imports_a_working_directory_module_and_names_config_imports(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch, registered_here
) -> None:
    """``gfnlm eval --import my_module`` from the module's folder registers its task (the run then
    fails on a later, deliberate check, before any model loads); a config's ``imports:`` entry that
    raises is one line naming ``imports``."""
    name = "gfnlm_test_eval_components"
    registered_here.append(name)
    _components_module(tmp_path, name)
    (tmp_path / "gfnlm_test_broken.py").write_text("import json\njson.loads('{')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(CausalLMPolicy, "from_config", lambda *a, **k: pytest.fail("model loaded"))
    code, err = run_main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--import",
            name,
            "--task",
            f"{name}_task",
            "--prompts",
            "missing.jsonl",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "--prompts='missing.jsonl': no such file" in err, err
    config = tmp_path / "config.yaml"
    config.write_text("imports: [gfnlm_test_broken]\n")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"question": "Who wrote Hamlet?"}) + "\n")
    overrides = tiny_overrides(tiny_model_dir, train, "''", tmp_path / "run")
    code, err = run_main(["train", str(config), *overrides], capsys, monkeypatch)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(
        r"imports='gfnlm_test_broken': raises JSONDecodeError: Expecting property "
        r"name enclosed in double quotes: line 1 column 2 \(char 1\) "
        r"\(decoder\.py, line \d+\)$",
        err,
    ), err


# ------------------------------------------------------------ --json


def test_json_is_written_atomically_and_a_failed_write_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "new" / "eval.json"
    write_text_atomically(str(out), '{"a": 1}', "--json")
    write_text_atomically(str(out), '{"a": 2}', "--json")  # replaces the old file whole
    assert json.loads(out.read_text()) == {"a": 2}
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # no temporary left behind
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as folder, pytest.raises(RunError) as error:
        write_text_atomically(str(folder / "eval.json"), "{}", "--json")
    message = str(error.value)
    assert "\n" not in message, message
    assert message.startswith(f"--json={str(folder / 'eval.json')!r}: cannot write it ("), message
    assert "Read-only file system" in message, message


# ------------------------------------------------------------ answers as numbers


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_numbers_in_an_answers_list_are_answers(suffix: str, tmp_path: Path) -> None:
    rows = [
        {"question": "What is 2+2?", "answers": [4, "four"]},
        {"question": "Half of 5?", "answers": [2.5]},
        {"question": "What is 3+3?", "answers": 6},
    ]
    path = tmp_path / f"qa{suffix}"
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_text(lines if suffix == ".jsonl" else json.dumps(rows))
    records = load_records(str(path), "--prompts", require_answers=True)
    assert [r["answers"] for r in records] == [["4", "four"], ["2.5"], ["6"]]
    prompts = PromptSet.from_records(records, str(path), "--prompts", _Tokenizer(), 64)
    assert prompts.answers[0] == ("4", "four")


class _Tokenizer:
    """Just enough of a tokenizer to format and count prompts: one token per character."""

    pad_token_id = 0

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:
        return messages[-1]["content"]

    def __call__(self, text: str, add_special_tokens: bool) -> dict:
        return {"input_ids": list(range(len(text)))}


def test_a_boolean_answer_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "Is it?", "answers": [True]}) + "\n")
    with pytest.raises(ValueError, match=r"qa\.jsonl:1: answer True must be a non-empty string"):
        load_records(str(path), "--prompts")


# ------------------------------------------------------------ creative eval data sets


def test_creative_eval_reads_parquet_prompts_and_their_checks(
    tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``--metrics creative --prompts FILE.parquet`` reads the prompts and their ``checks`` through
    the data-set reader of accuracy evaluation (Arrow gives each row every rule: the others
    null)."""
    data = tmp_path / "creative.parquet"
    datasets.Dataset.from_list(
        [
            {
                "question": "Write a poem of two lines about the sea.",
                "template": "plain",
                "checks": {"lines": 2},
            },
            {
                "question": "Tell a joke about a cat.",
                "template": "plain",
                "checks": {"mentions": ["cat"]},
            },
        ]
    ).to_parquet(str(data))
    seen = {}

    def fake_evaluate(policy, prompts, checks, samples, max_new_tokens, **kwargs) -> CreativeResult:
        seen.update(questions=prompts.questions, checks=checks, texts=prompts.texts)
        return CreativeResult(*[0.0] * 10, num_prompts=len(prompts), samples_per_prompt=samples)

    monkeypatch.setattr(evaluation, "evaluate_creative", fake_evaluate)
    monkeypatch.setattr("gfnlm.tasks.metrics.SentenceEmbedder", lambda: None)
    monkeypatch.setattr("gfnlm.tasks.metrics.minilm_path", lambda: tmp_path)
    code, err = run_main(
        [
            "eval",
            "--metrics",
            "creative",
            "--model",
            str(tiny_model_dir),
            "--prompts",
            str(data),
            "--samples",
            "2",
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert seen["questions"] == (
        "Write a poem of two lines about the sea.",
        "Tell a joke about a cat.",
    )
    assert seen["checks"] == [{"lines": 2}, {"mentions": ["cat"]}]
    assert "Answer in a few words" not in "".join(seen["texts"])  # the rows' own template, plain


# ------------------------------------------------------------ progress


def test_eval_progress_counts_sampled_sequences(tiny_model_dir: Path, monkeypatch) -> None:
    policy = CausalLMPolicy.from_config(
        ModelConfig(lora=False), tiny_model_dir, torch.device("cpu")
    )
    records = [{"question": f"What is {i} plus {i}?", "answers": [str(2 * i)]} for i in range(5)]
    prompts = PromptSet.from_records(records, "qa", "--prompts", policy.tokenizer, 64)
    stream = io.StringIO()
    bars = []

    def recording_bar(description: str, total: int, progress: bool):
        bar = evaluation.tqdm(total=total, desc=description, unit="seq", file=stream, mininterval=0)
        bars.append(bar)
        return bar

    monkeypatch.setattr(evaluation, "sequence_bar", recording_bar)
    evaluate(policy, prompts, samples=3, max_new_tokens=2, batch_questions=2)
    (bar,) = bars
    assert bar.total == 5 * 3 and bar.n == 5 * 3 and bar.unit == "seq"
    assert "15/15" in stream.getvalue()


# ------------------------------------------------------------ interrupted training


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_an_interrupted_train_says_whether_a_checkpoint_exists(
    with_checkpoint: bool, tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from gfnlm.training import checkpoint, trainer

    run = tmp_path / "run"
    if with_checkpoint:
        checkpoint.save_checkpoint(
            run / "checkpoints", 1, {"w": torch.ones(2)}, {"step": 1}, "x: 1"
        )

    class Interrupted:
        def __init__(self, *args, **kwargs) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "Trainer", Interrupted)
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"question": "Who wrote Hamlet?"}) + "\n")
    code, err = run_main(
        [
            "train",
            str(REPO / "configs/default.yaml"),
            *tiny_overrides(tiny_model_dir, train, "''", run),
        ],
        capsys,
        monkeypatch,
    )
    assert code == 130
    kept = "the last checkpoint is intact" if with_checkpoint else "no checkpoint was written yet"
    assert err == f"gfnlm train: interrupted; {kept}", err
