"""Prompt records from a user's data set: JSONL, JSON, Parquet, CSV or a ``save_to_disk`` folder.

:func:`load_records` is gfnlm's one data-set reader (training, evaluation, creative checks and the
benchmarks all read through it). It turns a data-set spec into a list of dicts, one per row,
each with a non-empty ``"question"`` string and, when the row has an answer, ``"answers"`` (a
non-empty list of strings); the row's other columns (``template``, ``checks``, ``source``, ...)
are kept as they are.
Formatting prompts and grading answers belong to the tasks, not to this module.

Specs, tried in this order:

* a bundled set's name (``gfnlm/data/<name>.jsonl``, :func:`bundled_sets`);
* a ``.jsonl`` file: read by :func:`~gfnlm.tasks.prompt_files.load_prompt_file`, with that
  function's checks and messages. With custom ``question_field``/``answer_field`` names it is read
  like a ``.json`` file instead, because ``load_prompt_file`` only knows ``question``/``prompt``;
* a ``.json`` (one JSON array of objects, or JSON lines), ``.parquet`` or ``.csv`` file, read by
  ``datasets.load_dataset(<format>, data_files=<file>, split="train")``;
* a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``, read by
  ``datasets.load_from_disk``. A DatasetDict with a single split gives that split; with several,
  the spec must name one as ``<folder>:<split>`` (e.g. ``gsm8k_saved:test``).

In Python the spec may also be the data itself: a ``datasets.Dataset`` or a list of dicts, read
with the same column rules. A run's saved ``config.yaml`` names such data by
:func:`in_memory_label` (it is not saved with the run), and that label read back as a spec is
refused in one line rather than taken for a path.

Nothing is ever downloaded: anything that is not a bundled name or an existing local path (a Hub
id such as ``openai/gsm8k``, an ``hf://`` URL) is refused, and the ``datasets`` calls run with the
library's offline switch on (it would otherwise ping the Hub to count loads).

Columns: the question comes from ``question_field`` (default ``question``; with the default, a
data set without ``question`` but with ``prompt`` uses ``prompt``, as JSONL files always have).
Answers come from ``answer_field`` (default ``answers``; with the default, a data set without
``answers`` but with ``answer`` uses ``answer``, as GSM8K-style sets name it). An answer may be a
string, a number or a list of those; numbers become strings (``42.0`` → ``"42"``, since Arrow stores
an integer in a float column as a float), and a null, blank or empty answer means the row has none.
In the Arrow-backed formats a null cell in another column is dropped from the row, because Arrow
gives every row every column and a null there means the field was absent.

Every problem is a one-line :class:`~gfnlm.contracts.errors.InputError` naming ``field`` and the
spec (problems with a file's content are :class:`~gfnlm.tasks.prompt_files.PromptFileError`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from gfnlm.contracts.errors import InputError, quoted
from gfnlm.contracts.paths import check_path_length
from gfnlm.tasks.prompt_files import NOT_AN_ANSWER, PromptFileError, answer_text, load_prompt_file

# File suffix → the ``datasets`` packaged builder that reads it (".jsonl" goes to load_prompt_file).
BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv"}
SUPPORTED = (".jsonl", *BUILDERS)
DEFAULT_QUESTION, QUESTION_FALLBACK = "question", "prompt"
DEFAULT_ANSWER, ANSWER_FALLBACK = "answers", "answer"


def load_records(
    spec: str | Any,
    field: str,
    question_field: str = DEFAULT_QUESTION,
    answer_field: str = DEFAULT_ANSWER,
    require_answers: bool = False,
) -> list[dict]:
    """Read the data set ``spec`` into one dict per row (see the module docstring for the rules).

    ``field`` names the config field or flag (``data.train``, ``--prompts``) in error messages;
    with ``require_answers`` a missing answer column or a row without an answer is an error.
    Raises :class:`~gfnlm.contracts.errors.InputError` (one line) before returning anything.
    """
    if not isinstance(spec, str):
        return _from_memory(spec, field, question_field, answer_field, require_answers)
    where = f"{field}={quoted(spec)}"
    if spec.startswith(IN_MEMORY):
        raise InputError(
            f"{where}: the run that saved this config was given this data set in memory, and it "
            "is not saved with the run; pass the same data set again from Python, or a file"
        )
    if not spec.strip():  # Path("") is the working directory, which is never what was meant
        raise InputError(f"{where}: empty; {_what_is_allowed()}")
    check_path_length(spec, field)  # before any stat, which a too long name fails with OSError
    bundled = bundled_path(spec)
    if bundled is not None:
        return _from_jsonl(bundled, where, question_field, answer_field, require_answers)
    path, split = _local_path(spec, where)
    if path.is_dir():
        rows, columns = _read_saved(path, split, where)
        return _records(
            rows, columns, where, question_field, answer_field, require_answers, drop_nulls=True
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _from_jsonl(path, where, question_field, answer_field, require_answers)
    if suffix not in BUILDERS:
        raise InputError(
            f"{where}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"supported: {_listed(SUPPORTED)} files, a save_to_disk folder or a bundled set"
        )
    rows, columns = _read_file(path, BUILDERS[suffix], where)
    return _records(
        rows, columns, where, question_field, answer_field, require_answers, drop_nulls=True
    )


# --- Data given in memory --------------------------------------------------------------------

IN_MEMORY = "<in-memory "


def is_dataset(value: Any) -> bool:
    """Whether ``value`` is a ``datasets.Dataset`` (without importing ``datasets`` when nothing
    has: no such object can exist then)."""
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(value, datasets.Dataset)


def in_memory_label(data: Any) -> str | None:
    """How a run's saved config names data given in memory: ``"<in-memory Dataset, 120 rows,
    fingerprint 1f2e…>"`` for a ``datasets.Dataset``, ``"<in-memory list of 3 records, sha256
    ab12…>"`` for a list of dicts (a hash of their JSON); ``None`` for anything else. Equal data
    gets an equal label, so a resumed run can tell the same data from other data."""
    if is_dataset(data):
        return f"{IN_MEMORY}Dataset, {data.num_rows} rows, fingerprint {data._fingerprint}>"
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        text = json.dumps(data, sort_keys=True, default=repr, ensure_ascii=False)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        records = f"{len(data)} record{'' if len(data) == 1 else 's'}"
        return f"{IN_MEMORY}list of {records}, sha256 {digest}>"
    return None


def data_label(spec: Any) -> str:
    """``spec`` itself for a path or a name; :func:`in_memory_label` for data given in memory."""
    return spec if isinstance(spec, str) else (in_memory_label(spec) or repr(spec))


def _from_memory(
    data: Any, field: str, question_field: str, answer_field: str, require_answers: bool
) -> list[dict]:
    """:func:`load_records` of a ``datasets.Dataset`` or a list of dicts."""
    label = in_memory_label(data)
    where = f"{field}={label or quoted(data)}"
    if label is None:
        raise InputError(
            f"{where}: must be a path (str), a datasets.Dataset or a list of dicts, "
            f"got {type(data).__name__}"
        )
    if is_dataset(data):  # Arrow: a null cell means the row lacks that field, as in a file
        rows, columns = _rows(data, where)
        return _records(
            rows, columns, where, question_field, answer_field, require_answers, drop_nulls=True
        )
    if not data:
        raise PromptFileError(f"{where}: the data set is empty (no rows)")
    columns = list(dict.fromkeys(key for row in data for key in row))
    rows = [dict(row) for row in data]  # records are built from copies: the caller's stay as given
    return _records(
        rows, columns, where, question_field, answer_field, require_answers, drop_nulls=False
    )


# --- Where the data is -----------------------------------------------------------------------


def bundled_sets() -> list[str]:
    """Names of the bundled prompt sets (``gfnlm/data/*.jsonl``)."""
    return sorted(
        p.name.removesuffix(".jsonl")
        for p in resources.files("gfnlm.data").iterdir()
        if p.name.endswith(".jsonl")
    )


def bundled_path(spec: str) -> Path | None:
    """The bundled set named ``spec``, or None; a bundled name wins over a same-named local path."""
    if spec in bundled_sets():
        return Path(str(resources.files("gfnlm.data") / f"{spec}.jsonl"))
    return None


def _what_is_allowed() -> str:
    return (
        f"give a {_listed(SUPPORTED)} file, a folder written by save_to_disk "
        f"(<folder>:<split> for one split of a DatasetDict) or a bundled set "
        f"({', '.join(bundled_sets())})"
    )


def _listed(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _local_path(spec: str, where: str) -> tuple[Path, str | None]:
    """The existing local file or folder that ``spec`` names, and a split from a ``:split`` suffix.

    A path that exists is taken whole (so a file name may contain ``:``); only when it does not is
    a trailing ``:split`` after an existing folder read as a split name.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path, None
    folder, sep, split = spec.rpartition(":")
    if sep and folder and split and Path(folder).expanduser().is_dir():
        return Path(folder).expanduser(), split
    # Hub ids ("openai/gsm8k") and URLs end here: nothing is downloaded.
    raise InputError(
        f"{where}: no such file or folder (data sets are read from local paths only, "
        f"never downloaded); {_what_is_allowed()}"
    )


# --- Reading ---------------------------------------------------------------------------------


def _from_jsonl(
    path: Path, where: str, question_field: str, answer_field: str, require_answers: bool
) -> list[dict]:
    if question_field == DEFAULT_QUESTION and answer_field == DEFAULT_ANSWER:
        # The prompt-file reader: its checks and messages are what users of JSONL files know.
        rows = load_prompt_file(path)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return _records(
            rows, columns, where, question_field, answer_field, require_answers, drop_nulls=False
        )
    # load_prompt_file insists on question/prompt; custom column names need the generic reader.
    rows, columns = _read_file(path, "json", where)
    return _records(
        rows, columns, where, question_field, answer_field, require_answers, drop_nulls=True
    )


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[Any]:
    """``datasets`` with its offline switch on and its log muted, restored afterwards.

    The switch is read at call time (``datasets.config.HF_HUB_OFFLINE``; the environment variables
    only count when the library is first imported, which may already have happened). Offline, the
    library skips the Hub request it makes to count loads. Its error log would print the reason a
    second time, next to our one-line error; its progress bars are off for these small reads.
    """
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    log = logging.getLogger("datasets")
    level = log.level
    bars = datasets.is_progress_bar_enabled()
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    log.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()  # "Generating train split" bars around a one-line error
    try:
        yield datasets
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
        log.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _read_errors() -> tuple[type[BaseException], ...]:
    """What ``datasets`` raises for a file it cannot read (arrow, pandas and json errors are
    ValueErrors; an empty JSON file surfaces as a bare StopIteration)."""
    import pyarrow
    from datasets.exceptions import DatasetsError

    return DatasetsError, pyarrow.ArrowException, OSError, ValueError, StopIteration


def _reason(exc: BaseException) -> str:
    """The library's reason in one line: the first explicit cause with a message, since
    ``DatasetGenerationError`` only says "An error occurred while generating the dataset"."""
    from datasets.exceptions import DatasetGenerationError

    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    for error in [e for e in chain if not isinstance(e, DatasetGenerationError)] + chain:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if lines:
            return f"{type(error).__name__}: {lines[0]}"
    return type(exc).__name__


def _no_rows(exc: BaseException) -> bool:
    # datasets' way of saying that a file held a schema but no rows (a "[]" JSON file, an empty
    # Parquet table); StopIteration is what a JSON file without a single byte gives.
    return isinstance(exc, StopIteration) or "corresponds to no data" in str(exc)


def _read_file(path: Path, builder: str, where: str) -> tuple[list[dict], list[str]]:
    """Rows and column names of one JSON, Parquet or CSV file, via ``datasets.load_dataset``."""
    if path.stat().st_size == 0:
        raise PromptFileError(f"{where}: the file is empty (no rows)")
    # data_files is a glob pattern to datasets: escape it so "[", "*" and "?" in names are literal.
    pattern = glob.escape(str(path.resolve()))
    with _offline_and_quiet() as datasets:
        try:
            dataset = datasets.load_dataset(builder, data_files=pattern, split="train")
        except _read_errors() as exc:
            if _no_rows(exc):
                raise PromptFileError(f"{where}: the data set is empty (no rows)") from None
            raise PromptFileError(f"{where}: cannot read {builder} file ({_reason(exc)})") from None
    return _rows(dataset, where)


def _read_saved(path: Path, split: str | None, where: str) -> tuple[list[dict], list[str]]:
    """Rows and column names of a ``save_to_disk`` folder (a DatasetDict's chosen split)."""
    with _offline_and_quiet() as datasets:
        config = datasets.config
        if (path / config.DATASETDICT_JSON_FILENAME).is_file():
            # Each split is a saved Dataset in its own sub-folder: load only the one chosen.
            path = path / _choose_split(_saved_splits(path, where), split, path, where)
        elif not all(
            (path / name).is_file()
            for name in (config.DATASET_INFO_FILENAME, config.DATASET_STATE_JSON_FILENAME)
        ):
            raise InputError(
                f"{where}: is a folder but not one written by save_to_disk (no "
                f"{config.DATASET_STATE_JSON_FILENAME} or "
                f"{config.DATASETDICT_JSON_FILENAME}); {_what_is_allowed()}"
            )
        elif split is not None:
            raise InputError(
                f"{where}: {str(path)!r} is a single Dataset without splits; "
                f"give the folder without ':{split}'"
            )
        if _saved_without_rows(path / config.DATASET_STATE_JSON_FILENAME):
            raise PromptFileError(f"{where}: the data set is empty (no rows)")
        try:
            dataset = datasets.load_from_disk(str(path.resolve()))
        except _read_errors() as exc:
            raise PromptFileError(f"{where}: cannot read saved data set ({_reason(exc)})") from None
    return _rows(dataset, where)


def _saved_splits(path: Path, where: str) -> list[str]:
    """The split names a DatasetDict folder lists (its ``dataset_dict.json``, as datasets reads
    it)."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PromptFileError(
            f"{where}: cannot read saved data set (dataset_dict.json: {type(exc).__name__}: {exc})"
        ) from None
    return [str(name) for name in splits]


def _saved_without_rows(state_file: Path) -> bool:
    # datasets 5.2 cannot load a saved Dataset with no rows (an IndexError inside its table code),
    # so an empty one is recognised by its state file listing no data files. Anything unexpected
    # there is left to load_from_disk to report.
    try:
        return json.loads(state_file.read_text(encoding="utf-8")).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def _choose_split(splits: list[str], split: str | None, path: Path, where: str) -> str:
    """A DatasetDict's only split, or the one named by ``<folder>:<split>``."""
    if split is None and len(splits) == 1:
        return splits[0]
    if split is None:
        raise InputError(
            f"{where}: the saved DatasetDict has splits {', '.join(splits)}; choose "
            f"one as '{path}:<split>', e.g. '{path}:{splits[0]}'"
        )
    if split not in splits:
        raise InputError(f"{where}: no split {quoted(split)}; splits: {', '.join(splits)}")
    return split


def _rows(dataset: Any, where: str) -> tuple[list[dict], list[str]]:
    if dataset.num_rows == 0:
        raise PromptFileError(f"{where}: the data set is empty (no rows)")
    return dataset.to_list(), list(dataset.column_names)


# --- Rows → records --------------------------------------------------------------------------


def _pick_column(columns: list[str], wanted: str, default: str, fallback: str) -> str | None:
    """``wanted`` when present; the fallback name only when the caller left the default."""
    if wanted in columns:
        return wanted
    if wanted == default and fallback in columns:
        return fallback
    return None


def _records(
    rows: list[dict],
    columns: list[str],
    where: str,
    question_field: str,
    answer_field: str,
    require_answers: bool,
    drop_nulls: bool,
) -> list[dict]:
    listed = ", ".join(columns)
    question_col = _pick_column(columns, question_field, DEFAULT_QUESTION, QUESTION_FALLBACK)
    if question_col is None:
        also = f" (or {QUESTION_FALLBACK!r})" if question_field == DEFAULT_QUESTION else ""
        raise PromptFileError(
            f"{where}: no column {quoted(question_field)}{also}; columns: {listed}"
        )
    answer_col = _pick_column(columns, answer_field, DEFAULT_ANSWER, ANSWER_FALLBACK)
    # A column the user named that is not there is a typo, not "no answers".
    if answer_col is None and (require_answers or answer_field != DEFAULT_ANSWER):
        also = f" (or {ANSWER_FALLBACK!r})" if answer_field == DEFAULT_ANSWER else ""
        need = " (needed for evaluation)" if require_answers else ""
        raise PromptFileError(
            f"{where}: no column {quoted(answer_field)}{also}{need}; columns: {listed}"
        )
    return [
        _record(row, number, where, question_col, answer_col, require_answers, drop_nulls)
        for number, row in enumerate(rows, start=1)
    ]


def _record(
    row: dict,
    number: int,
    where: str,
    question_col: str,
    answer_col: str | None,
    require_answers: bool,
    drop_nulls: bool,
) -> dict:
    question = row.get(question_col)
    if not isinstance(question, str) or not question.strip():
        raise PromptFileError(
            f"{where}: row {number}: {question_col!r} must be a non-empty "
            f"string, got {_describe(question)}"
        )
    record = {key: value for key, value in row.items() if not (drop_nulls and value is None)}
    record["question"] = question
    record.pop(DEFAULT_ANSWER, None)  # set again below only when the row has an answer
    answers = _answers(row.get(answer_col), number, where, answer_col) if answer_col else []
    if answers:
        record[DEFAULT_ANSWER] = answers
    elif require_answers:
        raise PromptFileError(
            f"{where}: row {number} has no answer in {answer_col!r} (needed for evaluation)"
        )
    return record


def _answers(value: Any, number: int, where: str, column: str) -> list[str]:
    """A cell's answers as non-empty strings; ``[]`` for a null, blank or empty cell."""
    items = value if isinstance(value, list | tuple) else [value]
    answers = []
    for item in items:
        text = answer_text(item)
        if text is NOT_AN_ANSWER:
            raise PromptFileError(
                f"{where}: row {number}: {column!r} must be a string, a number "
                f"or a list of those, got {_describe(value)}"
            )
        if text:
            answers.append(text)
    return answers


def _describe(value: Any) -> str:
    """A value's type and a short repr, for messages that must stay on one line."""
    if value is None:
        return "null (no value)"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"
