"""One FL round on the edge worker: fetch, train, upload (docs/federated-learning.md).

``RoundTrainer.run`` is blocking and runs in a thread, off the event loop: it fetches the global
weights by hash (checked), the worker's public data shard, trains the pinned v2 kernel for E
local epochs (one call per epoch, momentum carried between them), and uploads the update in
chunks with a SHA-256 per chunk, resuming from the server's state after a failure, then
completes. Every step respects the round's deadline. Errors end the round with a code (the
round then counts this worker as a dropout); nothing is retried past the deadline.

Codes: ``uploaded`` (queued for the fold), ``rejected`` (the server refused the update; its
reason in the message), ``late`` (the round closed first), and the errors ``deadline``,
``fetch_failed``, ``hash_mismatch``, ``bad_shard``, ``kernel_failed``, ``non_finite`` and
``upload_failed``.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ccgsc_worker import abi
from ccgsc_worker.kernel import KernelFailed, KernelRejected, KernelRunner

SHARD_MAGIC = b"CCSD"
SHARD_HEADER = struct.Struct("<4sIII")
METRICS = struct.Struct("<IIdII d")  # the v2 output's metrics header (abi.V2_METRICS_BYTES)
FETCH_ATTEMPTS = 3
UPLOAD_ATTEMPTS = 5
REQUEST_TIMEOUT_S = 30.0
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


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


def derive_seed(seed: int, *parts: int) -> int:
    """A u64 sub-seed by SplitMix64 steps (the same as the platform's simulator)."""
    state = seed & _U64
    for part in parts:
        state = (state + _GOLDEN + (part & _U64)) & _U64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
        state = z ^ (z >> 31)
    return state


def decode_shard(body: bytes) -> tuple[memoryview, array.array, int, int]:
    """A shard body → X (f32 [n·f] view), Y (i32 [n]), n and f (docs: the shard format)."""
    if len(body) < SHARD_HEADER.size:
        raise RoundError("bad_shard", "shard shorter than its header")
    magic, n, features, _classes = SHARD_HEADER.unpack_from(body)
    x_bytes = 4 * n * features
    if magic != SHARD_MAGIC or len(body) != SHARD_HEADER.size + x_bytes + 4 * n or n == 0:
        raise RoundError("bad_shard", "not a shard body, or an empty one")
    x = memoryview(body)[SHARD_HEADER.size : SHARD_HEADER.size + x_bytes].cast("f")
    y = array.array("i")
    y.frombytes(body[SHARD_HEADER.size + x_bytes :])
    return x, y, n, features


def train_update(
    runner: KernelRunner,
    *,
    sizes: list[int],
    weights: bytes,
    x: memoryview,
    y: array.array,
    hyperparameters: Mapping[str, Any],
    seed: int,
    time_left: Callable[[], float],
) -> bytes:
    """E local epochs from ``weights`` → the upload body: metrics header, then update f32[d].

    One kernel call per epoch with its own shuffle seed; momentum carries over. With E = 1 the
    body is the kernel's output unchanged; with more, the update is the sum of the epochs' steps
    and the metrics are those of the last epoch (as in the simulator)."""
    epochs = int(hyperparameters["epochs"])
    momentum = float(hyperparameters["momentum"])
    n = len(y)
    batch = min(int(hyperparameters["batch_size"]), n)
    carry = momentum > 0.0 and epochs > 1
    start = array.array("f")
    start.frombytes(weights)
    current = array.array("f", start)
    buffer: bytes | None = None
    result: abi.TrainResult | None = None
    for epoch in range(epochs):
        remaining = time_left()
        if remaining <= 0:
            raise RoundError("deadline", f"deadline passed before epoch {epoch + 1}")
        data = abi.encode_train_input(
            op="train",
            sizes=sizes,
            weights=current,
            x=x,
            y=y,
            batch_size=batch,
            seed=derive_seed(seed, epoch),
            learning_rate=float(hyperparameters["learning_rate"]),
            momentum=momentum,
            prox_mu=float(hyperparameters["proximal_mu"]),
            momentum_buffer=buffer,
            return_momentum=carry,
            n_params=len(start),
        )
        try:
            result = runner.train(data, timeout=remaining)
        except KernelFailed as exc:
            raise RoundError("kernel_failed", str(exc)) from exc
        if not result.ok or result.update is None:
            raise RoundError("non_finite", abi.STATUS_TEXT.get(result.status, "bad status"))
        if epochs == 1:
            break
        step = array.array("f")
        step.frombytes(result.update)
        current = array.array("f", (a + b for a, b in zip(current, step, strict=True)))
        buffer = result.momentum
    if result is None or result.update is None:
        raise RoundError("kernel_failed", "no epoch ran")
    if epochs == 1:
        update, norm = result.update, result.update_l2
    else:
        delta = array.array("f", (a - b for a, b in zip(current, start, strict=True)))
        update, norm = delta.tobytes(), math.sqrt(math.fsum(v * v for v in delta))
    header = METRICS.pack(
        abi.STATUS_OK, result.samples, result.loss_sum, result.correct, len(start), norm
    )
    return header + update


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
) -> tuple[str, str]:
    """Upload ``body`` in chunks and complete it → (code, message).

    Creating again with the same values resumes; after any failed chunk the server's state says
    which chunks are still missing; a chunk refused for its checksum is sent again."""
    base = url.rstrip("/") + "/"
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
    for attempt in range(UPLOAD_ATTEMPTS):
        if time_left() <= 0:
            raise RoundError("deadline", "deadline passed while uploading")
        if attempt:
            sleep(min(0.2 * 2**attempt, max(0.0, time_left())))
        try:
            answer = http.request("POST", base, body=create, headers=json_type)
            if answer.status == 409 and _code(answer) == "round_closed":
                return "late", "the round closed before the update arrived"
            if answer.status not in (200, 201):
                if answer.status >= 500:
                    continue
                return "rejected", f"{_code(answer)}: {_message(answer)}"
            state = answer.json()
            upload = f"{base}{state['upload']}"
            missing = [i for i in range(state["chunk_count"]) if i not in state["chunks_received"]]
            for index in missing:
                if time_left() <= 0:
                    raise RoundError("deadline", "deadline passed while uploading")
                chunk = body[index * chunk_bytes : (index + 1) * chunk_bytes]
                if not _put_chunk(http, upload, index, chunk):
                    break
            else:
                done = http.request("POST", f"{upload}/complete")
                if done.status == 202:
                    return "uploaded", ""
                if done.status == 422:
                    rejection = done.json().get("rejection") or {}
                    return "rejected", f"{rejection.get('code')}: {rejection.get('message')}"
                if done.status == 409 and _code(done) == "round_closed":
                    return "late", "the round closed before the update was complete"
                if done.status < 500 and _code(done) != "incomplete":
                    return "rejected", f"{_code(done)}: {_message(done)}"
        except OSError:
            continue  # the connection failed: ask for the state again and send what is missing
    raise RoundError("upload_failed", f"upload did not complete in {UPLOAD_ATTEMPTS} attempts")


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
        if _code(answer) != "checksum_mismatch":
            return False
    return False


def _code(answer: Response) -> str:
    return str((answer.json().get("error") or {}).get("code", answer.status))


def _message(answer: Response) -> str:
    return str((answer.json().get("error") or {}).get("message", ""))[:300]


class RoundTrainer:
    """Carries out ``train`` effects: one blocking ``run`` per invite, in a worker thread."""

    def __init__(self, http: Http, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.clock = clock

    def fetch(self, path: str, *, sha256: str | None = None) -> bytes:
        """GET ``path`` (retrying network errors), checked against ``sha256`` when given."""
        for attempt in range(FETCH_ATTEMPTS):
            try:
                answer = self.http.request("GET", path)
            except OSError as exc:
                if attempt + 1 == FETCH_ATTEMPTS:
                    raise RoundError("fetch_failed", f"{path}: {exc}") from exc
                time.sleep(0.2 * 2**attempt)
                continue
            if answer.status != 200:
                raise RoundError("fetch_failed", f"{path}: HTTP {answer.status}")
            if sha256 is not None and hashlib.sha256(answer.body).hexdigest() != sha256:
                raise RoundError("hash_mismatch", f"{path} does not match its sha256")
            return answer.body
        raise AssertionError("unreachable")

    def run(self, invite: Mapping[str, Any], wasm: bytes, deadline: float) -> tuple[str, str]:
        """Train and upload one round → (code, message); ``deadline`` is on ``clock``."""
        try:
            body = self.train(invite, wasm, deadline)
            return self.upload(invite, body, deadline)
        except RoundError as exc:
            return exc.code, exc.message

    def train(self, invite: Mapping[str, Any], wasm: bytes, deadline: float) -> bytes:
        """Fetch and train → the upload body (metrics header, update f32[d]); raises
        ``RoundError``. A secure round masks the update before ``upload``."""

        def time_left() -> float:
            return deadline - self.clock()

        try:
            model, data = invite["model"], invite["data"]
            if data.get("private") or "url" not in data:
                raise RoundError("bad_shard", "only public shards served by the site are trained")
            weights = self.fetch(model["url"], sha256=model["sha256"])
            if len(weights) != 4 * model["parameters"]:
                raise RoundError("hash_mismatch", "weights do not have the model's length")
            x, y, _n, features = decode_shard(self.fetch(data["url"]))
            if features != model["sizes"][0]:
                raise RoundError("bad_shard", "shard features do not match the model's inputs")
            runner = KernelRunner(wasm, invite["kernel"]["sha256"])
            return train_update(
                runner,
                sizes=list(model["sizes"]),
                weights=weights,
                x=x,
                y=y,
                hyperparameters=invite["hyperparameters"],
                seed=int(invite.get("seed", "0")),
                time_left=time_left,
            )
        except (KernelFailed, KernelRejected) as exc:
            raise RoundError("kernel_failed", str(exc)) from exc

    def upload(self, invite: Mapping[str, Any], body: bytes, deadline: float) -> tuple[str, str]:
        """Upload a body in chunks and complete it → (code, message); raises ``RoundError``."""
        return upload_update(
            self.http,
            url=invite["upload"]["url"],
            participation=invite["participation"],
            base_version=invite["model"]["version"],
            body=body,
            chunk_bytes=invite["upload"]["chunk_bytes"],
            time_left=lambda: deadline - self.clock(),
        )
