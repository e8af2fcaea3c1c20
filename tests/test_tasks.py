"""Prompt files, prompt formatting and the factual answer checker (:mod:`gfnlm.tasks`)."""

import json

import attrs
import pytest
from conftest import temporarily_registered

from gfnlm.contracts import registry
from gfnlm.contracts.errors import InputError
from gfnlm.tasks.base import ChatTask, system_prompt_option, template_option
from gfnlm.tasks.builtin import MATH_SYSTEM_PROMPT
from gfnlm.tasks.factual_answers import (
    first_sentence,
    first_sentence_complete,
    is_correct,
    normalize_answer,
)
from gfnlm.tasks.prompt_files import (
    FACTUAL_EVAL,
    FACTUAL_TRAIN,
    PromptFileError,
    format_prompt,
    load_prompt_file,
)


def write(tmp_path, text, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- load_prompt_file -------------------------------------------------------------------------


def test_load_reads_question_and_prompt_records(tmp_path):
    path = write(
        tmp_path,
        '{"question": "Q1?", "answers": ["a1", "x"]}\n\n'
        '{"prompt": "Q2?", "id": 7}\n'
        '{"question": "Q3?", "answers": "single"}\n',
    )
    records = load_prompt_file(path)
    assert [r["question"] for r in records] == ["Q1?", "Q2?", "Q3?"]
    assert records[0]["answers"] == ["a1", "x"]
    assert records[1]["id"] == 7 and "answers" not in records[1]
    assert records[2]["answers"] == ["single"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", r"prompts\.jsonl: prompt file is empty"),
        ("\n  \n", r"prompts\.jsonl: prompt file is empty"),
        ('{"question": "ok"}\n{"question": "broken"\n', r"prompts\.jsonl:2: invalid JSON"),
        ('{"question": "ok"}\n\n{"text": "no field"}\n', r"prompts\.jsonl:3: missing 'question'"),
        ('{"question": "   "}\n', r"prompts\.jsonl:1: empty 'question'"),
        ('{"prompt": ""}\n', r"prompts\.jsonl:1: empty 'prompt'"),
        ('{"question": 3}\n', r"prompts\.jsonl:1: 'question' must be a string, got int 3"),
        ('["a list"]\n', r"prompts\.jsonl:1: expected a JSON object, got list"),
        ('{"question": "q", "answers": []}\n', r"prompts\.jsonl:1: 'answers' must be"),
        ('{"question": "q", "answers": {"a": 1}}\n', r"prompts\.jsonl:1: 'answers' must be"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(PromptFileError, match=expected) as info:
        load_prompt_file(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match=r"nope\.jsonl: prompt file not found"):
        load_prompt_file(tmp_path / "nope.jsonl")


# --- is_correct ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "answers", "ok"),
    [
        ("Paris", ["Paris"], True),
        ("The capital of France is Paris.", ["Paris"], True),
        ("paris!", ["Paris"], True),
        ("  \n\nThe capital of France is PARIS.\nLyon", ["Paris"], True),
        ("Parisian food.", ["Paris"], False),  # whole words only
        ("It is Lyon. Paris is larger.", ["Paris"], False),  # first sentence only
        ("Lyon\nParis", ["Paris"], False),  # first line only
        ("", ["Paris"], False),
        ("Eight legs.", ["8", "eight"], True),
        ("A spider has 8 legs", ["eight"], True),  # number words become digits on both sides
        ("It has eighteen legs", ["8"], False),
        ("Washington, D.C. is the capital.", ["Washington DC"], True),
        ("Brasília", ["Brasilia"], True),  # accents removed
        ("Newton's laws", ["Newtons"], True),
        ("The Pacific Ocean", ["Pacific"], True),
        ("Pi is 3.14 approximately", ["3.14"], True),  # a decimal point is not a sentence end
        ("It boils at 100.0 degrees.", ["100"], True),
        ("The Lord of the Rings is by J.R.R. Tolkien.", ["Tolkien"], True),  # initials
        ("The Great Gatsby is by F. Scott Fitzgerald.", ["Fitzgerald"], True),
        ("It was written by Dr. Seuss.", ["Seuss"], True),
        ("The symbol for carbon is C. Oxygen is O.", ["C"], True),
        ("Egypt is on the African continent.", ["Africa"], False),  # aliases must list "African"
        ("New Year's Eve", ["New Year's Day", "New Year"], False),
        ("The blue whale", ["whale shark"], False),
    ],
)
def test_is_correct(response, answers, ok):
    assert is_correct(response, answers) is ok


def test_normalize_and_first_sentence():
    assert normalize_answer("  The Eiffel-Tower! ") == "eiffel tower"
    assert normalize_answer("Twenty-one") == "20 1"
    assert first_sentence("\n\nFirst one. Second one.") == "First one"
    assert first_sentence("No end") == "No end"
    assert first_sentence("By J. K. Rowling. Next.") == "By J. K. Rowling"


@pytest.mark.parametrize(
    ("text", "done"),
    [
        ("", False),
        ("\n\nThe capital", False),
        ("The capital is Paris", False),
        ("The capital is Paris.", False),  # "Paris.com" or "3.14" could follow
        ("The capital is Paris. It", True),
        ("The capital is Paris\n", True),
        ("Written by J. ", False),  # an initial, not a sentence end
        ("Really? Yes", True),
    ],
)
def test_first_sentence_complete(text, done):
    assert first_sentence_complete(text) is done
    if done:  # appending text no longer changes what is scored
        assert first_sentence(text + " more. words\nhere") == first_sentence(text)


# --- format_prompt ------------------------------------------------------------------------------


class FakeChatTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return body + "<assistant>"


def test_format_prompt_uses_chat_template():
    text = format_prompt(FakeChatTokenizer(), "  What is the capital of France? ")
    assert text == (
        "<user>Answer in a few words. Question: What is the capital of France?</user><assistant>"
    )


# --- ChatTask: the template and system_prompt options, shared ------------------------------------


@attrs.frozen
class Riddles(ChatTask):
    """Riddles from a named source, answered in one word."""

    template: str = template_option("Riddle from {source}: {question}")
    system_prompt: str = system_prompt_option("Answer with one word.")


def test_a_users_chat_task_registers_and_formats_with_its_own_template():
    record = {"question": "  What has keys but opens no locks? ", "source": "a book"}
    with temporarily_registered("task", "test_riddles", Riddles) as task:
        assert [f.name for f in attrs.fields(Riddles) if f.init] == ["template", "system_prompt"]
        assert task.format_prompt(FakeChatTokenizer(), record) == (
            "<system>Answer with one word.</system>"
            "<user>Riddle from a book: What has keys but opens no locks?</user><assistant>"
        )
        task.check_records([record], "data.train")
        missing = r"placeholder \{source\} is not a field of data\.train row 1"
        with pytest.raises(InputError, match=missing):
            task.check_records([{"question": "Why?"}], "data.train")
        plain = registry.build("task", "test_riddles", template="plain", system_prompt="")
        assert plain.format_prompt(FakeChatTokenizer(), record) == (
            "<user>What has keys but opens no locks?</user><assistant>"
        )
        with pytest.raises(registry.RegistryError, match=r"task 'test_riddles': template='Q'"):
            registry.build("task", "test_riddles", template="Q")


def test_a_chat_task_may_add_options_of_its_own_even_required_ones():
    @attrs.frozen
    class Topical(ChatTask):
        topic: str

    task = Topical("the sea", template="On {topic}: {question}")
    assert task.format_prompt(FakeChatTokenizer(), {"question": "a poem", "topic": task.topic}) == (
        "<user>On the sea: a poem</user><assistant>"
    )


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("factual", {"template": "short_answer", "system_prompt": ""}),
        ("math", {"template": "{question}", "system_prompt": MATH_SYSTEM_PROMPT}),
        ("creative", {"template": "plain", "system_prompt": ""}),
        ("chain_sum", {"template": "short_answer"}),  # its prompts have no system message
    ],
)
def test_the_shipped_tasks_are_chat_tasks_with_their_own_defaults(name, options):
    cls = registry.lookup("task", name)
    assert issubclass(cls, ChatTask)
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    assert {key: field.default for key, field in fields.items()} == options
    task = registry.build("task", name)
    text = task.format_prompt(FakeChatTokenizer(), {"question": " Q a 1 b 2 "})
    system = f"<system>{options['system_prompt']}</system>" if options.get("system_prompt") else ""
    short = options["template"] == "short_answer"
    user = f"{'Answer in a few words. Question: ' if short else ''}Q a 1 b 2"
    assert text == f"{system}<user>{user}</user><assistant>"


# --- the shipped question set -------------------------------------------------------------------


def test_shipped_factual_set_is_consistent():
    train = load_prompt_file(FACTUAL_TRAIN)
    evals = load_prompt_file(FACTUAL_EVAL)
    assert len(train) >= 100 and len(evals) >= 50
    assert all(
        r["answers"] for r in train
    )  # labels travel with the prompts: only the verifier reads them
    assert all(r["answers"] for r in evals)
    train_q = {normalize_answer(r["question"]) for r in train}
    eval_q = {normalize_answer(r["question"]) for r in evals}
    assert not train_q & eval_q
    for r in evals:  # an answer inside the question would be matched by a mere restatement
        question = f" {normalize_answer(r['question'])} "
        assert not any(f" {normalize_answer(a)} " in question for a in r["answers"]), r
    json.dumps(evals)  # plain JSON data
