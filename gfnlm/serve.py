"""Launch a SGLang server process and guarantee it stops: on normal exit, on errors, on Ctrl-C,
on SIGTERM, and (Linux) when this process dies without cleaning up.

The server runs in its own process group, so stopping it stops its scheduler and detokenizer
children too. On Linux a small supervisor leads that group and gets ``PR_SET_PDEATHSIG``: even a
``kill -9`` of the trainer makes it stop the whole group (after 10 s of grace, by SIGKILL).
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any, Self

import attrs

from gfnlm.sglang_client import ServerError, SGLangClient

_RUNNING: "weakref.WeakSet[SGLangServer]" = weakref.WeakSet()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The server's supervisor, the leader of the server's process group. The kernel sends it SIGTERM
# when the process that launched it dies (PR_SET_PDEATHSIG), even by SIGKILL; on SIGTERM or SIGINT
# it asks the whole group to stop, waits up to 10 s, then kills the group (SGLang's own graceful
# shutdown can wait forever for a client that is gone). When the server exits by itself, it kills
# whatever the server left in the group.
_SUPERVISOR = """
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
server = subprocess.Popen(sys.argv[1:])
def stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
server.wait()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGKILL)
"""


@attrs.define
class LaunchConfig:
    """How to start ``python -m sglang.launch_server``.

    ``python``: the interpreter that has SGLang (default: this one). ``args``: extra server flags
    (e.g. ``--dtype bfloat16 --mem-fraction-static 0.8``). ``env``: extra environment variables.
    ``startup_timeout_s``: how long to wait for ``/health``.
    """

    python: str = sys.executable
    args: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    startup_timeout_s: float = 300.0


class SGLangServer:
    """A SGLang server this process owns. Use as a context manager, or call :meth:`start` and
    :meth:`stop` (also registered with ``atexit``)."""

    def __init__(self, model_path: str | Path, launch: LaunchConfig | None = None) -> None:
        self.model_path = str(model_path)
        self.launch = launch or LaunchConfig()
        self.port = self.launch.port or free_port()
        self.url = f"http://{self.launch.host}:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        """The server's command line."""
        return [self.launch.python, "-m", "sglang.launch_server", "--model-path", self.model_path,
                "--host", self.launch.host, "--port", str(self.port), *self.launch.args]

    def start(self) -> Self:
        """Start the process and wait until ``/health`` answers; stops it again if that fails."""
        if not Path(self.launch.python).exists() and os.sep in self.launch.python:
            raise ServerError(f"sampling.sampler_options.launch.python={self.launch.python!r}: no such interpreter")
        command = self.command()
        if sys.platform.startswith("linux"):
            command = [self.launch.python, "-c", _SUPERVISOR, *command]
        with tempfile.NamedTemporaryFile(prefix="gfnlm-sglang-", suffix=".log", delete=False) as log:
            self.log_path = Path(log.name)
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.launch.env}, start_new_session=True)
        _RUNNING.add(self)
        try:
            SGLangClient(self.url).wait_healthy(self.launch.startup_timeout_s, alive=self.alive)
        except BaseException as exc:
            tail = self.log_tail()
            self.stop()
            if isinstance(exc, ServerError):
                raise ServerError(f"{exc}; last server output: {tail}") from None
            raise
        return self

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 300) -> str:
        """The end of the server's output, on one line (for error messages)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:].replace("\n", " | ")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace_s``. Idempotent."""
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may outlive its leader for a moment (scheduler children): make sure it is gone.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def stop_servers_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` (so ``finally`` blocks and ``atexit`` stop our servers);
    called by the CLI, never on import."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
