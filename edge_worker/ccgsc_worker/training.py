"""One FL round on the edge worker: fetch, train, upload (docs/federated-learning.md).

``RoundTrainer.run`` is blocking and runs in a thread, off the event loop: it fetches the global
weights by hash (checked), the worker's public data shard, trains the pinned v2 kernel for E
local epochs (one call per epoch, momentum carried between them), and uploads the update in
chunks with a SHA-256 per chunk, resuming from the server's state after a failure, then
completes. Every step respects the round's deadline. Network errors (a server restarting, an
outage) are retried with a back-off capped at 5 s until the deadline; failed answers end the
upload after five. Errors end the round with a code (the round then counts this worker as a
dropout); nothing is retried past the deadline.

A compressed job's update is encoded before the upload (``compress_body``; top-k keeps its
error-feedback residual per job in this process, committed once the upload is accepted).

Codes: ``uploaded`` (queued for the fold), ``rejected`` (the server refused the update; its
reason in the message), ``late`` (the round closed first), and the errors ``deadline``,
``fetch_failed``, ``hash_mismatch``, ``bad_shard``, ``bad_invite``, ``kernel_failed``,
``non_finite`` and ``upload_failed``; ``no_local_data`` (a private-data job: this worker has none) is a decline,
which the session reports to the server as ``round_declined``. The browser's twin is
``static/worker_frontend/training.js``.
"""

from __future__ import annotations

import array
import hashlib
import math
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ccgsc_worker import abi
from ccgsc_worker.compression import ResidualStore, int8_payload, sign_payload
from ccgsc_worker.dp import clip_update
from ccgsc_worker.kernel import KernelFailed, KernelRejected, KernelRunner
from ccgsc_worker.transfer import Http, RoundError, error_code, retry_delay, upload_update

SHARD_MAGIC = b"CCSD"
SHARD_HEADER = struct.Struct("<4sIII")
METRICS = struct.Struct("<IIdII d")  # the v2 output's metrics header (abi.V2_METRICS_BYTES)
FETCH_ATTEMPTS = 3
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


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
    control: bytes | None = None,
) -> bytes:
    """E local epochs from ``weights`` → the upload body: metrics header, then update f32[d].

    One kernel call per epoch with its own shuffle seed; momentum carries over. With E = 1 the
    body is the kernel's output unchanged; with more, the update is the sum of the epochs' steps
    and the metrics are those of the last epoch (as in the simulator). ``control`` (SCAFFOLD:
    the correction c − cᵢ as f32[d] bytes) is added to every minibatch gradient. When the invite
    asks (``hyperparameters.dp.clip_norm``), the update is clipped to that L2 norm and the header
    carries the clipped norm."""
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
            control=control,
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
    dp = hyperparameters.get("dp")
    if dp:  # a differentially private job: clip the whole local change to C, as the server will
        update, norm, _within = clip_update(update, float(dp["clip_norm"]))
    header = METRICS.pack(
        abi.STATUS_OK, result.samples, result.loss_sum, result.correct, len(start), norm
    )
    return header + update


def scaffold_body(body: bytes, *, control: bytes, hyperparameters: Mapping[str, Any]) -> bytes:
    """SCAFFOLD's upload: the body of ``train_update`` followed by Δc f32[d].

    Option II of Karimireddy et al. 2020: cᵢ⁺ = cᵢ − c − Δy / (K·η) with K the local steps
    (E · ⌈n / B⌉), so Δc = cᵢ⁺ − cᵢ = −c − Δy / (K·η), computed in float64 per coordinate and
    stored as float32. Δc does not depend on cᵢ: only the training correction c − cᵢ does."""
    samples = METRICS.unpack_from(body)[1]
    epochs = int(hyperparameters["epochs"])
    batch = min(int(hyperparameters["batch_size"]), samples)
    steps = epochs * -(-samples // batch)
    scale = 1.0 / (steps * float(hyperparameters["learning_rate"]))
    update = array.array("f")
    update.frombytes(body[METRICS.size :])
    server = array.array("f")
    server.frombytes(control)
    delta = array.array("f", (-c - u * scale for c, u in zip(server, update, strict=True)))
    return body + delta.tobytes()


def compress_body(
    body: bytes, *, compression: Mapping[str, Any], job: str, residuals: ResidualStore
) -> bytes:
    """A compressed job's upload: the metrics header of ``body``, then its update encoded as the
    invite's ``hyperparameters.compression`` says (int8 with its rounding seed, top-k with k over
    update + the job's residual, signSGD). The top-k residual waits in ``residuals`` for the
    upload's outcome (``ResidualStore.commit``)."""
    update = np.frombuffer(body, dtype="<f4", offset=METRICS.size).astype(np.float32)
    scheme = compression.get("scheme")
    if scheme == "int8":
        payload = int8_payload(update, seed=int(compression["seed"]))
    elif scheme == "topk":
        k = int(compression["k"])
        if not 1 <= k <= len(update):
            raise RoundError("bad_invite", f"top-k's k must be 1 to {len(update)}, not {k}")
        payload = residuals.compress(job, update, k=k)
    elif scheme == "signsgd":
        payload = sign_payload(update)
    else:
        raise RoundError("bad_invite", f"unknown compression {scheme!r}")
    return body[: METRICS.size] + payload


def control_correction(control: bytes, client_control: bytes | None) -> bytes:
    """c − cᵢ as f32[d] bytes (cᵢ = zeros when the server holds none for this client)."""
    if client_control is None:
        return control
    server, client = array.array("f"), array.array("f")
    server.frombytes(control)
    client.frombytes(client_control)
    return array.array("f", (c - ci for c, ci in zip(server, client, strict=True))).tobytes()


class RoundTrainer:
    """Carries out ``train`` effects: one blocking ``run`` per invite, in a worker thread."""

    def __init__(
        self,
        http: Http,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_upload_bytes_per_second: int | None = None,
        local_data: str | None = None,
    ) -> None:
        self.http = http
        self.clock = clock
        self.max_upload_bytes_per_second = max_upload_bytes_per_second
        self.local_data = local_data  # a CSV file for analytics jobs on local data
        self.residuals = ResidualStore()  # top-k's error feedback, per job, for this process

    def fetch(
        self, path: str, *, sha256: str | None = None, time_left: Callable[[], float] | None = None
    ) -> bytes:
        """GET ``path``, checked against ``sha256`` when given. Network errors are retried (with
        ``time_left``, until the round's deadline: the server may be restarting)."""
        retries = 0
        while True:
            try:
                answer = self.http.request("GET", path)
            except OSError as exc:
                retries += 1
                out_of_time = time_left() <= 0 if time_left else retries >= FETCH_ATTEMPTS
                if out_of_time:
                    raise RoundError("fetch_failed", f"{path}: {exc}") from exc
                delay = retry_delay(retries)
                time.sleep(min(delay, max(0.0, time_left())) if time_left else delay)
                continue
            if answer.status == 409 and error_code(answer) == "round_closed":
                # A pause or an end closed the round during the fetch: late, not a failure.
                raise RoundError("late", "the round closed before its data arrived")
            if answer.status != 200:
                raise RoundError("fetch_failed", f"{path}: HTTP {answer.status}")
            if sha256 is not None and hashlib.sha256(answer.body).hexdigest() != sha256:
                raise RoundError("hash_mismatch", f"{path} does not match its sha256")
            return answer.body

    def _fetch_vector(
        self, reference: Mapping[str, Any], parameters: int, time_left: Callable[[], float]
    ) -> bytes:
        """A control variate f32[d] by hash (checked, and of the model's length)."""
        data = self.fetch(reference["url"], sha256=reference["sha256"], time_left=time_left)
        if len(data) != 4 * parameters:
            raise RoundError("hash_mismatch", "a control variate does not have the model's length")
        return data

    def run(self, invite: Mapping[str, Any], wasm: bytes, deadline: float) -> tuple[str, str]:
        """Train (or summarise, for analytics) and upload one round → (code, message);
        ``deadline`` is on ``clock``."""
        try:
            body = self.train(invite, wasm, deadline)
            code, message = self.upload(invite, body, deadline)
        except RoundError as exc:
            self.residuals.discard(str(invite.get("job")))
            return exc.code, exc.message
        # Top-k's unsent remainder is kept only once the server has the sent part.
        if code == "uploaded":
            self.residuals.commit(str(invite.get("job")))
        else:
            self.residuals.discard(str(invite.get("job")))
        return code, message

    def train(self, invite: Mapping[str, Any], wasm: bytes, deadline: float) -> bytes:
        """Fetch and train → the upload body (metrics header, update f32[d], and for SCAFFOLD
        Δc f32[d]); an analytics round summarises its rows instead (metrics header, vector
        f32[d]). Raises ``RoundError``. A secure round masks the body before ``upload``."""

        def time_left() -> float:
            return deadline - self.clock()

        if "analytics" in invite:  # summarise rows, no training
            from ccgsc_worker.analytics_round import analytics_body

            return analytics_body(
                self.fetch, invite, wasm, time_left=time_left, local_data=self.local_data
            )
        try:
            model, data = invite["model"], invite["data"]
            if data.get("private") or "url" not in data:
                # A decline reason: the session tells the server (not a dropout).
                raise RoundError("no_local_data", "this worker has no local data for this job")
            weights = self.fetch(model["url"], sha256=model["sha256"], time_left=time_left)
            if len(weights) != 4 * model["parameters"]:
                raise RoundError("hash_mismatch", "weights do not have the model's length")
            x, y, _n, features = decode_shard(self.fetch(data["url"], time_left=time_left))
            if features != model["sizes"][0]:
                raise RoundError("bad_shard", "shard features do not match the model's inputs")
            control = client_control = None
            if "control" in model:  # SCAFFOLD: c, and this partition client's cᵢ when held
                control = self._fetch_vector(model["control"], model["parameters"], time_left)
                if "client_control" in model:
                    client_control = self._fetch_vector(
                        model["client_control"], model["parameters"], time_left
                    )
            runner = KernelRunner(wasm, invite["kernel"]["sha256"])
            body = train_update(
                runner,
                sizes=list(model["sizes"]),
                weights=weights,
                x=x,
                y=y,
                hyperparameters=invite["hyperparameters"],
                seed=int(invite.get("seed", "0")),
                time_left=time_left,
                control=None if control is None else control_correction(control, client_control),
            )
        except (KernelFailed, KernelRejected) as exc:
            raise RoundError("kernel_failed", str(exc)) from exc
        if control is not None:
            body = scaffold_body(body, control=control, hyperparameters=invite["hyperparameters"])
        compression = invite["hyperparameters"].get("compression")
        if compression:
            body = compress_body(
                body, compression=compression, job=str(invite.get("job")), residuals=self.residuals
            )
        return body

    def upload(self, invite: Mapping[str, Any], body: bytes, deadline: float) -> tuple[str, str]:
        """Upload a body in chunks and complete it → (code, message); raises ``RoundError``."""
        return upload_update(
            self.http,
            url=invite["upload"]["url"],
            participation=invite["participation"],
            base_version=invite["model"]["version"] if "model" in invite else 0,  # 0: analytics
            body=body,
            chunk_bytes=invite["upload"]["chunk_bytes"],
            time_left=lambda: deadline - self.clock(),
            max_bytes_per_second=self.max_upload_bytes_per_second,
            clock=self.clock,
        )
