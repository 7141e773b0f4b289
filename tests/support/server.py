"""Real SGLang server processes for tests: start once, share, check health, stop."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
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

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.spec.name} exited:\n{self.log_tail()}")
            try:
                answered = requests.get(self.url + "/model_info", timeout=2).ok
                if answered and "fired up and ready" in self.log_text():
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"server {self.spec.name} not ready:\n{self.log_tail()}")

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


class ServerPool:
    """Starts every known server configuration once, concurrently, on first use."""

    def __init__(self, specs: list[ServerSpec], model_path: Path) -> None:
        self._specs = {s.name: s for s in specs}
        self._model_path = model_path
        self._servers: dict[str, ServerProcess] = {}
        self._ready: set[str] = set()

    def get(self, name: str) -> ServerProcess:
        if not self._servers:
            for spec in self._specs.values():
                server = ServerProcess(spec, spec.model() if spec.model else self._model_path)
                server.start()
                self._servers[spec.name] = server
        server = self._servers[name]
        if name not in self._ready:
            server.wait_ready()
            self._ready.add(name)
        return server

    def close(self) -> None:
        """Stop every server; a server that leaked or broke an invariant fails the session."""
        problems = []
        for name in self._ready:
            try:
                self._servers[name].assert_healthy()
            except AssertionError as exc:
                problems.append(str(exc))
        for server in self._servers.values():
            server.stop()
        assert not problems, "\n".join(problems)
