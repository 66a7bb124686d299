"""The network side of an edge worker's FL round (docs/federated-learning.md): same-origin HTTP
with the worker token, and the chunked upload of an update, resumable from the server's state,
paced to a rate limit, retrying network errors until the round's deadline."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

UPLOAD_ATTEMPTS = 5  # failed answers; network errors are retried until the deadline
RETRY_MAX_SECONDS = 5.0
REQUEST_TIMEOUT_S = 30.0


class RoundError(Exception):
    """A round cannot go on: ``code`` is one of the module's codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON ({} when it is not)."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            return {}


class Http:
    """Same-origin HTTP for a worker: every request carries ``Authorization: Worker <token>``.

    Paths are resolved against the server URL; anything that would leave its origin is refused
    (the token goes with every request)."""

    def __init__(self, server_url: str, token: str, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.server_url = server_url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        self._origin = urllib.parse.urlsplit(self.server_url)[:2]

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request; HTTP errors are answers, network errors raise ``OSError``."""
        url = urllib.parse.urljoin(self.server_url, path)
        if urllib.parse.urlsplit(url)[:2] != self._origin:
            raise RoundError("fetch_failed", f"refusing to leave the server's origin: {url!r}")
        request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - same origin
        request.add_header("Authorization", f"Worker {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return Response(response.status, response.read(), _lower(response.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read(), _lower(exc.headers))


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in (headers or {}).items()}


def upload_update(
    http: Http,
    *,
    url: str,
    participation: int,
    base_version: int,
    body: bytes,
    chunk_bytes: int,
    time_left: Callable[[], float],
    sleep: Callable[[float], None] = time.sleep,
    max_bytes_per_second: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, str]:
    """Upload ``body`` in chunks and complete it → (code, message).

    Creating again with the same values resumes; after any failed chunk the server's state says
    which chunks are still missing; a chunk refused for its checksum is sent again. With
    ``max_bytes_per_second`` the chunks are paced so the upload averages at most that rate (a
    contributor on a slow or metered uplink keeps it usable for everything else)."""
    base = url.rstrip("/") + "/"
    pace = _Pacer(max_bytes_per_second, clock=clock, sleep=sleep, time_left=time_left)
    digest = hashlib.sha256(body).hexdigest()
    create = json.dumps(
        {
            "participation": participation,
            "total_bytes": len(body),
            "chunk_size": chunk_bytes,
            "sha256": digest,
            "base_version": base_version,
        }
    ).encode()
    json_type = {"Content-Type": "application/json"}
    failures = 0  # answers that went wrong: server errors, refused chunks
    retries = 0  # every try after the first, network failures included
    while failures < UPLOAD_ATTEMPTS:
        if time_left() <= 0:
            raise RoundError("deadline", "deadline passed while uploading")
        if retries:
            sleep(min(retry_delay(retries), max(0.0, time_left())))
        retries += 1
        try:
            answer = http.request("POST", base, body=create, headers=json_type)
            if answer.status == 409 and error_code(answer) == "round_closed":
                return "late", "the round closed before the update arrived"
            if answer.status not in (200, 201):
                if answer.status >= 500:
                    failures += 1
                    continue
                return "rejected", f"{error_code(answer)}: {_message(answer)}"
            state = answer.json()
            upload = f"{base}{state['upload']}"
            missing = [i for i in range(state["chunk_count"]) if i not in state["chunks_received"]]
            for index in missing:
                if time_left() <= 0:
                    raise RoundError("deadline", "deadline passed while uploading")
                chunk = body[index * chunk_bytes : (index + 1) * chunk_bytes]
                if not _put_chunk(http, upload, index, chunk):
                    failures += 1
                    break
                pace.sent(len(chunk))
            else:
                done = http.request("POST", f"{upload}/complete")
                if done.status == 202:
                    return "uploaded", ""
                if done.status == 422:
                    rejection = done.json().get("rejection") or {}
                    return "rejected", f"{rejection.get('code')}: {rejection.get('message')}"
                if done.status == 409 and error_code(done) == "round_closed":
                    return "late", "the round closed before the update was complete"
                if done.status < 500 and error_code(done) != "incomplete":
                    return "rejected", f"{error_code(done)}: {_message(done)}"
                failures += 1
        except OSError:
            # The server is unreachable (restarting, a network outage): ask for the state again
            # once it answers and send only what is missing, for as long as the round lasts.
            continue
    raise RoundError("upload_failed", f"upload failed {UPLOAD_ATTEMPTS} times")


def retry_delay(retry: int) -> float:
    """Seconds to wait before retry ``retry`` (1, 2, ...): 0.4 s doubling, at most 5 s."""
    return min(RETRY_MAX_SECONDS, 0.2 * 2**retry)


class _Pacer:
    """Keeps an upload's average rate at or under a limit by sleeping after each chunk sent."""

    def __init__(
        self,
        max_bytes_per_second: int | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        time_left: Callable[[], float],
    ) -> None:
        if max_bytes_per_second is not None and max_bytes_per_second <= 0:
            raise ValueError("max_bytes_per_second must be positive")
        self.rate = max_bytes_per_second
        self.clock = clock
        self.sleep = sleep
        self.time_left = time_left
        self.started = clock()
        self.total = 0

    def sent(self, size: int) -> None:
        """``size`` more bytes went out: wait until the average is back under the limit (never
        past the deadline)."""
        if self.rate is None:
            return
        self.total += size
        wait = self.total / self.rate - (self.clock() - self.started)
        if wait > 0:
            self.sleep(min(wait, max(0.0, self.time_left())))


def _put_chunk(http: Http, upload: str, index: int, chunk: bytes) -> bool:
    """PUT one chunk (twice if its checksum was refused in transit); False to resume."""
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Chunk-SHA256": hashlib.sha256(chunk).hexdigest(),
    }
    for _ in range(2):
        answer = http.request("PUT", f"{upload}/chunks/{index}", body=chunk, headers=headers)
        if answer.status == 200:
            return True
        if error_code(answer) != "checksum_mismatch":
            return False
    return False


def error_code(answer: Response) -> str:
    """The `error.code` of a JSON error answer (its HTTP status when it has none)."""
    return str((answer.json().get("error") or {}).get("code", answer.status))


def _message(answer: Response) -> str:
    return str((answer.json().get("error") or {}).get("message", ""))[:300]
