"""gfnlm.tasks.records.load_records on real files written by `datasets` itself (no mocks).

Each test gets its own `datasets` cache under tmp_path, and any attempt to open a network
connection is recorded and refused, so "nothing is downloaded" is checked, not assumed.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import datasets
import pytest
from datasets import Dataset, DatasetDict

from gfnlm.contracts.errors import InputError
from gfnlm.tasks.prompt_files import PromptFileError, load_prompt_file
from gfnlm.tasks.records import bundled_sets, load_records


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """A private cache for `datasets`, and a record of (refused) network attempts."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def refused(spec: str, pattern: str, **kwargs) -> InputError:
    """load_records(spec) raises a one-line InputError whose message matches ``pattern``."""
    kwargs.setdefault("field", "data.train")
    with pytest.raises(InputError) as info:
        load_records(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), message
    return info.value


ROWS = [
    {"problem": "Natalia sold 48 clips. How many?", "solution": 72, "id": 1},
    {"problem": "Half of five?", "solution": 2.5, "id": 2},
]


def check_math_rows(records: list[dict]) -> None:
    """ROWS read with question_field='problem', answer_field='solution'."""
    assert [r["question"] for r in records] == [r["problem"] for r in ROWS]
    # 72 shares a float column with 2.5, so Arrow hands back 72.0: written without ".0".
    assert [r["answers"] for r in records] == [["72"], ["2.5"]]
    assert [r["id"] for r in records] == [1, 2]


# --- Formats ---------------------------------------------------------------------------------


def test_parquet_custom_columns_numeric_answers(tmp_path: Path, isolated: list) -> None:
    path = tmp_path / "gsm.parquet"
    Dataset.from_list(ROWS).to_parquet(str(path))
    offline_before = datasets.config.HF_HUB_OFFLINE
    records = load_records(
        str(path), "data.train", question_field="problem", answer_field="solution"
    )
    check_math_rows(records)
    assert isolated == []  # not even the load-count ping datasets makes when online
    assert datasets.config.HF_HUB_OFFLINE == offline_before  # the switch is restored


def test_json_array_list_answers_and_null_cells(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    rows = [
        {"q": "Capital of France?", "targets": ["Paris", "paris, France"], "template": "plain"},
        {"q": "Two plus two?", "targets": ["4", "four"], "template": None},
    ]
    Dataset.from_list(rows).to_json(str(path), lines=False)
    assert path.read_text().lstrip().startswith("[")  # really a JSON array
    records = load_records(str(path), "data.eval", question_field="q", answer_field="targets")
    assert [r["answers"] for r in records] == [["Paris", "paris, France"], ["4", "four"]]
    assert records[0]["template"] == "plain"
    assert "template" not in records[1]  # a null cell is an absent field, as in JSONL


def test_json_lines_with_default_fallbacks(tmp_path: Path) -> None:
    path = tmp_path / "lines.json"
    Dataset.from_list(
        [
            {"prompt": "Say hi", "answer": 7, "source": "a"},
            {"prompt": "Say bye", "answer": None, "source": "b"},
        ]
    ).to_json(str(path))
    assert path.read_text().startswith("{")  # JSON lines
    records = load_records(str(path), "data.train")
    assert records[0] == {
        "prompt": "Say hi",
        "answer": 7,
        "source": "a",
        "question": "Say hi",
        "answers": ["7"],
    }
    assert records[1] == {"prompt": "Say bye", "source": "b", "question": "Say bye"}


def test_csv_numbers_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    Dataset.from_list(
        [
            {"text": "One?", "gold": 3.0},
            {"text": "Two?", "gold": None},
            {"text": "Three?", "gold": 0.25},
        ]
    ).to_csv(str(path), index=False)
    records = load_records(str(path), "--prompts", question_field="text", answer_field="gold")
    assert [r.get("answers") for r in records] == [["3"], None, ["0.25"]]


def test_file_name_with_glob_characters(tmp_path: Path) -> None:
    # datasets treats data_files as a pattern; the name must still be read literally.
    path = tmp_path / "run[1]*.parquet"
    Dataset.from_list(ROWS).to_parquet(str(path))
    Dataset.from_list(ROWS * 2).to_parquet(str(tmp_path / "run1x.parquet"))  # would match "[1]*"
    check_math_rows(load_records(str(path), "data.train", "problem", "solution"))


def test_save_to_disk_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(folder))
    check_math_rows(load_records(str(folder), "data.train", "problem", "solution"))
    refused(f"{folder}:train", r"single Dataset without splits; give the folder without ':train'")


def test_save_to_disk_dataset_dict_splits(tmp_path: Path) -> None:
    folder = tmp_path / "dict"
    other = [{"problem": "Test only?", "solution": [3, 4]}]
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(other)}).save_to_disk(
        str(folder)
    )
    check_math_rows(load_records(f"{folder}:train", "data.train", "problem", "solution"))
    test = load_records(f"{folder}:test", "data.eval", "problem", "solution")
    assert test[0]["answers"] == ["3", "4"]
    refused(
        str(folder),
        r"^data\.train='.*dict': the saved DatasetDict has splits train, test; "
        r"choose one as '.*dict:<split>'",
        question_field="problem",
    )
    refused(f"{folder}:validation", r"no split 'validation'; splits: train, test")

    single = tmp_path / "single"
    DatasetDict({"test": Dataset.from_list(other)}).save_to_disk(str(single))
    assert load_records(str(single), "data.eval", "problem", "solution") == test


def test_jsonl_is_todays_reader(tmp_path: Path) -> None:
    for name in bundled_sets():
        path = Path(__file__).parents[1] / "gfnlm" / "data" / f"{name}.jsonl"
        assert load_records(name, "data.train") == load_prompt_file(path)
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "Hi?", "answers": "yes", "template": "plain"},
        {"question": "Why?", "answers": ["because"], "extra": None},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert load_records(str(path), "data.train") == load_prompt_file(path)


def test_jsonl_errors_are_todays_messages(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok"}\n{"question": "x", "answers": []}\n')
    with pytest.raises(PromptFileError) as today:
        load_prompt_file(path)
    error = refused(str(path), "'answers' must be a non-empty list of strings")
    assert str(error) == str(today.value)


def test_jsonl_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"problem": "3 * 4?", "solution": 12}) + "\n")
    assert load_records(str(path), "data.train", "problem", "solution") == [
        {"problem": "3 * 4?", "solution": 12, "question": "3 * 4?", "answers": ["12"]}
    ]


# --- Errors ----------------------------------------------------------------------------------


def test_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    Dataset.from_list([{"question": "q?", "answer": "a", "id": 1}]).to_parquet(str(path))
    refused(
        str(path),
        r"^data\.train='.*x\.parquet': no column 'problem'; columns: question, answer, id$",
        question_field="problem",
    )
    refused(
        str(path), r"no column 'solution'; columns: question, answer, id$", answer_field="solution"
    )
    other = tmp_path / "y.parquet"
    Dataset.from_list([{"text": "q?", "id": 1}]).to_parquet(str(other))
    refused(str(other), r"no column 'question' \(or 'prompt'\); columns: text, id$")
    refused(
        str(other),
        r"no column 'answers' \(or 'answer'\) \(needed for evaluation\); "
        r"columns: text, id$",
        question_field="text",
        require_answers=True,
    )
    assert load_records(str(other), "data.train", question_field="text") == [
        {"text": "q?", "id": 1, "question": "q?"}
    ]


def test_empty_data_sets(tmp_path: Path) -> None:
    Dataset.from_list(ROWS).select([]).to_parquet(str(tmp_path / "zero.parquet"))
    (tmp_path / "array.json").write_text("[]")
    (tmp_path / "nothing.csv").write_text("")
    (tmp_path / "header.csv").write_text("question,answers\n")
    Dataset.from_list(ROWS).select([]).save_to_disk(str(tmp_path / "zero_saved"))
    DatasetDict(
        {"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS).select([])}
    ).save_to_disk(str(tmp_path / "dict"))
    check_math_rows(load_records(f"{tmp_path / 'dict'}:train", "data.train", "problem", "solution"))
    for name in [
        "zero.parquet",
        "array.json",
        "nothing.csv",
        "header.csv",
        "zero_saved",
        "dict:test",
    ]:
        refused(
            str(tmp_path / name),
            rf"^data\.train='.*{re.escape(name)}': the (data set|file) is empty",
        )


def test_bad_questions(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"question": "fine"}, {"question": "   "}]))
    refused(str(path), r"row 2: 'question' must be a non-empty string, got str '   '")
    path.write_text("\n".join(json.dumps({"q": v}) for v in ["fine", "also fine", 5]))
    refused(str(path), r"row 3: 'q' must be a non-empty string, got int 5$", question_field="q")
    path.write_text(json.dumps([{"q": "fine"}, {"q": None}]))
    refused(str(path), r"row 2: 'q' must be a non-empty string, got null", question_field="q")


def test_rows_without_answers_when_required(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    Dataset.from_list(
        [
            {"question": "a?", "answer": 1},
            {"question": "b?", "answer": None},
        ]
    ).to_parquet(str(path))
    refused(
        str(path),
        r"row 2 has no answer in 'answer' \(needed for evaluation\)$",
        require_answers=True,
    )
    assert "answers" not in load_records(str(path), "data.train")[1]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"question": "a?", "answers": ["x"]}\n{"question": "b?"}\n')
    refused(str(jsonl), r"row 2 has no answer in 'answers'", require_answers=True)


def test_bad_answer_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"question": "q?", "answers": {"text": "x"}}]))
    refused(str(path), r"row 1: 'answers' must be a string, a number or a list of those, got dict")
    path.write_text(json.dumps([{"question": "q?", "answers": True}]))
    refused(str(path), r"row 1: 'answers' must be .*, got bool True$")


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_text("not a parquet file at all")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.csv").write_text('a,b\n1,2\n"never closed\n')
    for name, builder in [("bad.parquet", "parquet"), ("bad.json", "json"), ("bad.csv", "csv")]:
        refused(
            str(tmp_path / name),
            rf"^data\.train='.*{name}': cannot read {builder} file "
            r"\(\w+: .+\)$",
        )
    saved = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(saved))
    for arrow in saved.glob("*.arrow"):
        arrow.write_bytes(b"junk")
    refused(str(saved), r"cannot read saved data set \(ArrowInvalid: .+\)$")


def test_unsupported_paths(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("question\n")
    refused(
        str(tmp_path / "notes.txt"),
        r"unsupported file type '\.txt'; supported: \.jsonl, \.json, \.parquet or \.csv files, "
        r"a save_to_disk folder or a bundled set$",
    )
    (tmp_path / "README").write_text("hi")
    refused(str(tmp_path / "README"), r"unsupported file type '\(no suffix\)'")
    folder = tmp_path / "folder"
    folder.mkdir()
    Dataset.from_list(ROWS).to_parquet(str(folder / "part.parquet"))
    refused(str(folder), r"is a folder but not one written by save_to_disk .*; give a \.jsonl")
    refused("", r"^data\.train='': empty; give a")


def test_hub_ids_are_refused_offline(isolated: list) -> None:
    for spec in ["openai/gsm8k", "hf://datasets/openai/gsm8k", "openai/gsm8k:main"]:
        refused(
            spec,
            rf"^data\.train='{re.escape(spec)}': no such file or folder \(data sets are "
            r"read from local paths only, never downloaded\); give a \.jsonl",
        )
    assert isolated == []
