"""Real SGLang server processes for tests: start once, share, check health, stop."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from memento_sglang.cpu import cpu_environment, with_cpu_defaults

#: SGLang's own leak and page checks stay on in every server test.
STRICT_MEMORY_ENV = {
    "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1",
    "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1",
    "SGLANG_CHECK_KV_PAGE_INVARIANTS": "1",
}
FAILURE_PATTERNS = re.compile(
    r"Traceback|memory leak detected|Mem Leak Detected|use-after-free|double free|"
    r"Failed to apply hooks|Failed to execute general plugin"
)


#: At most this many servers start at once (one start is ~40 s of CPU on 2 cores).
MAX_STARTING = int(os.environ.get("MEMENTO_TEST_MAX_STARTING", min(2, os.cpu_count() or 1)))
#: A start slower than this is a failure. Measured on 2 cores, two starting at once next to
#: the unit tests: 37-46 s per server (the session prints each); the limit leaves room for a
#: cold first start (page cache, model conversion), and says which server was slow.
START_TIMEOUT_S = float(os.environ.get("MEMENTO_TEST_START_TIMEOUT", "600"))


def _default_max_alive() -> int:
    """Servers alive at once: each holds ~2-4 GB in its 3-5 processes (launcher, scheduler(s),
    detokenizer); eleven at once ran 24 GB out of memory."""
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(2, int(total_gb // 3.5))


#: At most this many servers are started ahead of need and kept alive at once; a server a
#: test is waiting for starts anyway (so no test can wait on servers later tests hold).
MAX_ALIVE = int(os.environ.get("MEMENTO_TEST_MAX_ALIVE", _default_max_alive()))


class ServerStartError(RuntimeError):
    """A server configuration did not come up; names it, says how long it took, shows its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    name: str
    args: tuple[str, ...]
    #: "memento" = python -m memento_sglang.launch_server (CPU defaults applied by it);
    #: "sglang" = stock python -m sglang.launch_server with the plugin from the entry point.
    launcher: str = "memento"
    max_total_tokens: int = 20000
    env: tuple[tuple[str, str], ...] = ()
    #: builds/locates the model folder when the pool starts; None = the pool's model
    model: Callable[[], Path] | None = None


@dataclass
class ServerProcess:
    spec: ServerSpec
    model_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def page_size(self) -> int:
        """The server's `--page-size` (1 unless its spec sets one)."""
        args = list(self.spec.args)
        return int(args[args.index("--page-size") + 1]) if "--page-size" in args else 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        base = [
            "--model-path", str(self.model_path),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-total-tokens", str(self.spec.max_total_tokens),
            "--log-level", "info",
            *self.spec.args,
        ]  # fmt: skip
        if self.spec.launcher == "memento":
            return [sys.executable, "-m", "memento_sglang.launch_server", *base]
        return [sys.executable, "-m", "sglang.launch_server", *with_cpu_defaults(base)]

    def start(self) -> None:
        env = cpu_environment() if self.spec.launcher == "sglang" else dict(os.environ)
        env.update(STRICT_MEMORY_ENV)
        env.update(dict(self.spec.env))
        workdir = Path(tempfile.mkdtemp(prefix=f"memento-{self.spec.name}-"))
        self.log_path = workdir / "server.log"
        log = self.log_path.open("w")
        # cwd outside the repository: its top-level folders must never shadow imports
        self.proc = subprocess.Popen(
            self.command(), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def poll_ready(self) -> bool:
        """True once SGLang answers `/health` (503 until its warm-up request has run).

        Raises when the process exited: a server that died never becomes ready."""
        if self.proc.poll() is not None:
            raise ServerStartError(
                f"server {self.spec.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )
        try:
            return requests.get(self.url + "/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Block until ready (see `poll_ready`); return the seconds it took."""
        started = time.monotonic()
        while not self.poll_ready():
            waited = time.monotonic() - started
            if waited > timeout:
                raise ServerStartError(
                    f"server {self.spec.name} not ready after {waited:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(1.0)
        return time.monotonic() - started

    def generate(self, body: dict, timeout: float = 300.0) -> dict:
        r = requests.post(self.url + "/generate", json=body, timeout=timeout)
        if not r.ok:
            raise AssertionError(f"/generate returned {r.status_code}: {r.text}")
        return r.json()

    def post(self, path: str, body: dict, timeout: float = 300.0) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def assert_healthy(self) -> None:
        """Alive, answering, and no leak/invariant/plugin failure in its log."""
        assert self.proc.poll() is None, f"server {self.spec.name} died:\n{self.log_tail()}"
        time.sleep(1.5)  # let the idle-time leak check run
        assert requests.get(self.url + "/health_generate", timeout=60).ok
        bad = [ln for ln in self.log_text().splitlines() if FAILURE_PATTERNS.search(ln)]
        assert not bad, f"server {self.spec.name} log reports failures:\n" + "\n".join(bad[:20])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class _Start:
    server: ServerProcess
    launched: float
    concurrent: int  # servers starting at the same moment, this one included


class ServerPool:
    """Server configurations, started ahead of the tests that need them, a few at a time.

    Each start costs ~40 s of CPU; all seven at once took six minutes on 2 cores. So
    `plan(names)` queues the configurations a session needs, in the order its tests
    need them, and a background thread keeps at most `max_starting` of them starting.
    `get(name)` moves its server to the front of the queue and waits for it. Readiness is
    SGLang's `/health` (200 only after its warm-up request). A server that fails to
    start raises `ServerStartError` in the tests that use it, and only there.
    """

    def __init__(
        self,
        specs: list[ServerSpec],
        model_path: Path,
        *,
        max_starting: int = MAX_STARTING,
        max_alive: int = MAX_ALIVE,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self._specs = {s.name: s for s in specs}
        self._model_path = model_path
        self._max_starting = max_starting
        self._max_alive = max_alive
        self._wanted: set[str] = set()  # servers a test is waiting for
        self._start_timeout = start_timeout
        self._cv = threading.Condition()
        self._queue: list[str] = []
        self._starting: dict[str, _Start | None] = {}  # None while its model folder is built
        self._ready: dict[str, ServerProcess] = {}
        self._failed: dict[str, ServerStartError] = {}
        self._problems: list[str] = []  # health failures of retired servers
        self.start_seconds: dict[str, tuple[float, int]] = {}  # name -> (seconds to ready, concurrent)
        self._thread: threading.Thread | None = None
        self._closed = False

    def plan(self, names: list[str]) -> None:
        """Queue configurations to start in the background, in this order."""
        with self._cv:
            for name in names:
                self._check_known(name)
                if not self._known(name) and name not in self._queue:
                    self._queue.append(name)
            self._wake()

    def get(self, name: str) -> ServerProcess:
        self._check_known(name)
        with self._cv:
            if name in self._queue:
                self._queue.remove(name)
            if not self._known(name):
                self._queue.insert(0, name)
            self._wanted.add(name)
            self._wake()
            while name not in self._ready and name not in self._failed:
                self._cv.wait(timeout=1.0)
            self._wanted.discard(name)
            if name in self._failed:
                raise self._failed[name]
            return self._ready[name]

    def retire(self, name: str) -> None:
        """No later test needs this server: check it (leaks, invariants) and stop it, so its
        ~2 GB are free for the rest of the session (7 servers fill most of 24 GB)."""
        with self._cv:
            server = self._ready.pop(name, None)
            self._cv.notify_all()  # room for the next server
        if server is None:
            return
        try:
            server.assert_healthy()
        except AssertionError as exc:
            self._problems.append(str(exc))
        server.stop()

    def close(self) -> None:
        """Stop every server; a server that leaked or broke an invariant fails the session."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        for name in list(self._ready):
            self.retire(name)
        self.stop_all()
        assert not self._problems, "\n".join(self._problems)

    def stop_all(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        for server in [*self._ready.values(), *(s.server for s in self._starting.values() if s)]:
            server.stop()

    # ----------------------------------------------------------- the starter thread

    def _check_known(self, name: str) -> None:
        if name not in self._specs:
            raise KeyError(f"no server configuration named {name!r}; known: {', '.join(self._specs)}")

    def _known(self, name: str) -> bool:
        return name in self._starting or name in self._ready or name in self._failed

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="server-starter", daemon=True)
            self._thread.start()
        self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                launch = []
                while self._queue and len(self._starting) < self._max_starting:
                    name = next((n for n in self._queue if n in self._wanted), None)
                    if name is None:  # ahead of need: only while there is room
                        if len(self._starting) + len(self._ready) >= self._max_alive:
                            break
                        name = self._queue[0]
                    self._queue.remove(name)
                    self._starting[name] = None
                    launch.append(name)
            for name in launch:
                self._launch(name)
            for name, start in list(self._starting.items()):
                if start is not None:
                    self._check_start(name, start)
            with self._cv:
                self._cv.wait(timeout=1.0)

    def _launch(self, name: str) -> None:
        spec = self._specs[name]
        try:
            server = ServerProcess(spec, spec.model() if spec.model else self._model_path)
            server.start()
        except Exception as exc:  # noqa: BLE001 - reported to the tests that need this server
            self._finish(name, failure=ServerStartError(f"server {name} could not be launched: {exc!r}"))
            return
        with self._cv:
            self._starting[name] = _Start(server, time.monotonic(), len(self._starting))

    def _check_start(self, name: str, start: _Start) -> None:
        elapsed = time.monotonic() - start.launched
        try:
            ready = start.server.poll_ready()
        except ServerStartError as exc:
            self._finish(name, failure=ServerStartError(f"{exc} (after {elapsed:.0f} s)"))
            return
        if ready:
            self.start_seconds[name] = (elapsed, start.concurrent)
            self._finish(name, server=start.server)
        elif elapsed > self._start_timeout:
            start.server.stop()
            self._finish(
                name,
                failure=ServerStartError(
                    f"server {name} not ready after {elapsed:.0f} s (limit {self._start_timeout:.0f} s, "
                    f"{start.concurrent} starting at once; args {' '.join(start.server.spec.args)}):\n"
                    f"{start.server.log_tail()}"
                ),
            )

    def _finish(self, name: str, *, server: ServerProcess | None = None,
                failure: ServerStartError | None = None) -> None:  # fmt: skip
        with self._cv:
            self._starting.pop(name, None)
            if server is not None:
                self._ready[name] = server
            else:
                self._failed[name] = failure
            self._cv.notify_all()
