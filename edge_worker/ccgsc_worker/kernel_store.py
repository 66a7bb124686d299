"""Kernel modules fetched by hash over HTTP from the server, verified, cached in memory and on disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from functools import cache
from pathlib import Path
from typing import Any

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelHashMismatch, KernelRejected
from ccgsc_worker.protocol import KernelRef

MEMORY_KERNELS = 32
FETCH_ATTEMPTS = 3
FETCH_TIMEOUT_S = 30.0


class KernelFetchError(Exception):
    """A kernel module could not be downloaded."""


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects only, and never carries the token to another origin."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-HTTP URL", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


@cache
def _shared_opener() -> urllib.request.OpenerDirector:
    """One opener for every store of the process, built on first fetch: building one loads the
    system's CA certificates (tens of milliseconds and about a megabyte), which a load generator
    with thousands of workers in one process paid per worker before it connected."""
    return urllib.request.build_opener(_RedirectHandler)


class KernelStore:
    """Fetches kernel modules over HTTP and caches them by sha256 in memory and on disk.

    Bytes are checked against the assignment's sha256 before they are cached or returned, so
    nothing unverified is ever compiled or kept.
    """

    def __init__(self, server_url: str, token: str, cache_dir: str | Path | None = None) -> None:
        self.server_url = server_url.rstrip("/") + "/"
        self.token = token
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fetches = 0
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def _opener(self) -> urllib.request.OpenerDirector:
        return _shared_opener()

    def url_for(self, ref: KernelRef) -> str:
        """Resolve a kernel URL against the server URL; only http(s) is allowed."""
        url = urllib.parse.urljoin(self.server_url, ref.url)
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise KernelFetchError(f"refusing to fetch a kernel from {url!r}")
        return url

    async def get(self, ref: KernelRef) -> bytes:
        """Return the module bytes for ``ref``, verified against its sha256."""
        hit = self._memory.get(ref.sha256)
        if hit is None:
            lock = self._locks.setdefault(ref.sha256, asyncio.Lock())
            async with lock:
                hit = self._memory.get(ref.sha256)
                if hit is None:
                    hit = await asyncio.to_thread(self._load, ref)
                    self._memory[ref.sha256] = hit
            self._locks.pop(ref.sha256, None)
        self._memory.move_to_end(ref.sha256)
        while len(self._memory) > MEMORY_KERNELS:
            self._memory.popitem(last=False)
        return hit

    def _disk_path(self, sha256: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{sha256}.wasm"

    def _load(self, ref: KernelRef) -> bytes:
        path = self._disk_path(ref.sha256)
        if path is not None and path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == ref.sha256:
                return data
            path.unlink(missing_ok=True)  # a corrupt cache entry; fetch it again
        data = self._fetch_with_retries(self.url_for(ref))
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise KernelHashMismatch(f"sha256 mismatch: expected {ref.sha256}, got {digest}")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            partial.write_bytes(data)
            os.replace(partial, path)
        return data

    def _fetch_with_retries(self, url: str) -> bytes:
        for attempt in range(FETCH_ATTEMPTS):
            try:
                return self._fetch(url)
            except (urllib.error.URLError, OSError) as exc:
                if attempt + 1 == FETCH_ATTEMPTS:
                    raise KernelFetchError(f"could not fetch {url}: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _fetch(self, url: str) -> bytes:
        self.fetches += 1
        request = urllib.request.Request(url)  # noqa: S310 - url_for() allows http(s) only
        if _origin(url) == _origin(self.server_url):
            request.add_unredirected_header("Authorization", f"Worker {self.token}")
        with self._opener.open(request, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(abi.MAX_MODULE_BYTES + 1)
        if len(data) > abi.MAX_MODULE_BYTES:
            raise KernelRejected(f"module is larger than {abi.MAX_MODULE_BYTES} bytes")
        return data
