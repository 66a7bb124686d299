"""A page and a few directories served on loopback, for driving Chromium (tests and benchmarks).

Each route maps a URL prefix to a directory and serves only the files directly in it (by base
name), so a page can load the worker runtime, built kernels or test inputs, and nothing else.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".html": "text/html; charset=utf-8",
}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, page: bytes, routes: Mapping[str, Path], **kwargs: Any) -> None:
        self.page = page
        self.routes = routes
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        for prefix, directory in self.routes.items():
            if path.startswith(prefix):
                return str(Path(directory) / Path(path[len(prefix) :]).name)
        return "/nonexistent"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.page)))
            self.end_headers()
            self.wfile.write(self.page)
            return
        super().do_GET()

    def guess_type(self, path: Any) -> str:
        return CONTENT_TYPES.get(Path(str(path)).suffix, "application/octet-stream")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return


class StaticSite:
    """``page`` at ``/`` and ``routes`` (URL prefix → directory) on a free loopback port."""

    def __init__(self, page: str | bytes, routes: Mapping[str, Path]) -> None:
        body = page.encode() if isinstance(page, str) else page
        handler = functools.partial(_Handler, page=body, routes=dict(routes))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StaticSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
