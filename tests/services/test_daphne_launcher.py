"""Several Daphne processes share one port through the launcher; killing one loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.servers import wait_for_http
from tests.services.helpers import Launcher, established_connections

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _server_pid(client: socket.socket, candidates: list[int]) -> int | None:
    """Which process holds the server end of ``client``'s connection (from /proc)."""
    server_port, client_port = client.getpeername()[1], client.getsockname()[1]
    wanted = f":{server_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted) and fields[2].endswith(f":{client_port:04X}"):
            inode = fields[9]
    if inode is None:
        return None
    for pid in candidates:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd_dir / name) for name in os.listdir(fd_dir)]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if f"socket:[{inode}]" in links:
            return pid
    return None


def _request(port: int, candidates: list[int]) -> tuple[int, int | None]:
    """One request on a new connection: its status and the Daphne that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = client.recv(4096).decode(errors="replace")
        status = int(head.split(" ", 2)[1])
        # The connection is kept alive: the server end still belongs to the process that took it.
        return status, _server_pid(client, candidates)


def _two_daphnes_serving(launcher: Launcher, timeout_s: float) -> tuple[int, int]:
    """Wait until the launcher's two Daphnes are up; their pids."""
    wait_for_http(f"http://127.0.0.1:{launcher.port}/healthz", process=launcher.process)
    deadline = time.monotonic() + timeout_s
    while len(launcher.daphne_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    first, second = launcher.daphne_pids()
    return first, second


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_two_daphnes_share_one_port_and_the_survivor_serves_after_a_kill(transactional_db):
    # given: the launcher with two Daphnes on one port
    launcher = Launcher(processes=2)
    launcher.start()
    try:
        first, second = _two_daphnes_serving(launcher, 30)
        # both Daphnes come up and accept on the one port (each takes connections once ready)
        served: dict[int | None, int] = {}
        deadline = time.monotonic() + 60  # the second may still be starting Django
        while not {first, second} <= set(served) and time.monotonic() < deadline:
            status, pid = _request(launcher.port, [first, second])
            assert status == 200
            served[pid] = served.get(pid, 0) + 1
            time.sleep(0.01)
        assert set(served) == {first, second}, (served, launcher.log_tail())

        # when: one Daphne dies
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while first in launcher.daphne_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

        # then: new connections are all served, by the survivor (or, once it is up, by the
        # replacement the launcher starts), never by the dead process
        after = [_request(launcher.port, [*launcher.daphne_pids(), first]) for _ in range(30)]
        assert [status for status, _ in after] == [200] * 30
        serving = {pid for _, pid in after}
        assert second in serving
        assert first not in serving
        assert None not in serving
        # and the launcher replaced the dead one
        deadline = time.monotonic() + 15
        while len(launcher.daphne_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(launcher.daphne_pids()) == 2
        assert first not in launcher.daphne_pids()
    finally:
        launcher.stop()
    assert launcher.process.returncode == 0
    assert "stopped" in launcher.log_tail()


def _open_websockets(port: int, count: int) -> list[socket.socket]:
    """``count`` WebSocket connections to the edge route, upgraded and left open (no hello)."""
    opened = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.sendall(
            b"GET /ws/edge/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert client.recv(4096).startswith(b"HTTP/1.1 101"), "no WebSocket upgrade"
        opened.append(client)
    return opened


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_daphne_serving_more_than_its_share_lets_the_others_accept(transactional_db):
    # given the launcher with two Daphnes on one port, both serving
    launcher = Launcher(processes=2)
    launcher.start()
    held: list[socket.socket] = []
    stopped = None
    try:
        first, second = _two_daphnes_serving(launcher, 60)
        deadline = time.monotonic() + 60
        served: set[int | None] = set()
        while not {first, second} <= served and time.monotonic() < deadline:
            served.add(_request(launcher.port, [first, second])[1])
        assert {first, second} <= served, launcher.log_tail()
        # and 60 WebSockets on the second alone (the first is stopped meanwhile: its load
        # stops counting after a second, so the second keeps accepting)
        os.kill(first, signal.SIGSTOP)
        stopped = first
        time.sleep(1.2)
        held += _open_websockets(launcher.port, 60)
        os.kill(first, signal.SIGCONT)
        stopped = None
        time.sleep(0.5)
        assert established_connections(launcher.port, [first, second]) == {first: 0, second: 60}
        # when 60 more connect
        held += _open_websockets(launcher.port, 60)
        # then the first took most of them: the second, past the first's load plus the slack
        # (8), stopped accepting until the first caught up (the kernel alone splits such a burst
        # about evenly, which would leave 30 and 90)
        counts = established_connections(launcher.port, [first, second])
        assert sum(counts.values()) == 120
        assert abs(counts[first] - counts[second]) <= 20, counts
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for client in held:
            client.close()
        launcher.stop()
    assert launcher.process.returncode == 0
