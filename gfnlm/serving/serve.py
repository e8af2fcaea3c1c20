"""Launch an inference server process (SGLang here, vLLM in :mod:`gfnlm.serving.vllm_serve`) and
guarantee it stops: on normal exit, on errors, on Ctrl-C, on SIGTERM, and (Linux) when this process
dies without cleaning up.

The server runs in its own process group, so stopping it stops its scheduler and detokenizer
children too. On Linux a small supervisor leads that group and gets ``PR_SET_PDEATHSIG``: even a
``kill -9`` of the trainer makes it stop the whole group (after 10 s of grace, by SIGKILL). The
server's output goes to a temporary log, deleted when the server stops cleanly; after a failure
(start-up failed, the server exited on its own, or an error quoted the log) the log is kept and
the error names it, with the last whole lines of output. Each server also gets a private temporary
folder as its ``TMPDIR``, removed when it stops: SGLang and vLLM make their ZMQ ``ipc://`` sockets
there under random names and leave them behind.

:func:`resolve_launch` turns user options into a :class:`LaunchConfig` and checks them before any
model loads: the interpreter exists and has ``sglang``, and ``cpu`` applies the repository's CPU
recipe (``tools/sglang_cpu``: its venv, import stubs, environment and flags).
"""

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import attrs

from gfnlm.contracts.errors import ConfigError
from gfnlm.serving.sglang_client import ServerClient, ServerError, SGLangClient

_RUNNING: "weakref.WeakSet[ManagedServer]" = weakref.WeakSet()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The server's supervisor, the leader of the server's process group. The kernel sends it SIGTERM
# when the process that launched it dies (PR_SET_PDEATHSIG), even by SIGKILL; on SIGTERM or SIGINT
# it asks the whole group to stop, waits up to 10 s, then kills the group (SGLang's own graceful
# shutdown can wait forever for a client that is gone), removes the server's private temporary
# folder (argv[1]; the launcher removes it too, unless it was killed), then kills the group. When
# the server exits by itself, it kills whatever the server left in the group. The handler asks
# waitpid itself whether the server has exited: server.poll() would answer "running" for as long
# as the interrupted server.wait() holds its lock, so every stop would take the full 10 s.
_SUPERVISOR = """
import ctypes, os, shutil, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
server = subprocess.Popen(sys.argv[2:])
def exited():
    try:
        return os.waitpid(server.pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True
def stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not exited() and time.monotonic() < deadline:
        time.sleep(0.1)
    shutil.rmtree(sys.argv[1], ignore_errors=True)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
server.wait()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGKILL)
"""


@attrs.define
class LaunchConfig:
    """How to start a server (``python -m sglang.launch_server``, or vLLM's OpenAI server).

    ``python``: the interpreter that has the server's package (default: this one). ``args``: extra
    server flags (e.g. ``--dtype bfloat16 --mem-fraction-static 0.8``). ``env``: extra environment
    variables. ``startup_timeout_s``: how long to wait for ``/health``.
    """

    python: str = sys.executable
    args: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    startup_timeout_s: float = 300.0


# The repository's CPU recipe (a checkout has it; an installed wheel does not).
CPU_RECIPE = Path(__file__).resolve().parents[2] / "tools" / "sglang_cpu" / "launch.py"
LAUNCH_OPTIONS = (*(f.name for f in attrs.fields(LaunchConfig)), "cpu")
_SGLANG_HINT = (
    "install sglang==0.5.23 there (GPU); on CPU run `make sglang-cpu` in the repository "
    "and use its CPU recipe (gfnlm serve --cpu, or the launch option cpu: true)"
)


def resolve_launch(
    options: Mapping[str, Any],
    field: Callable[[str], str],
    module: str = "sglang",
    recipe: Path | None = None,
    hint: str = _SGLANG_HINT,
    recipe_name: str = "tools/sglang_cpu",
) -> LaunchConfig:
    """A :class:`LaunchConfig` from user options (``LaunchConfig`` fields, plus ``cpu: true`` for
    the CPU recipe), checked without starting anything. ``field(key)`` names an option in messages
    (``sampling.sampler_options.launch.python``, ``--python``). ``module`` is the server's package
    the interpreter must have, ``recipe`` the CPU recipe's ``launch.py`` (default
    :data:`CPU_RECIPE`, SGLang's) and ``recipe_name`` its folder in the repository, ``hint`` how to
    install ``module``."""
    options = dict(options)
    unknown = sorted(set(options) - set(LAUNCH_OPTIONS))
    if unknown:
        raise ConfigError(f"{field(unknown[0])}: unknown; allowed: {', '.join(LAUNCH_OPTIONS)}")
    cpu = options.pop("cpu", False)
    if not isinstance(cpu, bool):
        raise ConfigError(f"{field('cpu')}={cpu!r}: must be true or false")
    if cpu:
        options = _with_cpu_recipe(options, field("cpu"), recipe or CPU_RECIPE, recipe_name)
    if not isinstance(options.get("args", []), list):
        raise ConfigError(f"{field('args')}={options['args']!r}: must be a list of server flags")
    if not isinstance(options.get("env", {}), dict):
        raise ConfigError(
            f"{field('env')}={options['env']!r}: must be a mapping of variable to value"
        )
    port = options.get("port", 0)
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise ConfigError(
            f"{field('port')}={port!r}: must be a port in 1-65535, or 0 for a free one"
        )
    startup = options.get("startup_timeout_s", 1.0)
    if not (isinstance(startup, int | float) and startup > 0):
        raise ConfigError(f"{field('startup_timeout_s')}={startup!r}: must be > 0 (seconds)")
    launch = LaunchConfig(**options)
    launch.args = [str(arg) for arg in launch.args]
    launch.env = {str(k): str(v) for k, v in launch.env.items()}
    check_python(launch.python, field("python"), launch.env, module, hint)
    return launch


def _with_cpu_recipe(
    options: dict[str, Any], field: str, recipe_path: Path, name: str
) -> dict[str, Any]:
    """``options`` on top of the recipe's launch (``tools/sglang_cpu``, ``tools/vllm_cpu``): its
    venv unless ``python`` is given, its flags then the user's (the last of a repeated flag wins),
    its environment then the user's."""
    if not recipe_path.is_file():
        raise ConfigError(
            f"{field}: the CPU recipe {name} is not here ({recipe_path.parent}); "
            "it comes with a checkout of the gfnlm repository, not with an installed package"
        )
    spec = importlib.util.spec_from_file_location(f"gfnlm_{Path(name).name}_recipe", recipe_path)
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    try:
        # A user's ``python`` replaces the recipe's venv (and is checked under its own name later).
        base = recipe.cpu_launch(**({"python": sys.executable} if "python" in options else {}))
    except FileNotFoundError as error:
        raise ConfigError(f"{field}: {error}") from None
    return {
        **base,
        **options,
        "args": [*base["args"], *options.get("args", [])],
        "env": {**base["env"], **options.get("env", {})},
    }


def check_python(
    python: str,
    field: str,
    env: Mapping[str, str] | None = None,
    module: str = "sglang",
    hint: str = _SGLANG_HINT,
) -> None:
    """``python`` exists, is executable and can import ``module`` (found, not imported: a fraction
    of a second), so a wrong interpreter fails before any model loads, not after."""
    path = python if os.sep in python else shutil.which(python)
    if path is None or not Path(path).is_file():
        raise ConfigError(
            f"{field}={python!r}: no such interpreter; give the path of a Python that has {module}"
        )
    if not os.access(path, os.X_OK):
        raise ConfigError(
            f"{field}={python!r}: not executable; give the path of a Python that has {module}"
        )
    find = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        found = subprocess.run(
            [path, "-c", find],
            check=False,
            capture_output=True,
            timeout=10,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return  # a slow file system, not a verdict: the launch itself will tell
    except OSError as error:
        raise ConfigError(f"{field}={python!r}: cannot run it ({error.strerror})") from None
    if found.returncode != 0:
        raise ConfigError(f"{field}={python!r}: cannot import {module}; {hint}")


class ManagedServer:
    """A server process this process owns, under the supervisor above. Use as a context manager,
    or call :meth:`start` and :meth:`stop` (also registered with ``atexit``). A subclass gives the
    :meth:`command` line and the :attr:`client` class that answers ``/health``.

    Its output goes to :attr:`log_path`; its temporary files to :attr:`temp_dir`, its own
    ``TMPDIR``. :meth:`stop` removes both, except a log an error may point at: after a failed
    start, a server that exited on its own, or a call of :meth:`log_tail` or :meth:`failure_note`.
    """

    engine = "SGLang"
    client: type[ServerClient] = SGLangClient

    def __init__(self, model_path: str | Path, launch: LaunchConfig | None = None) -> None:
        self.model_path = str(model_path)
        self.launch = launch or LaunchConfig()
        self.port = self.launch.port or free_port()
        self.url = f"http://{self.launch.host}:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.temp_dir: Path | None = None
        self._keep_log = False

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def temp_environment(self, folder: Path) -> dict[str, str]:
        """Variables that send the server's temporary files into ``folder``: Python's
        ``tempfile`` (hence the engines' ``ipc://`` sockets) reads ``TMPDIR``, ``TEMP`` or ``TMP``.
        A subclass adds its engine's own variables."""
        env = {"TMPDIR": str(folder), "TEMP": str(folder), "TMP": str(folder)}
        # torch.compile's cache lives in the temp dir by default; it must survive the folder,
        # or every start would compile again.
        env["TORCHINDUCTOR_CACHE_DIR"] = (
            os.environ.get("TORCHINDUCTOR_CACHE_DIR") or _inductor_cache()
        )
        return env

    def start(self) -> Self:
        """Start the process and wait until ``/health`` answers; stops it again if that fails,
        keeping its log when the server failed (the error names it)."""
        self._keep_log = False
        command = self.command()
        self._make_temp_files()
        if sys.platform.startswith("linux"):
            command = [self.launch.python, "-c", _SUPERVISOR, str(self.temp_dir), *command]
        env = {**os.environ, **self.temp_environment(self.temp_dir), **self.launch.env}
        with self.log_path.open("a") as log:
            try:
                self.process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            except OSError as error:
                self._remove_temp_files(keep_log=False)
                raise ServerError(
                    f"{self.engine} server: cannot run {self.launch.python!r} ({error.strerror})"
                ) from None
        _RUNNING.add(self)
        try:
            self.client(self.url).wait_healthy(self.launch.startup_timeout_s, alive=self.alive)
        except ServerError as error:
            note = self.failure_note()
            self.stop(keep_log=True)
            raise ServerError(f"{error}; {note}") from None
        except BaseException:  # Ctrl-C while waiting: a clean stop
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        """The server's last lines of output, whole, on one line, then the log's path:
        ``line | line (full log: PATH)`` ("" when there is no log). For error messages: the log
        is kept when the server stops, so the path stays valid."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        self._keep_log = True
        return f"{last_lines(self.log_path) or '(none)'} (full log: {self.log_path})"

    def failure_note(self) -> str:
        """``last server output (full log: PATH): line | line``, the end of an error message
        about this server; like :meth:`log_tail`, it keeps the log when the server stops."""
        if self.log_path is None or not self.log_path.exists():
            return "no server output kept"
        self._keep_log = True
        tail = last_lines(self.log_path) or "(none)"
        return f"last server output (full log: {self.log_path}): {tail}"

    def stop(self, grace_s: float = 10.0, keep_log: bool = False) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL after ``grace_s``) and remove the
        server's temporary folder and log; the log stays if ``keep_log``, if the server had exited
        on its own (a failure), or if an error quoted it. Idempotent."""
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if keep_log or (process is not None and process.poll() is not None):
            self._keep_log = True
        try:
            if process is not None:
                _stop_group(process, grace_s)
        finally:
            self._remove_temp_files(keep_log=self._keep_log)

    def _make_temp_files(self) -> None:
        """A private folder for the server's temporary files, and its log beside it (outside, so
        that a log kept after a failure outlives the folder): ``gfnlm-<engine>-XXXX`` and
        ``gfnlm-<engine>-XXXX.log`` in the temp dir (see :func:`_temp_parent`)."""
        prefix = f"gfnlm-{self.engine.lower()}-"
        parent = _temp_parent(prefix)
        while True:
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            log = folder.with_name(folder.name + ".log")
            try:
                log.touch(exist_ok=False)
            except FileExistsError:  # an earlier server's kept log has this name: pick another
                folder.rmdir()
                continue
            self.temp_dir, self.log_path = folder, log
            return

    def _remove_temp_files(self, keep_log: bool) -> None:
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        if self.log_path is not None and not keep_log:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# A Unix socket's path holds at most 107 bytes, and vLLM names its ipc sockets by UUID (36
# characters). mkdtemp adds 8 random characters to a prefix.
_SOCKET_PATH_MAX = 107
_SOCKET_NAME_MAX = 36


def _temp_parent(prefix: str) -> str:
    """Where a server's private folder goes: the temp dir, or ``/tmp`` where the temp dir's path
    is so long that the sockets' paths in the folder would not fit (the engine would fail at
    start-up where, without the folder, it would have started)."""
    parent = tempfile.gettempdir()
    socket = os.path.join(parent, prefix + "x" * 8, "x" * _SOCKET_NAME_MAX)
    if len(os.fsencode(socket)) > _SOCKET_PATH_MAX and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return parent


def last_lines(path: Path, lines: int = 5, chars: int = 600) -> str:
    """The last ``lines`` non-empty lines of the file ``path``, each whole, joined with `` | ``:
    older lines are dropped until the text fits in ``chars``; a single line longer than that keeps
    its end after "…". A line a progress bar rewrote (``\\r``) counts as what a terminal shows."""
    kept: deque[str] = deque(maxlen=lines)
    for line in _end_of(path).split("\n"):
        shown = next((part.strip() for part in reversed(line.split("\r")) if part.strip()), "")
        if shown:
            kept.append(shown)
    while len(kept) > 1 and len(" | ".join(kept)) > chars:
        kept.popleft()
    text = " | ".join(kept)
    return text if len(text) <= chars else "…" + text[-(chars - 1) :]


def _end_of(path: Path, size: int = 1 << 16) -> str:
    """The file's last ``size`` bytes as text (a server's log can be large), without the partial
    first line unless it is all there is."""
    with path.open("rb") as file:
        start = max(file.seek(0, os.SEEK_END) - size, 0)
        file.seek(start)
        text = file.read().decode(errors="replace")
    if start > 0 and "\n" in text.rstrip("\n"):
        text = text.split("\n", 1)[1]
    return text


def _inductor_cache() -> str:
    """Where torch.compile caches by default (``torch._inductor``'s ``default_cache_dir``):
    ``torchinductor_<user>`` in this process's temp dir."""
    import getpass
    import re

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. in a container)
        user = f"uid_{os.getuid()}"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")


class SGLangServer(ManagedServer):
    """A SGLang server (``python -m sglang.launch_server``) this process owns."""

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            self.launch.python,
            "-m",
            "sglang.launch_server",
            "--model-path",
            self.model_path,
            "--host",
            self.launch.host,
            "--port",
            str(self.port),
            *self.launch.args,
        ]


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    if process.poll() is not None:
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


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()
