"""Checks of the paths a user gives, made before any expensive work, and atomic output files.

* :func:`check_path_length`: a path longer than the file system allows (per name or in all) is a
  one-line :class:`~gfnlm.contracts.errors.InputError`, not an ``OSError: File name too long``
  traceback from whichever call first touches it;
* :func:`check_output_file`: a file that a command writes at its end (``gfnlm eval --json``) can
  be written, checked before the work that produces it, so a finished evaluation is never lost to
  a folder given as the file or a read-only folder;
* :func:`write_text_atomic` (and :func:`write_text_atomically` for a user's path, a failure in
  one line): the file appears whole, flushed to disk, or not at all.
"""

import os
import tempfile
from pathlib import Path

from gfnlm.contracts.errors import InputError, RunError, quoted

# What POSIX file systems allow when ``os.pathconf`` cannot say: bytes per name, bytes in all.
NAME_MAX, PATH_MAX = 255, 4096


def path_limits(value: str) -> tuple[int, int]:
    """The longest name and the longest path (in bytes) of the file system holding ``value``'s
    anchor (its root for an absolute path, else the working directory)."""
    anchor = Path(value).anchor or "."
    try:
        return os.pathconf(anchor, "PC_NAME_MAX"), os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such setting
        return NAME_MAX, PATH_MAX


def check_path_length(value: str, field: str) -> None:
    """Refuse, in one line naming ``field``, a path with a name longer than the file system's
    ``PC_NAME_MAX`` or longer in all than its ``PC_PATH_MAX`` (both in bytes). The value is quoted
    shortened, so the message stays one short line."""
    expanded = os.path.expanduser(value)
    name_max, path_max = path_limits(expanded)
    longest = max((len(os.fsencode(part)) for part in Path(expanded).parts), default=0)
    if longest > name_max or len(os.fsencode(expanded)) > path_max:
        raise InputError(
            f"{field}={quoted(value)} ({len(value)} characters): path too long "
            f"(the file system allows {name_max} per name, {path_max} in all)"
        )


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or its closest ancestor that exists (what creating it would start from)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_file(value: str, field: str) -> None:
    """``value`` can be written as a file: not a folder, and its nearest existing ancestor is a
    writable folder (``os.access``: a read-only file system counts). Nothing is created, so a
    command whose other input is bad leaves no trace."""
    check_path_length(value, field)
    path = Path(value).expanduser()
    if path.is_dir():
        raise InputError(
            f"{field}={quoted(value)}: is a folder; give a file name inside it, e.g. "
            f"{quoted(str(Path(value) / 'eval.json'))}"
        )
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise InputError(
            f"{field}={quoted(value)}: {quoted(str(folder))} is a file, not a folder; "
            f"choose another {field}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"{field}={quoted(value)}: {quoted(str(folder))} is not writable "
            f"(read-only file system or no permission); choose another {field}"
        )


def check_writable_folder(value: str, field: str) -> None:
    """``value`` is, or can be created as, a writable folder (a run directory): checked without
    creating anything, so a run whose other input is bad leaves no trace."""
    check_path_length(value, field)
    path = Path(value).expanduser()
    existing = nearest_existing(path)
    if existing.exists() and not existing.is_dir():
        where = "" if existing == path else f" ({quoted(str(existing))} is a file)"
        raise InputError(f"{field}={quoted(value)}: not a directory{where}; choose another {field}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{field}={quoted(value)}: {quoted(str(existing))} is not writable (read-only file "
            f"system or no permission); choose another {field}"
        )


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename (no temp file is left on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(value: str, text: str, field: str) -> None:
    """:func:`write_text_atomic` to the path a user gave as ``field``; an ``OSError`` (a full disk,
    a folder made read-only meanwhile) is a one-line :class:`~gfnlm.contracts.errors.RunError`."""
    try:
        write_text_atomic(Path(value).expanduser(), text)
    except OSError as error:
        raise RunError(
            f"{field}={quoted(value)}: cannot write it ({error.strerror or error}); "
            "the results above were printed but not saved"
        ) from None
