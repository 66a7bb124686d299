"""Daphne's connections send at once when nothing is buffered (ccgsc_site.immediate_write).

Each test runs a real Twisted reactor instance (not the process's global one) with a real
listening TCP port on loopback, and a plain blocking socket as the peer; the reactor is turned
by hand, so a test sees exactly what was sent before the loop's next turn.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.selectreactor import SelectReactor

from ccgsc_site import immediate_write
from tests.site.test_health_settings_admin import ROOT, _clean_env


class Recording(protocol.Protocol):
    def __init__(self) -> None:
        self.lost = False

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802 - Twisted's name
        self.lost = True


class Site:
    """A reactor, a listening port with the given connection class, and one connected peer."""

    def __init__(self, connection_class: type[tcp.Server]) -> None:
        self.reactor = SelectReactor()
        self.protocols: list[Recording] = []
        factory = protocol.Factory()
        factory.buildProtocol = self._build  # type: ignore[method-assign]
        self.port = tcp.Port(0, factory, interface="127.0.0.1", reactor=self.reactor)
        self.port.transport = connection_class
        self.port.startListening()
        self.peer = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.peer.settimeout(0.2)
        self.turn_until(lambda: self.protocols and self.protocols[0].transport is not None)
        self.protocol = self.protocols[0]
        self.transport = self.protocol.transport

    def _build(self, addr: object) -> Recording:
        self.protocols.append(Recording())
        return self.protocols[-1]

    def turn_until(self, done, timeout_s: float = 5.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "the reactor never got there"
            self.reactor.iterate(0.01)

    def received_now(self, limit: int = 1 << 20) -> bytes:
        """What the peer can read without the reactor turning."""
        self.peer.setblocking(False)
        try:
            return self.peer.recv(limit)
        except BlockingIOError:
            return b""
        finally:
            self.peer.settimeout(0.2)

    def close(self) -> None:
        self.peer.close()
        self.port.stopListening()
        if self.transport.connected:
            self.transport.loseConnection()
        for _ in range(20):
            self.reactor.iterate(0)


@pytest.fixture
def site():
    made: list[Site] = []

    def make(connection_class: type[tcp.Server] = immediate_write.ImmediateWriteServer) -> Site:
        made.append(Site(connection_class))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_write_reaches_the_peer_before_the_loop_turns(site):
    s = site()
    assert type(s.transport) is immediate_write.ImmediateWriteServer
    s.transport.write(b'{"type":"assign"}')
    assert s.received_now() == b'{"type":"assign"}'
    # Nothing was left for the loop: the socket is not registered for writing.
    assert s.transport not in s.reactor.getWriters()


def test_twisted_own_connection_waits_for_the_loop(site):
    """What the class changes: Twisted's connection sends only on the loop's next turn."""
    s = site(tcp.Server)
    s.transport.write(b"frame")
    assert s.received_now() == b""
    assert s.transport in s.reactor.getWriters()
    s.turn_until(lambda: s.transport not in s.reactor.getWriters())
    assert s.received_now() == b"frame"


def test_what_the_kernel_does_not_take_is_buffered_and_later_writes_keep_their_order(site):
    s = site()
    big = bytes(range(256)) * 65536  # 16 MiB: more than both sockets' buffers hold
    s.transport.write(big)
    assert s.transport.dataBuffer or s.transport._tempDataBuffer  # the rest waits in Twisted
    assert s.transport in s.reactor.getWriters()
    # Written while bytes wait: buffered behind them, not sent ahead of them.
    s.transport.write(b"tail")
    assert s.transport._tempDataBuffer[-1] == b"tail"
    received = bytearray()
    s.peer.setblocking(False)
    deadline = time.monotonic() + 30
    while len(received) < len(big) + 4:
        assert time.monotonic() < deadline, f"only {len(received)} bytes arrived"
        s.reactor.iterate(0)
        try:
            received += s.peer.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
    assert bytes(received) == big + b"tail"
    # Once the buffer is empty again, the next write is immediate again.
    s.turn_until(lambda: s.transport not in s.reactor.getWriters())
    s.transport.write(b"again")
    assert s.received_now() == b"again"


def test_a_write_to_a_reset_peer_closes_the_connection_as_twisted_does(site):
    s = site()
    s.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.peer.close()  # an RST, not a FIN
    time.sleep(0.05)
    for _ in range(3):
        s.transport.write(b"x" * 1000)  # never raises
    s.turn_until(lambda: s.protocol.lost)
    assert not s.transport.connected


def test_writes_after_the_write_side_closed_are_dropped(site):
    s = site()
    s.transport.loseWriteConnection()
    s.turn_until(lambda: s.transport._writeDisconnected)
    s.transport.write(b"late")
    s.peer.settimeout(2)
    assert s.peer.recv(100) == b""  # end of stream, nothing after it


def test_the_site_installs_it_for_daphne(tmp_path):
    """Importing the ASGI application, as Daphne does before it listens, installs the class (in
    a process of its own: the import also freezes that process's collector)."""
    probe = (
        "import ccgsc_site.asgi; from twisted.internet import tcp; print(tcp.Port.transport); "
        "from daphne import ws_protocol; print(ws_protocol.WebSocketFactory.protocol); "
        "from autobahn.websocket import protocol; print(protocol.pformat.ccgsc_deferred)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=_clean_env(CCGSC_VAR_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ccgsc_site.immediate_write.ImmediateWriteServer" in result.stdout
    assert "ccgsc_site.immediate_write.FrameSendProtocol" in result.stdout
    assert result.stdout.splitlines()[-1] == "True"  # Autobahn's debug lines deferred


class _Written:
    """A transport that keeps what it is given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def _open(protocol_class: type) -> object:
    """A WebSocket protocol of ``protocol_class`` in the open state, as Daphne's factory builds
    it, writing to a ``_Written``."""
    import collections

    import txaio
    from autobahn.websocket.protocol import TrafficStats
    from daphne import ws_protocol

    factory = ws_protocol.WebSocketFactory(object)
    factory.protocol = protocol_class
    built = factory.buildProtocol(None)
    for name in built.CONFIG_ATTRS:
        setattr(built, name, getattr(factory, name))
    built.log = txaio.make_logger()
    built.transport = _Written()
    built.state, built.websocket_version = built.STATE_OPEN, 13
    built.peer, built.trackedTimings, built.triggered = "tcp:127.0.0.1:1", False, False
    built._perMessageCompress = None
    built.trafficStats, built.send_queue = TrafficStats(), collections.deque()
    return built


def test_frames_go_out_as_autobahn_writes_them_without_formatting_its_debug_log(monkeypatch):
    import autobahn.websocket.protocol as autobahn_protocol
    from daphne import ws_protocol

    frame = b'{"v":1,"type":"assign","assignment":"' + b"a" * 300 + b'"}'
    theirs = _open(ws_protocol.WebSocketProtocol)
    theirs.sendMessage(frame, False)

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("the debug log's arguments were formatted")

    monkeypatch.setattr(autobahn_protocol, "hltype", refuse)
    monkeypatch.setattr(autobahn_protocol, "hlval", refuse)
    ours = _open(immediate_write.FrameSendProtocol)
    ours.sendMessage(frame, False)
    assert ours.transport.chunks == theirs.transport.chunks
    assert ours.trafficStats.outgoingOctetsWireLevel == len(b"".join(theirs.transport.chunks))
    # A frame behind queued bytes is queued behind them by Autobahn, not written ahead of them.
    written = len(ours.transport.chunks)
    ours.send_queue.append((b"queued", False))
    monkeypatch.setattr(ours, "_trigger", lambda: None)
    ours.sendMessage(frame, False)
    assert len(ours.transport.chunks) == written
    assert [data for data, _ in ours.send_queue][0] == b"queued"
    assert b"".join(data for data, _ in list(ours.send_queue)[1:]) == theirs.transport.chunks[0]


def _masked(payload: bytes) -> bytes:
    """A client's text frame (clients mask theirs)."""
    key = b"\x01\x02\x03\x04"
    header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_a_connection_and_its_frames_format_no_debug_line(monkeypatch):
    """An accepted connection's handshake, a frame it receives and one it sends run through
    Autobahn's protocol with its formatting helpers made to raise: nothing formats a debug line
    that is not written."""
    import pprint

    import autobahn.util
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.testing import StringTransport

    immediate_write.defer_debug_formatting()

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("a debug line's arguments were formatted")

    monkeypatch.setattr(autobahn.util, "hl", refuse)
    monkeypatch.setattr(pprint.PrettyPrinter, "pformat", refuse)
    received: list[bytes] = []

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, is_binary: bool) -> None:  # noqa: N802
            received.append(payload)
            self.sendMessage(b'{"type":"ack"}')

    factory = WebSocketServerFactory("ws://127.0.0.1:1")
    factory.protocol = Echo
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b"101 Switching Protocols" in transport.value()
    transport.clear()
    frame = b'{"v":1,"type":"result","assignment":"' + b"a" * 200 + b'"}'
    connection.dataReceived(_masked(frame))
    assert received == [frame]
    assert transport.value() == b'\x81\x0e{"type":"ack"}'


def test_a_debug_line_that_is_written_reads_as_before():
    from autobahn.websocket import protocol as websocket_protocol

    immediate_write.defer_debug_formatting()
    immediate_write.defer_debug_formatting()  # idempotent: the helpers are wrapped once
    deferred = websocket_protocol.hltype
    real = deferred.__wrapped__
    assert not getattr(real, "ccgsc_deferred", False)
    line = "{func}: {value} {config}"
    assert line.format(
        func=deferred(test_a_debug_line_that_is_written_reads_as_before),
        value=websocket_protocol.hlval(42),
        config=websocket_protocol.pformat([("a", 1)]),
    ) == line.format(
        func=real(test_a_debug_line_that_is_written_reads_as_before),
        value=websocket_protocol.hlval.__wrapped__(42),
        config="[('a', 1)]",
    )
    assert str(websocket_protocol.hlval("x")) == websocket_protocol.hlval.__wrapped__("x")
    # The one caller that is not a log line still gets a string.
    timings = websocket_protocol.Timings()
    timings.track("opened")
    assert str(timings).startswith("{'opened':")
