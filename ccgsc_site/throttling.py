"""Who is asking (the client address behind trusted proxies) and how often they have failed.

Failed sign-ins and failed API-key authentications are counted in the cache (Redis in
production, so every Daphne process shares the counts) in fixed windows. Counters are keyed by
the client address and, for sign-ins, by a hash of the submitted e-mail whether or not such an
account exists, so a refusal never tells an attacker which accounts are real.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache


def client_ip(request: Any) -> str:
    """The address of the client: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies (``TRUSTED_PROXIES``), ``X-Forwarded-For`` is read from the right and
    the first address that is not itself a trusted proxy is the client; anything to its left
    was written by the client and proves nothing. Without trusted proxies the header is ignored.
    """
    meta = getattr(request, "META", request)
    peer = meta.get("REMOTE_ADDR", "") or ""
    if not is_trusted_proxy(peer):
        return peer
    forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    candidate = peer
    for address in reversed([part for part in forwarded if part]):
        if not _valid(address):
            break
        candidate = address
        if not is_trusted_proxy(address):
            break
    return candidate


def client_ip_from_scope(scope: dict[str, Any]) -> str:
    """``client_ip`` for an ASGI scope, so WebSocket consumers limit by the same address."""
    peer = (scope.get("client") or ("",))[0] or ""
    forwarded = ", ".join(
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name.lower() == b"x-forwarded-for"
    )
    return client_ip({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded})


def _valid(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def is_trusted_proxy(address: str) -> bool:
    """Whether ``address`` is one of the deployment's proxies (``TRUSTED_PROXIES``)."""
    networks = settings.TRUSTED_PROXIES
    if not networks or not _valid(address):
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class FailureLimit:
    """At most ``limit`` failures per ``window_seconds`` for one identity (e.g. an address)."""

    name: str

    @property
    def _config(self) -> tuple[int, int]:
        limit, window_seconds = settings.FAILURE_LIMITS[self.name]
        return int(limit), int(window_seconds)

    def _key(self, ident: str, now: float) -> tuple[str, int]:
        _, window_seconds = self._config
        window = int(now // window_seconds)
        return f"failures:{self.name}:{_digest(ident)}:{window}", window

    def retry_after(self, ident: str) -> int | None:
        """Seconds until ``ident`` may try again, or None when it is not blocked."""
        limit, window_seconds = self._config
        now = time.time()
        key, window = self._key(ident, now)
        if (cache.get(key) or 0) < limit:
            return None
        return max(1, int((window + 1) * window_seconds - now) + 1)

    def record(self, ident: str) -> int:
        """Count one failure; returns the failures in the current window."""
        _, window_seconds = self._config
        key, _ = self._key(ident, time.time())
        cache.add(key, 0, timeout=window_seconds + 5)
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window_seconds + 5)
            return 1

    def reset(self, ident: str) -> None:
        """Forget ``ident``'s failures in the current window (after a success)."""
        key, _ = self._key(ident, time.time())
        cache.delete(key)


LOGIN_PER_ACCOUNT = FailureLimit("login_account")
LOGIN_PER_IP = FailureLimit("login_ip")
API_KEY_PER_IP = FailureLimit("api_key_ip")
