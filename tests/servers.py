"""Real servers as child processes: Daphne, a Celery worker and edge workers.

One harness for the service-backed tests (on the test database pytest-django created) and for
the benchmarks (which pass their own environment, program and log directory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from django.db import connection

from jobs.protocol import WEBSOCKET_MAX_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = ROOT / "var" / "test-logs"


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """DATABASE_URL of the test database pytest-django created, for child processes."""
    settings = connection.settings_dict
    if settings["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings['NAME']}"
    user = settings.get("USER") or "postgres"
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    """Environment for a child server process sharing this test run's database."""
    env = os.environ.copy()
    env.update({"DATABASE_URL": test_database_url(), "CCGSC_ENV": "test", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def wait_for_http(
    url: str, timeout_s: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


class ManagedProcess:
    """A child process with its output in a log file, stoppable and restartable."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], *, log_dir: Path = LOG_DIR
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.process: subprocess.Popen | None = None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:8]}.log"

    def start(self) -> None:
        log = self.log_path.open("ab")
        # A session of its own: a kill takes the process's children with it (a Celery worker's
        # embedded beat, the launcher's Daphnes), as when a machine or container dies.
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self, *, kill: bool = False) -> None:
        """Stop gracefully (SIGTERM to the process), or SIGKILL its whole process group."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class DaphneServer(ManagedProcess):
    """Daphne serving the project's ASGI application on a free loopback port.

    ``env`` replaces the test environment (benchmarks bring their own database); ``program``
    replaces ``python -m daphne`` (e.g. a profiling wrapper taking the same arguments)."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
        log_dir: Path = LOG_DIR,
        start_timeout_s: float = 30.0,
        **extra_env: str,
    ) -> None:
        self.port = free_port()
        self.start_timeout_s = start_timeout_s
        super().__init__(
            "daphne",
            [
                *(program or [sys.executable, "-m", "daphne"]),
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                # the protocol's cap, so oversized frames get close 4009, not a dropped socket
                "--websocket-max-message-size",
                str(WEBSOCKET_MAX_MESSAGE_BYTES),
                "--websocket-max-frame-size",
                str(WEBSOCKET_MAX_MESSAGE_BYTES),
                "ccgsc_site.asgi:application",
            ],
            {**env, **extra_env} if env is not None else server_env(**extra_env),
            log_dir=log_dir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        try:
            wait_for_http(
                self.url + "/healthz", timeout_s=self.start_timeout_s, process=self.process
            )
        except Exception as exc:
            raise RuntimeError(f"Daphne failed to start:\n{self.log_tail()}") from exc


class DaphneLauncher(ManagedProcess):
    """``scripts/daphne_launcher.py``: several Daphnes sharing one loopback port, dead ones
    replaced. ``daphne_pids()`` reads the launcher's log for the processes alive now."""

    def __init__(
        self,
        *,
        processes: int,
        env: dict[str, str] | None = None,
        log_dir: Path = LOG_DIR,
        start_timeout_s: float = 60.0,
        **extra_env: str,
    ) -> None:
        self.port = free_port()
        self.processes = processes
        self.start_timeout_s = start_timeout_s
        super().__init__(
            "launcher",
            [
                sys.executable,
                str(ROOT / "scripts" / "daphne_launcher.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--processes",
                str(processes),
            ],
            {**env, **extra_env} if env is not None else server_env(**extra_env),
            log_dir=log_dir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def daphne_pids(self) -> list[int]:
        """The Daphnes started and not yet seen exiting, oldest first."""
        alive: list[int] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "started daphne pid=" in line:
                alive.append(int(line.rsplit("pid=", 1)[1].split()[0]))
            elif "exited with" in line and "daphne pid=" in line:
                pid = int(line.rsplit("daphne pid=", 1)[1].split()[0])
                if pid in alive:
                    alive.remove(pid)
        return alive

    def listening(self) -> int:
        """How many Daphnes said they listen (each takes connections once it does)."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("Listening on TCP address")

    def start(self) -> None:
        before = self.listening()
        super().start()
        deadline = time.monotonic() + self.start_timeout_s
        while self.listening() - before < self.processes:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the Daphne launcher exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Daphnes did not all listen:\n{self.log_tail()}")
            time.sleep(0.2)
        wait_for_http(self.url + "/healthz", timeout_s=30, process=self.process)


class CeleryWorker(ManagedProcess):
    """A real Celery worker consuming this run's own queue; with ``beat``, it also runs the
    periodic schedule (the lease sweeper)."""

    def __init__(
        self,
        queue: str,
        *,
        beat: bool = False,
        env: dict[str, str] | None = None,
        log_dir: Path = LOG_DIR,
        start_timeout_s: float = 30.0,
        **extra_env: str,
    ) -> None:
        self.queue = queue
        self.start_timeout_s = start_timeout_s
        args = [
            sys.executable, "-m", "celery", "-A", "ccgsc_site", "worker", "-P", "solo",
            "-Q", queue, "-l", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"test-{queue}-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        if beat:
            log_dir.mkdir(parents=True, exist_ok=True)
            args += ["-B", "-s", str(log_dir / f"beat-{queue}-{uuid.uuid4().hex[:6]}")]
        environment = (
            {**env, "CCGSC_CELERY_QUEUE": queue, **extra_env}
            if env is not None
            else server_env(CCGSC_CELERY_QUEUE=queue, **extra_env)
        )
        super().__init__("celery", args, environment, log_dir=log_dir)

    def start(self) -> None:
        ready_before = (
            self.log_path.read_text(errors="replace").count("ready.")
            if self.log_path.exists()
            else 0
        )
        super().start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Celery worker exited:\n{self.log_tail()}")
            if self.log_path.read_text(errors="replace").count("ready.") > ready_before:
                return
            time.sleep(0.2)
        raise TimeoutError(f"Celery worker not ready:\n{self.log_tail()}")


class EdgeWorkerProcess(ManagedProcess):
    """The real ``ccgsc-worker`` command against a server."""

    def __init__(
        self,
        server_url: str,
        token: str,
        *,
        concurrency: int = 1,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            "edge-worker",
            [
                sys.executable,
                "-m",
                "ccgsc_worker.cli",
                "--server",
                server_url,
                "--token",
                token,
                "--concurrency",
                str(concurrency),
                *extra_args,
            ],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
        )


class TcpProxy:
    """A loopback TCP relay in front of a server: ``cut()`` drops every connection through it and
    refuses new ones until ``restore()``, which is what a client sees when its network goes away.
    It records the first line of each connection (for HTTP/1.1 without keep-alive, as the edge
    worker's requests are: the request line), relayed or refused, so a test can count what was
    sent and what the cut interrupted."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.request_lines: list[str] = []
        self.refused_lines: list[str] = []  # first lines of connections dropped while cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._refusing = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(
                target=self._pump, args=(client, upstream, pair, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, pair, False), daemon=True
            ).start()

    def _refuse(self, client: socket.socket) -> None:
        """Read what the client meant to send (its request line), then drop it unanswered."""
        client.settimeout(5)
        with contextlib.suppress(OSError):
            data = client.recv(65536)
            with self._lock:
                self.refused_lines.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
        client.close()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple, first: bool) -> None:  # noqa: FBT001
        try:
            while data := source.recv(65536):
                if first:
                    with self._lock:
                        self.request_lines.append(
                            data.split(b"\r\n", 1)[0].decode(errors="replace")
                        )
                    first = False
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self._refusing = True
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def restore(self) -> None:
        """Accept connections again."""
        self._refusing = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@contextlib.contextmanager
def running(server: ManagedProcess) -> Iterator[ManagedProcess]:
    """Start ``server`` and stop it afterwards."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
