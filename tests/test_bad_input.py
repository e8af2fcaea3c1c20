"""Every bad input a user can give the CLI: one line, exit status 2, raised before any model
weights load, and nothing under the run directory changed. The table on the docs' Troubleshooting
page is generated from these cases (``GFNLM_WRITE_DOCS=1 pytest tests/test_bad_input.py``
rewrites it; otherwise the test fails when the page and the messages differ)."""

import json
import os
import re
from pathlib import Path

import attrs
import datasets
import pytest
import torch
from conftest import mounted_tmpfs
from test_trainer import REPO, tiny_overrides

from gfnlm import cli
from gfnlm.training.policy import CausalLMPolicy

PAGE = REPO / "docs" / "troubleshooting.md"
MARKER = "bad-input"


@attrs.frozen
class Case:
    """``argv`` with placeholders (CONFIG, RUN, MODEL, DIR and TINY for the tiny run's overrides;
    ``{a*5000}`` for 5,000 a's); ``expected``: a regular expression the one-line message must
    match."""

    argv: str
    expected: str


CONTEXT = (
    r"--max-new-tokens=100000: the longest prompt \(\d+ tokens\) \+ 100000 new tokens = "
    r"\d+ exceeds the model's context of 256 positions"
)

CASES = [
    # configuration values
    Case("train CONFIG TINY train.lr=nan", r"train\.lr=nan: must be a finite number"),
    Case("train CONFIG TINY train.lr=1e30", r"train\.lr=1e\+30: must be in \(0, 1\]"),
    Case("train CONFIG TINY train.lr=0", r"train\.lr=0\.0: must be in \(0, 1\]"),
    Case("train CONFIG TINY train.logz_lr=100", r"train\.logz_lr=100\.0: must be in \(0, 10\]"),
    Case(
        "train CONFIG TINY train.prompts_per_step=10000000",
        r"train\.prompts_per_step=10000000: must be in \[1, 1_000_000\]",
    ),
    Case(
        "train CONFIG TINY sampling.samples_per_prompt=0",
        r"sampling\.samples_per_prompt=0: must be in \[1, ",
    ),
    Case(
        "train CONFIG TINY train.minibatch_size=-1",
        r"train\.minibatch_size=-1: must be in \[0, 1_000_000\]",
    ),
    Case(
        "train CONFIG TINY train.prompts_per_step=1000 sampling.samples_per_prompt=2000",
        r"train\.prompts_per_step=1000 × sampling\.samples_per_prompt=2000 = 2_000_000 responses "
        r"per step: must be <= 1_000_000",
    ),
    Case(
        "train CONFIG TINY replay.name=reward_prioritised replay.options.ratio=1e6",
        r"replay 'reward_prioritised': ratio=1000000\.0: must be in \(0, 10\]",
    ),
    Case(
        "train CONFIG TINY replay.name=reward_prioritised replay.options.capacity=1000000000",
        r"replay 'reward_prioritised': capacity=1000000000: must be in \[1, 1_000_000\]",
    ),
    Case("train CONFIG TINY train.steps=0", r"train\.steps=0: must be >= 1"),
    Case("train CONFIG TINY sampling.top_p=0", r"sampling\.top_p=0\.0: must be in \(0, 1\]"),
    Case("eval --min-p 1.5", r"--min-p=1\.5: must be in \[0, 1\)"),
    Case("train CONFIG TINY sampling.min_p=1", r"sampling\.min_p=1\.0: must be in \[0, 1\)"),
    Case("train CONFIG TINY target.options.alpha=inf", r"alpha=inf: must be a finite number"),
    Case("train CONFIG TINY target.options.alpha=0", r"alpha=0\.0: must be a finite number > 0"),
    Case("train CONFIG TINY train.stepz=3", r"train\.stepz.*not in 'TrainConfig'"),
    Case(
        "train CONFIG TINY objective.name=la_tbb",
        r"unknown objective 'la_tbb'.*did you mean 'la_tb'",
    ),
    Case(
        "train CONFIG TINY objective.name={x*300}",
        r"unknown objective 'x{40}…x{20}'; registered objectives: ",
    ),
    Case("train CONFIG TINY logz.name=scalr", r"unknown logz 'scalr'.*did you mean 'scalar'"),
    Case(
        "train CONFIG TINY sampling.samples_per_prompt=1",
        r"sampling\.samples_per_prompt=1: .*needs >= 2",
    ),
    Case(
        "train CONFIG TINY objective.name=subtb target.options.format_penalty=-0.5",
        r"objective 'subtb' requires 'prefix_rewards'",
    ),
    Case("train CONFIG TINY train.device=cuda", r"train\.device='cuda': no CUDA device"),
    Case(
        "train CONFIG TINY sampling.sampler=sglang sampling.sampler_options.url=localhost:30000",
        r"sampling\.sampler_options\.url='localhost:30000'",
    ),
    Case(
        "train CONFIG TINY sampling.sampler=sglang sampling.sampler_options.url=http://127.0.0.1:99999",
        r"sampling\.sampler_options\.url='http://127\.0\.0\.1:99999'",
    ),
    Case(
        "train CONFIG TINY sampling.sampler=sglang "
        "sampling.sampler_options.launch.python=DIR/no/python",
        r"sampling\.sampler_options\.launch\.python='DIR/no/python'",
    ),
    Case(
        "train CONFIG TINY objective.name=subtb sampling.sampler=vllm "
        "sampling.sampler_options.url=http://127.0.0.1:1 "
        "sampling.sampler_options.scores_base=true sampling.sampler_options.weight_sync=lora",
        r"sampling\.sampler_options\.scores_base=true: objective 'subtb' uses prefix rewards",
    ),
    # tasks and data sets
    Case("train CONFIG TINY task.name=mathh", r"unknown task 'mathh'.*did you mean 'math'"),
    Case(
        "train CONFIG TINY task.options.sytem_prompt=x",
        r"task 'factual' has no option 'sytem_prompt'",
    ),
    Case(
        'train CONFIG TINY task.options.template="{question}{topic}"',
        r"task\.options\.template='\{question\}\{topic\}': placeholder \{topic\} is not a "
        r"field of data\.train='DIR/train\.jsonl' row 1; its fields: question$",
    ),
    Case(
        "train CONFIG TINY task.options.template=Q:{questoin}",
        r"template='Q:\{questoin\}': must be one of short_answer, plain or a format string "
        r"containing \{question\}",
    ),
    Case(
        'train CONFIG TINY task.options.template="{question}}"',
        r"template='\{question\}\}': not a valid format string \(Single '\}' encountered",
    ),
    Case(
        "train CONFIG TINY task.options.template={question}",
        r"template=\{'question': None\}: must be a string \(on the command line, quote a "
        r"template",
    ),
    Case(
        "train CONFIG TINY task.options.template={question",
        r"override 'task\.options\.template=\{question': the value is not valid YAML",
    ),
    Case(
        "train CONFIG TINY data.train={a*5000}",
        r"data\.train='a{40}…a{20}' \(5000 characters\): path too long \(the file system "
        r"allows 255 per name, 4096 in all\)",
    ),
    Case(
        "train CONFIG TINY data.train=data/{b*300}.jsonl",
        r"data\.train='data/b{35}…b{14}\.jsonl' \(311 characters\): path too long",
    ),
    Case(
        "train CONFIG TINY train.out_dir=runs/{c*300}",
        r"train\.out_dir='runs/c{35}…c{20}' \(305 characters\): path too long",
    ),
    Case(
        "train CONFIG TINY data.train=DIR/math.parquet data.question_field=question",
        r"data\.train='DIR/math\.parquet': no column 'question' \(or 'prompt'\); "
        r"columns: problem, answer",
    ),
    Case(
        "train CONFIG TINY data.train=DIR/empty.parquet",
        r"data\.train='DIR/empty\.parquet': .*empty",
    ),
    Case(
        "train CONFIG TINY task.name=math data.eval=DIR/bad-gold.jsonl",
        r"data\.eval='DIR/bad-gold\.jsonl' row 2: answer '\\\\frac\{' cannot be parsed",
    ),
    Case(
        "train CONFIG TINY data.train=DIR/math.parquet data.question_field=problem "
        "data.answer_field=solution",
        r"no column 'solution'",
    ),
    # config files
    Case("train DIR/missing.yaml", r"config='DIR/missing\.yaml': no such file"),
    Case("train DIR", r"config='DIR': is a directory"),
    Case(
        "train DIR/malformed.yaml",
        r"config='DIR/malformed\.yaml': not valid YAML at line \d+, column \d+",
    ),
    Case(
        "train DIR/list.yaml", r"config='DIR/list\.yaml': must be a mapping of sections.*got a list"
    ),
    Case("train CONFIG TINY --import=", r"--import='': must name a module"),
    Case(
        "train CONFIG TINY --import=gfnlm_no_such_module",
        r"--import='gfnlm_no_such_module': cannot import it",
    ),
    Case("train DIR/bad-imports.yaml TINY", r"imports='gfnlm_no_such_module': cannot import it"),
    # model, data and run folders
    Case(
        "train CONFIG TINY model.path=DIR/nonexistent",
        r"model\.path='DIR/nonexistent': not a directory with config\.json",
    ),
    Case(
        "train CONFIG TINY model.path=DIR/no-tokenizer",
        r"model\.path='DIR/no-tokenizer': cannot load a tokenizer",
    ),
    Case(
        "train CONFIG TINY data.train=DIR",
        r"data\.train='DIR': is a folder but not one written by save_to_disk",
    ),
    Case(
        "train CONFIG TINY data.train=DIR/missing.jsonl",
        r"data\.train='DIR/missing\.jsonl': no such file",
    ),
    Case("train CONFIG TINY data.train=DIR/empty.jsonl", r"DIR/empty\.jsonl: prompt file is empty"),
    Case(
        "train CONFIG TINY data.train=DIR/numeric.jsonl",
        r"DIR/numeric\.jsonl:1: 'question' must be a string, got int 42",
    ),
    Case("train CONFIG TINY data.train=DIR/bad.jsonl", r"DIR/bad\.jsonl:2: invalid JSON"),
    Case(
        "train CONFIG TINY train.out_dir=DIR/a-file",
        r"train\.out_dir='DIR/a-file': not a directory",
    ),
    Case(
        "train CONFIG TINY train.out_dir=DIR/a-file/run",
        r"train\.out_dir='DIR/a-file/run': not a directory",
    ),
    Case(
        "train CONFIG TINY train.out_dir=DIR/read-only/run",
        r"train\.out_dir='DIR/read-only/run': .* is not writable",
    ),
    Case(
        "train CONFIG TINY target.options.alpha=2",
        r"target\.options=.*differs from the run being resumed in 'runs/demo'",
    ),
    Case(
        "train CONFIG TINY train.resume=false",
        r"train\.out_dir='runs/demo' already holds a run's checkpoints",
    ),
    # eval and sample
    Case("eval --run RUN --samples 0", r"--samples=0: must be >= 1"),
    Case("eval --run RUN --samples -3", r"--samples=-3: must be >= 1"),
    Case("eval --run RUN --samples 10000000", r"--samples=10000000: must be <= 1_000_000"),
    Case("eval --run RUN --json DIR", r"--json='DIR': is a folder; give a file name inside it"),
    Case(
        "eval --run RUN --json DIR/read-only/eval.json",
        r"--json='DIR/read-only/eval\.json': 'DIR/read-only' is not writable \(read-only file "
        r"system",
    ),
    Case(
        "eval --run RUN --json DIR/a-file/eval.json",
        r"--json='DIR/a-file/eval\.json': 'DIR/a-file' is a file",
    ),
    Case(
        "eval --run RUN --metrics creative --prompts creative_eval "
        "--json DIR/read-only/creative.json",
        r"--json='DIR/read-only/creative\.json': 'DIR/read-only' is not writable",
    ),
    Case(
        "eval --run RUN --prompts {p*5000}",
        r"--prompts='p{40}…p{20}' \(5000 characters\): path too long",
    ),
    Case("eval --run {r*5000}", r"--run='r{40}…r{20}' \(5000 characters\): path too long"),
    Case("eval --run RUN --import=", r"--import='': must name a module"),
    Case(
        "eval --run RUN --task chain_sum --prompts factual_eval",
        r"--prompts='factual_eval' row 1: task 'chain_sum' reads questions 'Q a 3 b 5 \.\.\.' "
        r".*got 'What .*; the row has: question, answers",
    ),
    Case(
        "eval --run RUN --task math --prompts DIR/bad-gold.jsonl",
        r"--prompts='DIR/bad-gold\.jsonl' row 2: answer '\\\\frac\{' cannot be parsed",
    ),
    Case("eval --run RUN --prompts DIR/answers.jsonl --max-new-tokens 100000", CONTEXT),
    Case(
        "eval --run RUN --metrics creative --prompts DIR/creative.parquet --samples 2",
        r"--prompts='DIR/creative\.parquet' prompt 2: checks\.rhymes=True: unknown rule",
    ),
    Case("eval --run RUN --temperature 0", r"--temperature=0\.0: must be a finite number > 0"),
    Case("eval --run RUN --top-p 0", r"--top-p=0\.0: must be in \(0, 1\]"),
    Case("eval --run RUN --top-p 1.5", r"--top-p=1\.5: must be in \(0, 1\]"),
    Case("eval --run RUN --max-new-tokens -1", r"--max-new-tokens=-1: must be >= 0"),
    Case(
        "eval --run RUN --prompts DIR/missing.jsonl",
        r"--prompts='DIR/missing\.jsonl': no such file",
    ),
    Case(
        "eval --run RUN --prompts DIR",
        r"--prompts='DIR': is a folder but not one written by save_to_disk",
    ),
    Case("eval --run RUN --device cuda", r"--device='cuda': no CUDA device"),
    Case("eval --run RUN --task mathh", r"unknown task 'mathh'"),
    Case("eval --run RUN --samples 8 --k 9", r"--k=9: must be <= --samples=8"),
    Case(
        "eval --run RUN --prompts DIR/math.parquet",
        r"--prompts='DIR/math\.parquet': no column 'question'",
    ),
    Case("eval --run DIR/no-run", r"--run='DIR/no-run': no such run directory"),
    Case("eval --run DIR", r"--run='DIR': no checkpoint found"),
    Case(
        "eval --run RUN --metrics creative --samples 1 --prompts creative_eval",
        r"--samples=1: must be >= 2",
    ),
    Case(
        "eval --run RUN --metrics creative --prompts creative_eval --target-alpha 0",
        r"--target-alpha=0\.0: must be a finite number > 0",
    ),
    Case("sample RUN --prompt hello -n 0", r"-n=0: must be >= 1"),
    Case("sample RUN --prompt hello -n -2", r"-n=-2: must be >= 1"),
    Case("sample RUN --prompt=", r"--prompt='': must not be empty"),
    Case(
        "sample RUN --prompt hello --temperature -1",
        r"--temperature=-1\.0: must be a finite number > 0",
    ),
    Case("sample RUN --prompt hello --max-new-tokens 100000", CONTEXT),
    Case(
        "sample RUN --prompt hello --task chain_sum",
        r"--prompt row 1: task 'chain_sum' reads questions",
    ),
]


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished one-step run, and the bad files and folders the cases name."""
    folder = tmp_path_factory.mktemp("bad-input")
    train = folder / "train.jsonl"
    train.write_text(
        "".join(
            json.dumps({"question": q}) + "\n"
            for q in ("What colour is grass?", "Who wrote Hamlet?")
        )
    )
    run = folder / "run"
    overrides = tiny_overrides(tiny_model_dir, train, "''", run, **{"train.steps": 1})
    assert cli.main(["train", str(REPO / "configs/default.yaml"), *overrides, "--quiet"]) == 0
    (folder / "malformed.yaml").write_text("train:\n  steps: [1\n")
    (folder / "list.yaml").write_text("- train\n- steps\n")
    (folder / "empty.jsonl").write_text("\n")
    (folder / "numeric.jsonl").write_text('{"question": 42}\n')
    (folder / "bad.jsonl").write_text('{"question": "ok"}\n{not json\n')
    (folder / "a-file").write_text("not a folder")
    datasets.Dataset.from_dict({"problem": ["What is 1+1?"], "answer": ["2"]}).to_parquet(
        str(folder / "math.parquet")
    )
    datasets.Dataset.from_dict({"question": [], "answers": []}).to_parquet(
        str(folder / "empty.parquet")
    )
    (folder / "bad-gold.jsonl").write_text(
        '{"question": "What is 1+1?", "answers": ["2"]}\n'
        '{"question": "Solve x + 1 = 3.", "answers": ["\\\\frac{"]}\n'
    )
    (folder / "bad-imports.yaml").write_text("imports: [gfnlm_no_such_module]\n")
    answers = {"question": "What is 2+2?", "answers": [4, "four"]}  # a number among the answers
    (folder / "answers.jsonl").write_text(json.dumps(answers) + "\n")
    creative = [
        {"question": "Write a poem about the sea.", "checks": {"lines": 4}},
        {"question": "Tell a joke.", "checks": {"rhymes": True}},
    ]
    datasets.Dataset.from_list(creative).to_parquet(str(folder / "creative.parquet"))
    (folder / "no-tokenizer").mkdir()
    (folder / "no-tokenizer" / "config.json").write_text(
        (tiny_model_dir / "config.json").read_text()
    )
    with mounted_tmpfs(folder / "read-only", "ro,size=1m"):
        yield {
            "DIR": folder,
            "RUN": run,
            "MODEL": tiny_model_dir,
            "TRAIN": train,
            "overrides": overrides,
        }


LONG = re.compile(r"\{(\w)\*(\d+)\}")  # {a*5000}: 5,000 a's


def expand(case: Case, world: dict) -> list[str]:
    argv = []
    for word in LONG.sub(lambda m: m.group(1) * int(m.group(2)), case.argv).split(" "):
        if word == "TINY":
            argv += world["overrides"]
        elif word == "CONFIG":
            argv.append(str(REPO / "configs/default.yaml"))
        else:
            for name in ("RUN", "DIR"):  # RUN first: it lies inside DIR
                word = word.replace(name, str(world[name]))
            argv.append(word)
    return argv


def shown(text: str, world: dict) -> str:
    """A message or command as the docs show it: the test's folders as short placeholders, and a
    run of 100 or more of one character as {a*5000}."""
    text = re.sub(r"(\w)\1{99,}", lambda m: f"{{{m.group(1)}*{len(m.group(0))}}}", text)
    for name, short in (
        ("RUN", "runs/demo"),
        ("MODEL", "models/tiny"),
        ("TRAIN", "DIR/train.jsonl"),
        ("DIR", "DIR"),
    ):
        text = text.replace(str(world[name]), short)
    return text


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run_case(case: Case, world: dict, capsys, monkeypatch) -> tuple[int, str]:
    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the bad input was rejected")

    monkeypatch.setattr(CausalLMPolicy, "from_config", refuse)
    monkeypatch.setattr(cli, "raise_on_sigterm", lambda: None)  # keep pytest's own SIGTERM handling
    capsys.readouterr()
    code = cli.main(expand(case, world))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", CASES, ids=[c.argv.replace("TINY ", "") for c in CASES])
def test_bad_input_is_one_line_exit_2_before_the_model_and_changes_nothing(
    case: Case, world, capsys, monkeypatch
) -> None:
    if "cuda" in case.argv and torch.cuda.is_available():
        pytest.skip("a GPU exists here")
    before = snapshot(world["RUN"])
    code, err = run_case(case, world, capsys, monkeypatch)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert re.search(case.expected, shown(err, world)), shown(err, world)
    assert snapshot(world["RUN"]) == before, "the run directory changed"


def test_troubleshooting_page_lists_every_case_with_its_message(world, capsys, monkeypatch) -> None:
    rows = ["| command | message (exit status 2) |", "|---|---|"]
    for case in CASES:
        if "cuda" in case.argv and torch.cuda.is_available():
            continue
        _, err = run_case(case, world, capsys, monkeypatch)
        command = "gfnlm " + shown(" ".join(expand(case, world)), world).replace(
            shown(" ".join(world["overrides"]), world), "…"
        ).replace(str(REPO) + "/", "")
        message = (
            shown(err, world).replace(str(REPO) + "/", "").replace("|", "\\|").replace("`", "'")
        )
        rows.append(f"| `{command}` | `{message}` |")
    table = "\n".join(rows) + "\n"
    content = PAGE.read_text()
    begin, end = f"<!-- {MARKER}:begin -->\n", f"<!-- {MARKER}:end -->"
    assert begin in content and end in content, f"{PAGE} lacks the {MARKER} markers"
    start, stop = content.index(begin) + len(begin), content.index(end)
    current = content[start:stop]
    if os.environ.get("GFNLM_WRITE_DOCS"):
        PAGE.write_text(content[:start] + table + content[stop:])
    else:
        assert current == table, (
            f"{PAGE} is out of date: GFNLM_WRITE_DOCS=1 pytest tests/test_bad_input.py"
        )
