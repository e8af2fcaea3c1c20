"""Checks of the paths a user gives, made before any expensive work, and atomic output files.

* :func:`check_path_length`: a path longer than the file system allows (per name or in all) is a
  one-line :class:`~gfnlm.contracts.errors.InputError`, not an ``OSError: File name too long``
  traceback from whichever call first touches it;
* :func:`check_output_file`: a file that a command writes at its end (``gfnlm eval --json``) can
  be written, checked before the work that produces it, so a finished evaluation is never lost to
  a folder given as the file or a read-only folder;
* :func:`write_text_atomically`: the file appears whole or not at all; a failure is one line.
"""

import contextlib
import os
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
        raise InputError(f"{field}={quoted(value)} ({len(value)} characters): path too long "
                         f"(the file system allows {name_max} per name, {path_max} in all)")


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
        raise InputError(f"{field}={quoted(value)}: is a folder; give a file name inside it, e.g. "
                         f"{quoted(str(Path(value) / 'eval.json'))}")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise InputError(f"{field}={quoted(value)}: {quoted(str(folder))} is a file, not a folder; "
                         f"choose another {field}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{field}={quoted(value)}: {quoted(str(folder))} is not writable "
                         f"(read-only file system or no permission); choose another {field}")


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
        raise InputError(f"{field}={quoted(value)}: {quoted(str(existing))} is not writable (read-only file "
                         f"system or no permission); choose another {field}")


def write_text_atomically(value: str, text: str, field: str) -> None:
    """Write ``text`` to ``value`` (parent folders created) through a temporary file in the same
    folder renamed over it: a reader sees the old file or the whole new one, never a part. An
    ``OSError`` (a full disk, a folder made read-only meanwhile) is a one-line
    :class:`~gfnlm.contracts.errors.RunError` naming ``field``."""
    path = Path(value).expanduser()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # open(): the umask's permissions
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # a read-only folder refuses even this
            temporary.unlink(missing_ok=True)
        raise RunError(f"{field}={quoted(value)}: cannot write it ({error.strerror or error}); "
                       "the results above were printed but not saved") from None
