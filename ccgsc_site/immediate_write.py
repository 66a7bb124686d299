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
"""

from __future__ import annotations

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


def install() -> None:
    """Accepted TCP connections are ``ImmediateWriteServer``s from now on (idempotent)."""
    tcp.Port.transport = ImmediateWriteServer
