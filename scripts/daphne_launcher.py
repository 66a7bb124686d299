#!/usr/bin/env python3
"""Serve the site with several Daphne processes on one port, and keep them running.

The launcher binds one listening socket and starts N ``daphne --fd`` processes that inherit it;
the kernel hands each new connection to whichever process accepts first, so an idle process takes
the next socket while a busy one works. When a Daphne dies, the others keep accepting on the same
socket (nothing queued is lost: the queue belongs to the socket, not to the process) and the
launcher starts a replacement. SIGTERM or SIGINT stops every Daphne, then the launcher.

The kernel's split of a burst can be uneven (340–660 of 1,000 sockets between two processes), so
the Daphnes even it out themselves (``ccgsc_site.accept_balance``): the launcher gives each a slot
in a small shared file where every process publishes how many connections it serves, and a
process serving more than the least loaded one stops accepting until the others catch up. The
launcher clears a dead child's slot and gives its replacement the same one.

This is the one place the Daphne command line is built (``daphne_command``): ``scripts/serve.sh``
and the deployment manifests run this script, so a new Daphne flag goes into ``DAPHNE_OPTIONS``.
Several processes need a shared channel layer (Redis); with the in-memory one, run one process.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
APPLICATION = "ccgsc_site.asgi:application"

from ccgsc_site.accept_balance import ENVIRONMENT, SlotTable  # noqa: E402 - after the path


def _websocket_cap_bytes() -> int:
    """Daphne's per-message cap, from the protocol definition: bigger than any valid message, so
    an oversized frame reaches the consumer and gets close 4009 instead of a dropped socket."""
    from ccgsc_worker.protocol_schema import load_definition

    return int(load_definition(1)["limits"]["websocket_max_message_bytes"])


# Flags every Daphne gets, before the per-process socket. Keep them here, not in callers.
DAPHNE_OPTIONS: list[str] = [
    "--websocket-max-message-size",
    str(_websocket_cap_bytes()),
    "--websocket-max-frame-size",
    str(_websocket_cap_bytes()),
]
# A process that dies within this many seconds of starting counts as a failed start; after
# MAX_FAILED_STARTS in a row the launcher gives up rather than spin.
FAILED_START_SECONDS = 10.0
MAX_FAILED_STARTS = 5
STOP_GRACE_SECONDS = 10.0


def default_processes() -> int:
    """``CCGSC_DAPHNE_PROCESSES``, else one per core."""
    configured = os.environ.get("CCGSC_DAPHNE_PROCESSES", "").strip()
    return int(configured) if configured else (os.cpu_count() or 1)


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket that child processes can inherit."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def daphne_command(sock: socket.socket, *, extra: list[str] | None = None) -> list[str]:
    """The Daphne command line serving the site on an inherited listening socket."""
    fd = sock.fileno()
    if sock.family == socket.AF_INET6:
        endpoint = ["-e", f"fd:fileno={fd}:domain=INET6"]
    else:
        endpoint = ["--fd", str(fd)]
    return [sys.executable, "-m", "daphne", *DAPHNE_OPTIONS, *(extra or []), *endpoint, APPLICATION]


def log(message: str) -> None:
    print(f"[launcher {os.getpid()}] {message}", flush=True)


class Launcher:
    """Keeps ``processes`` Daphnes alive on one socket until told to stop."""

    def __init__(self, sock: socket.socket, processes: int, extra: list[str]) -> None:
        self.sock = sock
        self.processes = processes
        self.extra = extra
        self.children: dict[int, tuple[subprocess.Popen, float]] = {}
        self.slots: dict[int, int] = {}  # child pid -> its slot in the load table
        self.stopping = False
        self.failed_starts = 0
        self.table: SlotTable | None = None
        if processes > 1:
            shm = Path("/dev/shm")  # noqa: S108 - memory, not disk, where Linux has it
            folder = shm if shm.is_dir() else Path(tempfile.gettempdir())
            handle, name = tempfile.mkstemp(prefix="ccgsc-daphne-load-", dir=folder)
            os.close(handle)
            self.table = SlotTable.create(Path(name), processes)

    def spawn(self) -> None:
        env = os.environ.copy()
        if self.table is not None:
            slot = min(set(range(self.processes)) - set(self.slots.values()))
            self.table.clear(slot)
            env[ENVIRONMENT] = f"{self.table.path}:{slot}"
        child = subprocess.Popen(
            daphne_command(self.sock, extra=self.extra),
            cwd=ROOT,
            env=env,
            pass_fds=(self.sock.fileno(),),
        )
        self.children[child.pid] = (child, time.monotonic())
        if self.table is not None:
            self.slots[child.pid] = slot
        log(f"started daphne pid={child.pid}")

    def forget(self, pid: int) -> None:
        """A child exited: its slot no longer counts, and is free for its replacement."""
        slot = self.slots.pop(pid, None)
        if slot is not None and self.table is not None:
            self.table.clear(slot)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        for _ in range(self.processes):
            self.spawn()
        host, port = self.sock.getsockname()[:2]
        log(f"listening on {host}:{port} with {self.processes} daphne processes")
        while not self.stopping:
            for pid, (child, started) in list(self.children.items()):
                if child.poll() is None:
                    continue
                del self.children[pid]
                self.forget(pid)
                log(f"daphne pid={pid} exited with {child.returncode}")
                if self.stopping:
                    break
                quick = time.monotonic() - started < FAILED_START_SECONDS
                self.failed_starts = self.failed_starts + 1 if quick else 0
                if self.failed_starts >= MAX_FAILED_STARTS:
                    log("daphne keeps failing to start; giving up")
                    self.shutdown()
                    return 1
                self.spawn()
            time.sleep(0.2)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        for child, _ in self.children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child, _ in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()
        if self.table is not None:
            self.table.path.unlink(missing_ok=True)
        log("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("CCGSC_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CCGSC_PORT", "8000")))
    parser.add_argument("--processes", type=int, default=default_processes())
    parser.add_argument(
        "daphne_args", nargs="*", help="extra Daphne flags, after --, for every process"
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    sock = listening_socket(args.host, args.port)
    launcher = Launcher(sock, args.processes, args.daphne_args)
    signal.signal(signal.SIGTERM, launcher.stop)
    signal.signal(signal.SIGINT, launcher.stop)
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
