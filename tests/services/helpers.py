"""Helpers of the service-backed suite: the Daphne launcher as a managed process."""

from __future__ import annotations

import re
import sys

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
        return [pid for pid in started if pid not in exited]
