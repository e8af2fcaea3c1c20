"""The errors gfnlm reports to its users, as one class hierarchy.

* :class:`InputError` — the user's input is wrong (a config value, a file, a name, a flag). The CLI
  prints its message in one line and exits with status 2. Raised before expensive work (loading a
  model) wherever the check needs no model.
* :class:`RunError` — the input was fine but the run cannot go on for a reason outside gfnlm's
  code (a non-finite loss, a server that died or does not answer, a full disk, a broken checkpoint).
  One line, exit status 1.

Anything else is a bug or an unexpected failure (a CUDA out-of-memory, an error inside torch): the
CLI lets it through with its traceback. Every message names the field or file, the value, and what
is allowed or what to do; a value that may be long is quoted by :func:`quoted`, so the message
stays one short line.
"""


def shortened(text: str, limit: int = 80) -> str:
    """``text``, or when longer than ``limit`` characters its first ``limit // 2`` and last
    ``limit // 4`` characters around ``…``."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}…{text[-(limit // 4) :]}"


def quoted(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message, shortened by :func:`shortened` when longer than ``limit``
    characters (a string stays a quoted string): a pasted 5,000-character path or name must not
    turn a one-line error into a screenful."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return repr(shortened(value, limit)) if isinstance(value, str) else shortened(text, limit)


class GfnlmError(Exception):
    """Base of the errors the CLI prints in one line."""


class InputError(GfnlmError, ValueError):
    """Bad user input: a config field, a file, a component name or a command-line flag (exit 2)."""


class ConfigError(InputError):
    """A bad configuration value, reported in one line that names the field."""


class RunError(GfnlmError, RuntimeError):
    """The run cannot go on for a reason outside gfnlm's code; what was saved is intact (exit 1)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds like Ctrl-C: ``finally`` blocks run,
    launched servers stop, and a save in progress never switches ``latest`` to a partial
    checkpoint."""


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` (called by the CLI, never on import)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
