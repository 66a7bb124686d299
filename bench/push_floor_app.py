"""The push floor's server (``bench_push_floor.py``): the least a Daphne can do per push.

A websocket joins one channel-layer group on connect; each group message ``floor.push`` makes
every socket send the same pre-built ~400-byte frame shaped like an ``assign``. No database, no
authentication, no per-socket work but the send: what is left of a push is Daphne, the Redis
channel layer and the sockets. ``/healthz`` answers 200 so the probe can tell the server is up.

Run by the probe as ``daphne --fd N push_floor_app:application`` with ``CCGSC_FLOOR_REDIS_URL``.
"""

from __future__ import annotations

import json
import os

import django
from django.conf import settings

GROUP = "push-floor"

if not settings.configured:
    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                # The site's capacity and expiry (ccgsc_site/settings.py): a process's sockets
                # share one Redis list, so capacity bounds the sockets one Daphne can push to.
                "CONFIG": {
                    "hosts": [os.environ["CCGSC_FLOOR_REDIS_URL"]],
                    "capacity": 1500,
                    "expiry": 30,
                },
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402 - after settings
from channels.routing import ProtocolTypeRouter  # noqa: E402

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


class FloorConsumer(AsyncWebsocketConsumer):
    """Joins the group, then sends the frame on every ``floor.push``."""

    groups = [GROUP]

    async def floor_push(self, event: dict) -> None:
        await self.send(text_data=ASSIGN_FRAME)


async def healthz(scope: dict, receive: object, send: object) -> None:
    """200 for any HTTP request: the server is up."""
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


application = ProtocolTypeRouter({"websocket": FloorConsumer.as_asgi(), "http": healthz})
