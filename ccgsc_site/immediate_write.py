"""Daphne's TCP connections send what they are given at once, instead of on the next loop turn.

Twisted's ``FileDescriptor.write`` never sends: it buffers the bytes and registers the socket
for writing, and on the next turn of the event loop ``doWrite`` sends them and unregisters it.
On the asyncio reactor Daphne runs, that is two ``epoll_ctl`` system calls and a loop callback
around every ``send``, for every frame. A job start hands a Daphne hundreds of ``assign`` frames
in one burst, each to a different socket, so the wrapping cost more than the sends themselves
(``docs/benchmarks.md``, "Frames sent when written").

:class:`ImmediateWriteServer` is Twisted's server connection with one change: when nothing is
waiting in its buffer, ``write`` sends right away, and only what the kernel did not take (a full
socket buffer, a peer that reads slowly) is buffered and sent by Twisted as before. Bytes leave
in the order they were written, since nothing is sent ahead of buffered bytes. Everything else
falls back to Twisted's own path: a TLS connection (its bytes go through the TLS layer first), a
connection that is lost or half-closed, and a send that fails (Twisted's ``doWrite`` meets the
same error and closes the connection as it always did).

:func:`install` makes it the connection class of every TCP listening port opened afterwards
(``tcp.Port.transport``, the attribute Twisted reads for the class of each accepted
connection); ``ccgsc_site.asgi`` calls it when Daphne imports the application, before Daphne
listens.

It also makes :class:`FrameSendProtocol` Daphne's WebSocket protocol. Autobahn's ``sendData``
writes every frame with a debug log call whose arguments it formats first, whether debug
logging is on or not (a qualified name and two values through ``click.style``): 3.6 of the
5.1 µs ``sendMessage`` takes per frame. The subclass writes an open connection's frame without
it, and leaves every other case (a chopped or synchronous send, a queue behind it, octet logging,
a handshake) to Autobahn.
"""

from __future__ import annotations

from daphne import ws_protocol
from twisted.internet import tcp


class ImmediateWriteServer(tcp.Server):
    """A server-side TCP connection whose writes go to the socket at once when nothing is
    buffered."""

    def write(self, data: bytes) -> None:
        if (
            not self.TLS
            and self.connected
            and not self._writeDisconnected
            and not self.dataBuffer
            and not self._tempDataBuffer
            and type(data) is bytes
            and data
        ):
            sent = self.writeSomeData(data)
            # An int is how much the kernel took; anything else is a lost connection, which
            # Twisted's own write path reports (its doWrite meets the same error).
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
        super().write(data)


class FrameSendProtocol(ws_protocol.WebSocketProtocol):
    """Daphne's WebSocket protocol, writing an open connection's frames without Autobahn's
    per-frame debug formatting (the same bytes, the same traffic counter)."""

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:  # noqa: N802 - Autobahn's name
        if (
            not chopsize
            and not sync
            and not self.send_queue
            and not self.logOctets
            and self.state == self.STATE_OPEN
        ):
            self.transport.write(data)
            self.trafficStats.outgoingOctetsWireLevel += len(data)
            return
        super().sendData(data, sync, chopsize)


def install() -> None:
    """Accepted TCP connections are ``ImmediateWriteServer``s from now on, and Daphne's
    WebSocket connections ``FrameSendProtocol``s (idempotent)."""
    tcp.Port.transport = ImmediateWriteServer
    ws_protocol.WebSocketFactory.protocol = FrameSendProtocol
