"""The ``sglang`` sampler when things go wrong: a silent server, a server that drops requests, bad
options, failed set-ups. What must hold: every call ends within its deadline (``timeout_s``, the
whole call) with one line naming the URL, the operation and the deadline; a request that may have
reached the server is never sent again; waiting is visible; checks that need no model fail before
the model loads; and nothing is left in the temp dir.

The servers here are small stand-ins on 127.0.0.1 (a listener that never answers, a minimal HTTP
server), each in a thread that stops by itself, or short Python scripts launched as servers; one
slow test starts a real SGLang CPU server, ``tests/test_sglang.py`` has the others.
"""

import getpass
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_sglang import cpu_launch
from test_sglang import small_smollm2 as small_smollm2_fixture
from test_trainer import REPO, tiny_overrides

from gfnlm import cli
from gfnlm.contracts import registry
from gfnlm.contracts.errors import InputError
from gfnlm.serving import serve, sglang_client
from gfnlm.serving.serve import free_port
from gfnlm.serving.sglang_client import ServerError, SGLangClient
from gfnlm.training.config import ModelConfig
from gfnlm.training.policy import CausalLMPolicy

OPTION = "sampling.sampler_options"
small_smollm2 = small_smollm2_fixture  # the module fixture of test_sglang, for the real server


class SilentServer:
    """Accepts TCP connections and never answers; records the first line each connection sends.
    Its thread ends by itself after ``lifetime_s`` (or at :meth:`close`), closing everything."""

    def __init__(self, lifetime_s: float = 150.0) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.request_lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(lifetime_s,), daemon=True)
        self._thread.start()

    def _serve(self, lifetime_s: float) -> None:
        held = []  # open and unanswered, like a hung server's
        end = time.monotonic() + lifetime_s
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5.0)
            try:
                self.request_lines.append(
                    conn.recv(65536).split(b"\r\n", 1)[0].decode(errors="replace")
                )
            except TimeoutError:
                self.request_lines.append("")
            held.append(conn)
        for conn in held:
            conn.close()
        self.listener.close()

    def generate_requests(self) -> list[str]:
        return [line for line in self.request_lines if line.startswith("POST /generate")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ScriptedServer(http.server.ThreadingHTTPServer):
    """A minimal HTTP server answering POST /generate from a script of responses: a status code
    (with an empty JSON list), or ``"drop"`` (read the request, close the connection unanswered)."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = list(script)
        self.received = 0
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # http.server calls do_<METHOD>
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received += 1
        step = self.server.script.pop(0) if self.server.script else 200
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps([{"ok": True}] if step == 200 else {"error": "busy"}).encode()
        self.send_response(int(step))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def tiny_policy(model_dir: Path) -> CausalLMPolicy:
    return CausalLMPolicy.from_config(
        ModelConfig(path=str(model_dir)), model_dir, torch.device("cpu")
    )


# ------------------------------------------------------------------------------------------------
# Deadlines, no resubmission, visible waiting


def test_silent_server_fails_a_cli_run_within_the_deadline(
    tiny_model_dir: Path, prompt_files, tmp_path: Path
) -> None:
    """``gfnlm train`` against a server that accepts and never answers: a progress line while it
    waits, then exit 1 at the 12 s deadline with one line naming the URL and the deadline; the
    server saw ONE /generate (no resubmission), and no weight folder is left in the temp dir."""
    silent = SilentServer()
    train, evaluation = prompt_files
    overrides = tiny_overrides(
        tiny_model_dir,
        train,
        evaluation,
        tmp_path / "run",
        **{
            "sampling.sampler": "sglang",
            f"{OPTION}.url": silent.url,
            f"{OPTION}.timeout_s": 12,
            "train.steps": 1,
            "data.eval": "''",
        },
    )
    command = [
        sys.executable,
        "-m",
        "gfnlm.cli",
        "train",
        str(REPO / "configs/default.yaml"),
        *overrides,
        "--quiet",
    ]
    temp = tmp_path / "tmp"
    temp.mkdir()
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"},
    )
    lines = [
        (time.monotonic(), line.rstrip("\n")) for line in process.stderr
    ]  # stamped as they arrive
    code = process.wait(timeout=30)
    ended = time.monotonic()
    silent.close()
    stderr = "\n".join(line for _, line in lines)
    waiting = [(at, line) for at, line in lines if line.startswith("waiting for SGLang server")]
    assert code == 1, stderr[-3000:]
    assert (
        waiting
        and waiting[0][1]
        == f"waiting for SGLang server {silent.url}/generate (tokenizer check): 10 s of 12 s"
    )
    assert ended - waiting[0][0] < 12  # the call failed about 2 s after its 10 s progress line
    assert ended - started < 12 + 90  # the deadline plus start-up and a tiny model's loading
    last = lines[-1][1]
    assert last.startswith(
        f"gfnlm train: error: SGLang server {silent.url}/generate did not answer "
        "tokenizer check within its deadline of 12 s"
    ), stderr[-3000:]
    assert len(silent.generate_requests()) == 1, silent.request_lines
    assert not list(temp.glob("gfnlm-weights-*")) and not list(temp.glob("gfnlm-sglang-*"))


def test_a_timed_out_request_is_never_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, with a short progress interval: the deadline covers the whole call however many
    retries are allowed, progress lines name URL, operation and deadline, one request reached the
    server."""
    monkeypatch.setattr(sglang_client, "PROGRESS_EVERY_S", 0.5)
    silent = SilentServer(lifetime_s=30)
    lines: list[str] = []
    client = SGLangClient(silent.url, timeout_s=1.6, retries=5, report=lines.append)
    started = time.monotonic()
    with pytest.raises(
        ServerError,
        match=rf"^SGLang server {silent.url}/generate did not answer probe within "
        r"its deadline of 1.6 s .*not sent again$",
    ):
        client.generate({"text": "x"}, "probe")
    assert 1.5 < time.monotonic() - started < 3
    silent.close()
    assert len(silent.generate_requests()) == 1
    assert lines[:2] == [
        f"waiting for SGLang server {silent.url}/generate (probe): {s:g} s of 1.6 s"
        for s in (0.5, 1)
    ]


def test_only_requests_that_never_arrived_or_got_503_are_retried() -> None:
    # 503 then 200: retried, and the answer comes back.
    busy = ScriptedServer([503, 200])
    assert SGLangClient(busy.url, timeout_s=10, retries=2, report=print).generate({}) == [
        {"ok": True}
    ]
    assert busy.received == 2
    busy.shutdown()
    # The server read the request and dropped the connection: it may be running it, so no resend.
    dropping = ScriptedServer(["drop", 200])
    with pytest.raises(
        ServerError, match=rf"^SGLang server {dropping.url}/generate unreachable during generate"
    ):
        SGLangClient(dropping.url, timeout_s=10, retries=2, report=print).generate({})
    assert dropping.received == 1
    dropping.shutdown()
    # Nobody listening: retried (it never arrived), then one line, fast.
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(
        ServerError,
        match=rf"^SGLang server {dead}/generate unreachable during generate: Connection refused",
    ):
        SGLangClient(dead, timeout_s=10, retries=2, report=print).generate({})
    assert time.monotonic() - started < 3


def test_waiting_for_a_launch_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sglang_client, "PROGRESS_EVERY_S", 0.5)
    lines: list[str] = []
    silent = SilentServer(lifetime_s=30)
    with pytest.raises(
        ServerError,
        match=rf"^SGLang server {silent.url}/health did not answer within the "
        r"start-up deadline of 1.2 s",
    ):
        SGLangClient(silent.url, report=lines.append).wait_healthy(1.2)
    silent.close()
    assert (
        lines
        and lines[0] == f"waiting for SGLang server {silent.url}/health (start-up): 0.5 s of 1.2 s"
    )


# ------------------------------------------------------------------------------------------------
# Checks that need no model: at construction (the registry builds the sampler before the model
# loads)


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http://:80",
        "http://host:99999",
        "localhost:30000",
        "http://local host:30000",
        " http://127.0.0.1:30000",
        "ftp://127.0.0.1:30000",
    ],
)
def test_a_malformed_url_fails_at_construction(url: str) -> None:
    with pytest.raises(
        InputError,
        match=rf"{OPTION}.url={re.escape(repr(url))}: not a server URL; allowed: "
        r"http://HOST\[:PORT\] or https://HOST\[:PORT\] with PORT in 1-65535",
    ):
        registry.build("sampler", "sglang", {"url": url})
    with pytest.raises(InputError, match=rf"{OPTION}.base_url="):
        registry.build("sampler", "sglang", {"url": "http://127.0.0.1:30000", "base_url": url})


def test_a_wrong_launch_interpreter_fails_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    field = f"{OPTION}.launch.python"
    with pytest.raises(InputError, match=rf"{field}='{tmp_path}/nope': no such interpreter"):
        registry.build("sampler", "sglang", {"launch": {"python": str(tmp_path / "nope")}})
    plain = tmp_path / "python"
    plain.write_text("")
    with pytest.raises(InputError, match=rf"{field}='{plain}': not executable"):
        registry.build("sampler", "sglang", {"launch": {"python": str(plain)}})
    # This venv's interpreter has no sglang (it lives in .bench-venvs/sglang).
    started = time.monotonic()
    with pytest.raises(
        InputError, match=rf"{field}='{sys.executable}': cannot import sglang; .*make sglang-cpu"
    ):
        registry.build("sampler", "sglang", {"launch": {"python": sys.executable}})
    assert time.monotonic() - started < 5
    # The CPU recipe comes with a checkout of the repository: without it, one line naming the
    # option.
    monkeypatch.setattr(serve, "CPU_RECIPE", tmp_path / "tools" / "sglang_cpu" / "launch.py")
    with pytest.raises(
        InputError, match=rf"{OPTION}.launch.cpu: the CPU recipe tools/sglang_cpu is not here"
    ):
        registry.build("sampler", "sglang", {"launch": {"cpu": True}})


def test_serve_without_the_cpu_recipe_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(serve, "CPU_RECIPE", tmp_path / "launch.py")
    assert cli.main(["serve", "--cpu"]) == 2
    assert re.fullmatch(
        r"gfnlm serve: error: --cpu: the CPU recipe tools/sglang_cpu is not here .*\n",
        capsys.readouterr().err,
    )
    assert cli.main(["serve", "--python", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(
        f"gfnlm serve: error: --python='{tmp_path}/nope': no such interpreter"
    )


# ------------------------------------------------------------------------------------------------
# Nothing left behind by a failed set-up


def test_a_failed_setup_leaves_only_the_servers_log_in_the_temp_dir(
    tiny_model_dir: Path, tmp_path: Path, temp_dir: Path
) -> None:
    policy = tiny_policy(tiny_model_dir)
    # A server that is not there: the weight folder made for it goes with the failure.
    dead = registry.build(
        "sampler", "sglang", {"url": f"http://127.0.0.1:{free_port()}", "retries": 0}
    )
    with pytest.raises(ServerError, match="unreachable during tokenizer check"):
        dead.setup(policy)
    # A launch that dies at start: the error quotes its output and names its log, which is kept;
    # the server's private temporary folder goes.
    fake = tmp_path / "fake-python"
    fake.write_text(
        '#!/bin/sh\ncase "$2" in *find_spec*) exit 0;; esac\n'
        'echo "fake sglang: no GPU here"\nexit 3\n'
    )
    fake.chmod(0o755)
    launched = registry.build("sampler", "sglang", {"launch": {"python": str(fake)}})
    expected = r"exited before /health answered; last server output \(full log: \S+\): fake sglang"
    with pytest.raises(ServerError, match=expected + r": no GPU here$") as error:
        launched.setup(policy)
    assert launched._server is None
    log = Path(re.search(r"full log: (\S+)\)", str(error.value)).group(1))
    assert log.parent == temp_dir and log.read_text() == "fake sglang: no GPU here\n"
    assert [p.name for p in temp_dir.iterdir()] == [log.name]


# ------------------------------------------------------------------------------------------------
# A launched server's log and temporary files: kept after a failure, gone after a clean stop

# A stand-in server: answers GET /health, exits when asked (GET /exit); at start it prints its
# TMPDIR and makes a file there, as SGLang and vLLM make their ipc:// sockets.
HEALTH_SERVER = """
import http.server, os, sys, tempfile, threading
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/health", "/exit") else 404)
        self.end_headers()
        if self.path == "/exit":
            threading.Thread(target=self.server.shutdown).start()
    def log_message(self, *args):
        pass
tempfile.mkstemp(prefix="ipc-")
print("TMPDIR=" + os.environ["TMPDIR"], flush=True)
print("TORCHINDUCTOR_CACHE_DIR=" + os.environ["TORCHINDUCTOR_CACHE_DIR"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
print("stand-in server: exiting on request", flush=True)
"""

# Long lines, then an exit before /health ever answers: a tail cut at a fixed length would cut them.
FAILING_SERVER = """
for i in range(8):
    print(f"line {i}: " + "word " * 22 + f"end of line {i}")
    print()
raise SystemExit(3)
"""


class CommandServer(serve.ManagedServer):
    """A :class:`~gfnlm.serving.serve.ManagedServer` running a Python script (with the port as its
    argument) instead of an inference engine."""

    def __init__(self, script: str, startup_timeout_s: float = 30.0) -> None:
        super().__init__("unused", serve.LaunchConfig(startup_timeout_s=startup_timeout_s))
        self.script = script

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port)]


# Where torch.compile caches for servers started by this suite, whatever temp dir a test sets.
INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or serve._inductor_cache()


@pytest.fixture
def temp_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty folder as this process's temp dir (where servers put their logs and folders),
    with a short path: under pytest's long one a server's folder would go to /tmp, where its
    sockets' paths fit. Servers keep the usual torch.compile cache (vLLM's CPU build fills a new
    one with 150 MB of precompiled headers)."""
    folder = Path(tempfile.mkdtemp(prefix="gfnlm-test-"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", INDUCTOR_CACHE)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def quoted_log(message: str) -> Path:
    found = re.search(r"\(full log: (\S+)\)", message)
    assert found, message
    return Path(found.group(1))


def test_a_server_that_fails_at_start_keeps_its_log_and_quotes_whole_lines(temp_dir: Path) -> None:
    """The error quotes the last non-empty lines whole (as many of the last 5 as fit in 600
    characters: 4 of these 131-character lines) and names the log, which keeps the whole output;
    the server's private folder is gone."""
    lines = [f"line {i}: " + "word " * 22 + f"end of line {i}" for i in range(8)]
    with pytest.raises(ServerError) as error:
        CommandServer(FAILING_SERVER).start()
    message = str(error.value)
    log = quoted_log(message)
    assert message.endswith(
        "exited before /health answered; "
        f"last server output (full log: {log}): " + " | ".join(lines[4:])
    )
    assert len(lines[4]) == 131 and lines[3] not in message
    assert log.read_text() == "".join(f"{line}\n\n" for line in lines)
    assert [p.name for p in temp_dir.iterdir()] == [log.name]


def test_a_clean_stop_leaves_nothing(temp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that started and was stopped, quickly: its log, its private temp folder and the
    file it made in its TMPDIR (that folder) are all gone. torch.compile's cache stays where it
    would have been (torch's default: ``torchinductor_<user>`` in the temp dir)."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    server = CommandServer(HEALTH_SERVER).start()
    private = server.temp_dir
    assert private.parent == temp_dir and private.name.startswith("gfnlm-sglang-")
    assert server.log_path == temp_dir / f"{private.name}.log"
    deadline = time.monotonic() + 10
    while "CACHE_DIR=" not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    output = server.log_path.read_text().splitlines()
    assert output[:2] == [
        f"TMPDIR={private}",
        f"TORCHINDUCTOR_CACHE_DIR={temp_dir}/torchinductor_" + getpass.getuser(),
    ]
    assert next(p.name for p in private.iterdir()).startswith("ipc-")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5  # the supervisor does not sit out its 10 s of grace
    assert not list(temp_dir.iterdir())


@pytest.mark.parametrize("quoted", [False, True])
def test_a_server_that_exits_on_its_own_keeps_its_log(temp_dir: Path, quoted: bool) -> None:
    """After a server exited by itself, its log is kept when it is stopped, whether or not an error
    quoted it (``log_tail``, as ``gfnlm serve`` does); the quote names the log."""
    server = CommandServer(HEALTH_SERVER).start()
    log, private = server.log_path, server.temp_dir
    SGLangClient(server.url)._request("GET", "/exit", "exit")
    deadline = time.monotonic() + 10
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.alive()
    if quoted:
        assert server.log_tail() == (
            f"TMPDIR={private} | "
            f"TORCHINDUCTOR_CACHE_DIR={INDUCTOR_CACHE} | "
            f"stand-in server: exiting on request (full log: {log})"
        )
    server.stop()
    assert [p.name for p in temp_dir.iterdir()] == [log.name]
    assert log.read_text().endswith("stand-in server: exiting on request\n")


def test_a_long_temp_dir_path_puts_the_servers_folder_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a temp dir whose path leaves no room for vLLM's socket names (a UUID) in a folder of
    its own, the server's folder and log go to /tmp, and a clean stop still removes them."""
    long = tmp_path / ("long-" * 10)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    server = CommandServer(HEALTH_SERVER).start()
    private, log = server.temp_dir, server.log_path
    server.stop()
    assert private.parent == log.parent == Path("/tmp") and len(f"{private}/{'x' * 36}") <= 107
    assert not private.exists() and not log.exists() and not list(long.iterdir())


def test_the_quoted_lines_are_whole(tmp_path: Path) -> None:
    """``last_lines``: empty lines skipped, a progress bar's rewritten line as a terminal shows it,
    older lines dropped to fit, and a single line too long for the cap keeps its end after "…"."""
    log = tmp_path / "server.log"
    log.write_text("first\n\n  loading 10%\r  loading 100%\r\nsecond\n\n")
    assert serve.last_lines(log) == "first | loading 100% | second"
    assert serve.last_lines(log, lines=2) == "loading 100% | second"
    assert serve.last_lines(log, chars=len("loading 100% | second")) == "loading 100% | second"
    log.write_text("a" * 50 + "\n" + "b" * 700 + "z\n")
    assert serve.last_lines(log) == "…" + "b" * 598 + "z"
    # Only the log's end is read; a first line cut there is not quoted.
    log.write_text("x" * 70000 + "\n" + "tail line\n")
    assert serve.last_lines(log) == "tail line"


@pytest.mark.slow
def test_a_real_sglang_server_leaves_nothing_in_the_temp_dir(
    small_smollm2: Path, temp_dir: Path
) -> None:
    """A real SGLang CPU server (~35 s to start) makes its ZMQ ipc:// sockets in its private
    folder; after a clean stop the temp dir is as it was. Launched with the temp dir as its own
    TMPDIR, it left three sockets and two empty files named ``tmpXXXXXXXX`` there (its ipc names,
    from ``tempfile.NamedTemporaryFile``)."""
    with serve.SGLangServer(small_smollm2, serve.LaunchConfig(**cpu_launch())) as server:
        assert any(p.is_socket() for p in server.temp_dir.iterdir())
    assert not list(temp_dir.iterdir())
