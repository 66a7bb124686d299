"""The push floor's server (``bench_push_floor.py``): the least a Daphne can do per push.

Each group message ``floor.push`` on the Redis channel layer makes every socket send the same
pre-built ~400-byte frame shaped like an ``assign``. No database, no authentication, no per-socket
work but the send: what is left of a push is Daphne, the channel layer and the sockets.
``CCGSC_FLOOR_FANOUT`` chooses who is in the group:
- ``process`` (default): one channel per Daphne process, which on the message sends the frame to
  every socket of the process, as the site's idle registry is woken once per process;
- ``socket``: every socket's own channel, one channel-layer message per socket (each process
  then reads its sockets' messages from Redis one at a time).
``CCGSC_FLOOR_WRITE`` chooses how the connections send: ``immediate`` (default, as the site's
Daphnes: ``ccgsc_site.immediate_write``) or ``twisted`` (Twisted's own, on the loop's next turn).
``/healthz`` answers 200 for any HTTP request. With ``CCGSC_FLOOR_TRACE_DIR`` (process fan-out),
each process writes ``floor-<pid>.json``: per push, when the message was read and when the last
socket's frame was handed to Daphne (wall clock), and to how many sockets.

Run by the probe as ``daphne --fd N push_floor_app:application`` with ``CCGSC_FLOOR_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import django
from django.conf import settings

GROUP = "push-floor"
FANOUT = os.environ.get("CCGSC_FLOOR_FANOUT", "process")

if not settings.configured:
    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                # The site's layer and configuration (ccgsc_site/settings.py): a blocking pool,
                # since a thousand sockets joining at once exceed redis-py's default one.
                "BACKEND": "ccgsc_site.redis_pools.BlockingRedisChannelLayer",
                "CONFIG": {
                    "hosts": [
                        {
                            "address": os.environ["CCGSC_FLOOR_REDIS_URL"],
                            "socket_timeout": 30,
                            "socket_connect_timeout": 5,
                            "max_connections": 50,
                            "timeout": 10,
                        }
                    ],
                    "capacity": 1500,
                    "expiry": 30,
                },
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402 - after settings
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402

from ccgsc_site import immediate_write  # noqa: E402

if os.environ.get("CCGSC_FLOOR_WRITE", "immediate") == "immediate":
    immediate_write.install()

ASSIGN_FRAME = json.dumps(
    {
        "v": 1,
        "type": "assign",
        "assignment": "8c1e4a7e-3f0b-4d52-9a51-2b7d3c9e6f10",
        "job": "0b9f6c2d-5e7a-4c1b-8d3e-6f2a1b4c5d6e",
        "task": 123456,
        "kernel": {
            "name": "montecarlo_pi",
            "version": "1.0.0",
            "sha256": "9f2c" * 16,
            "url": "/kernels/" + "9f2c" * 16 + ".wasm",
        },
        "input": {"lo": "1234560", "hi": "1234570", "seed": "42", "params": []},
        "lease_ms": 60000,
        "work_units": 10,
    },
    separators=(",", ":"),
)


SOCKETS: set[FloorConsumer] = set()  # this process's open sockets
_listener: list[asyncio.Task] = []


async def _listen() -> None:
    """The process's one member of the group: each message sends the frame to every socket."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(GROUP, channel)
    trace_dir = os.environ.get("CCGSC_FLOOR_TRACE_DIR")
    pushes: list[tuple[float, float, int]] = []
    while True:
        await layer.receive(channel)
        read_at = time.time()
        sockets = list(SOCKETS)
        for socket in sockets:
            with contextlib.suppress(Exception):  # a socket closing meanwhile
                await socket.send(text_data=ASSIGN_FRAME)
        pushes.append((read_at, time.time(), len(sockets)))
        if trace_dir:
            path = Path(trace_dir) / f"floor-{os.getpid()}.json"
            path.write_text(json.dumps({"pid": os.getpid(), "pushes": pushes}))


class FloorConsumer(AsyncWebsocketConsumer):
    """Joins the fan-out on connect, then sends the frame on every push."""

    async def connect(self) -> None:
        if FANOUT == "socket":
            await self.channel_layer.group_add(GROUP, self.channel_name)
        else:
            if not _listener:
                _listener.append(asyncio.create_task(_listen()))
            SOCKETS.add(self)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        SOCKETS.discard(self)
        if FANOUT == "socket":
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def floor_push(self, event: dict) -> None:
        await self.send(text_data=ASSIGN_FRAME)


async def healthz(scope: dict, receive: object, send: object) -> None:
    """200 for any HTTP request: the server is up."""
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


application = ProtocolTypeRouter({"websocket": FloorConsumer.as_asgi(), "http": healthz})
