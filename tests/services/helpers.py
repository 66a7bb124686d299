"""Helpers of the service-backed suite: the Daphne launcher as a managed process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tests.servers import ROOT, ManagedProcess, free_port, server_env

LAUNCHER = ROOT / "scripts" / "daphne_launcher.py"


class Launcher(ManagedProcess):
    """scripts/daphne_launcher.py on a free loopback port, on the test database."""

    def __init__(self, processes: int, **extra_env: str) -> None:
        self.port = free_port()
        super().__init__(
            "launcher",
            [sys.executable, str(LAUNCHER), "--host", "127.0.0.1", "--port", str(self.port),
             "--processes", str(processes)],
            server_env(**extra_env),
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def daphne_pids(self) -> list[int]:
        """Pids of the Daphnes the launcher started that have not exited."""
        log = self.log_path.read_text(errors="replace")
        started = [int(pid) for pid in re.findall(r"started daphne pid=(\d+)", log)]
        exited = {int(pid) for pid in re.findall(r"daphne pid=(\d+) exited", log)}
        # A Daphne killed with the whole launcher never logged its exit: ask the kernel.
        return [pid for pid in started if pid not in exited and Path(f"/proc/{pid}").exists()]


def established_connections(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP connections to ``port`` each process holds the server end of
    (read from Linux's /proc: the sockets in ``/proc/net/tcp`` and each process's fds)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd_dir / name) for name in os.listdir(fd_dir)]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            links = []
        counts[pid] = sum(1 for link in links if link in inodes)
    return counts
