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
a handshake) to Autobahn. And :func:`defer_debug_formatting` makes Autobahn's other debug lines
(a connection's set-up, each frame received) format their arguments only if they are written.
"""

from __future__ import annotations

import functools
import pprint
from collections.abc import Callable
from typing import Any

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


class _Formatted:
    """An argument of one of Autobahn's debug log lines, formatted only if the line is written
    (``str``, ``repr`` and ``format`` give what the helper would have returned)."""

    __slots__ = ("args", "helper", "kwargs")

    def __init__(self, helper: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.helper, self.args, self.kwargs = helper, args, kwargs

    def _value(self) -> Any:
        return self.helper(*self.args, **self.kwargs)

    def __str__(self) -> str:
        return str(self._value())

    def __repr__(self) -> str:
        return repr(self._value())

    def __format__(self, spec: str) -> str:
        return format(self._value(), spec)


# Autobahn's helpers that format a debug log line's arguments: a qualified name and values
# through ``click.style``, and a pretty-printed configuration.
_LOG_HELPERS = ("hltype", "hlval", "pformat")


def _deferred(helper: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(helper)
    def deferred(*args: Any, **kwargs: Any) -> _Formatted:
        return _Formatted(helper, args, kwargs)

    deferred.ccgsc_deferred = True  # type: ignore[attr-defined]
    return deferred


def defer_debug_formatting() -> None:
    """Autobahn's WebSocket modules format their debug log lines' arguments only when a line is
    written (idempotent).

    Autobahn calls ``hltype``, ``hlval`` and ``pformat`` for the arguments of ``log.debug`` lines
    before the call, and txaio drops the line (debug logging is never on in Daphne). Every
    accepted connection pretty-printed its 29 configuration values that way (440 µs, more than
    the rest of the connection's set-up) and every frame received formatted three more values.
    In the two modules whose lines a Daphne connection runs, those names now build a
    :class:`_Formatted` instead: nothing is formatted unless the line is written, and then it
    reads as before. Nothing else in those modules calls them, except ``Timings.__str__``,
    which keeps the real ``pformat``."""
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol as websocket_protocol

    for module in (websocket_protocol, twisted_websocket):
        for name in _LOG_HELPERS:
            helper = getattr(module, name, None)
            if helper is not None and not getattr(helper, "ccgsc_deferred", False):
                setattr(module, name, _deferred(helper))
    websocket_protocol.Timings.__str__ = _timings_str  # type: ignore[method-assign]


def _timings_str(self: Any) -> str:
    return pprint.pformat(self._timings)


def install() -> None:
    """Accepted TCP connections are ``ImmediateWriteServer``s from now on, Daphne's WebSocket
    connections ``FrameSendProtocol``s, and Autobahn's debug lines are formatted only when
    written (idempotent)."""
    tcp.Port.transport = ImmediateWriteServer
    ws_protocol.WebSocketFactory.protocol = FrameSendProtocol
    defer_debug_formatting()
