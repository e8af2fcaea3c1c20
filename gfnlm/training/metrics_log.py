"""``metrics.jsonl``: every step's metrics and every evaluation of a run, one JSON object a line.

Two kinds of record, in the order they happened::

    {"step": 3, "loss": 0.41, "length/mean": 11.5, ...}        # training step 3 (keys as train/…)
    {"step": 4, "eval": {"accuracy_t1": 0.5, ...}}             # evaluation at step 4 (eval/…)

A step record holds the step's scalar metrics under the names TensorBoard shows after ``train/``;
an evaluation record holds the results under ``"eval"`` (step 0 = before training). Values that are
not finite (NaN, ±inf) are written as ``null`` (the file stays standard JSON) and read back as NaN.

The file is only appended to, one flushed line per record. When a run resumes from the checkpoint
of step S, the records with a step after S (logged by a run that died after its last checkpoint)
are dropped, as TensorBoard's ``purge_step`` drops its events, by rewriting the file atomically
(it holds the old or the new contents whenever the rewrite is killed). A last line cut short by a
kill in mid-write is dropped the same way, and a damaged line elsewhere is dropped with a warning.
"""

import json
import math
import sys
from pathlib import Path
from typing import IO, Any

from gfnlm.contracts.errors import RunError
from gfnlm.contracts.paths import write_text_atomic

FILE_NAME = "metrics.jsonl"


def encode(record: dict[str, Any]) -> str:
    """One record as a line of standard JSON (non-finite floats as ``null``), newline included."""
    return json.dumps(_finite_or_none(record), allow_nan=False) + "\n"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _none_to_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _none_to_nan(item) for key, item in value.items()}
    return math.nan if value is None else value


def read_records(path: Path, up_to_step: int) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``path`` with ``step <= up_to_step``, in file order, and whether the file
    holds anything else (later steps, a torn or damaged line) that a rewrite should drop. A file
    that does not exist holds no records."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], False
    lines = text.split("\n")
    # A file that does not end in a newline was cut in mid-write: its last line is incomplete.
    torn = lines.pop() != ""
    records, dropped = [], torn
    for number, line in enumerate(lines, start=1):
        record = _parse(line)
        if record is None:
            print(f"gfnlm: {path}: line {number} is not a record; dropped", file=sys.stderr)
            dropped = True
        elif record["step"] > up_to_step:
            dropped = True
        else:
            records.append(record)
    return records, dropped


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return _none_to_nan(record)


class MetricsLog:
    """Appends records to ``out_dir/metrics.jsonl`` (see the module's docstring for the format)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / FILE_NAME
        self._file: IO[str] | None = None

    def restore(self, up_to_step: int, writable: bool) -> list[dict[str, Any]]:
        """The records up to ``up_to_step`` (those a run resumed from that step keeps); with
        ``writable`` (the process that writes the log) the file is first rewritten without the
        others, and opened for appending."""
        try:
            records, dropped = read_records(self.path, up_to_step)
            if writable:
                if dropped:
                    write_text_atomic(self.path, "".join(encode(r) for r in records))
                self._file = self.path.open("a")
        except OSError as error:
            raise self._error(error) from None
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and flush it (a no-op where :meth:`restore` did not open the file)."""
        if self._file is None:
            return
        try:
            self._file.write(encode(record))
            self._file.flush()
        except OSError as error:
            raise self._error(error) from None

    def close(self) -> None:
        """Close the file (appending stops)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _error(self, error: OSError) -> RunError:
        reason = error.strerror or error
        return RunError(f"{self.path}: cannot read or write the metrics log ({reason})")
