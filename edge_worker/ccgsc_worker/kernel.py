"""Wasmtime host for ABI v1, v2 and v3 kernels: validation, hash-pinned loading, bounded execution.

A v1 kernel (federated computing) runs under the v1 limits. A v2 kernel (training) runs under
its kind's limits, or the lower ones its manifest entry declares (``abi.limits_for``): input,
output and linear-memory bytes, the last enforced by the store so memory.grow fails past it.
A v3 kernel (federated analytics) runs under the ``analytics`` kind's limits the same way.

The engine uses signal-based traps (explicit bounds checks would cost the sieve kernels about
60 %). It is created on first use, and wasmtime's signal handlers must be the newest ones in the
process: enabling ``faulthandler`` after the first kernel call turns every trap into a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import wasmtime

from ccgsc_worker import abi

DEFAULT_TIMEOUT_SECONDS = 60.0
VALIDATE_TIMEOUT_SECONDS = 2.0
EPOCH_TICK_SECONDS = 0.01
MODULE_CACHE_SIZE = 32

_FUNC_SIGNATURES: dict[str, tuple[int, int]] = {
    abi.EXPORT_ABI_VERSION: (0, 1),
    abi.EXPORT_INPUT: (1, 1),
    abi.EXPORT_RUN: (1, 1),
    abi.EXPORT_OUTPUT: (0, 1),
}


class KernelRejected(Exception):
    """A module does not satisfy the kernel ABI or the host's limits."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KernelHashMismatch(KernelRejected):
    """A module's sha256 differs from the digest it was expected to have."""


class KernelFailed(Exception):
    """A kernel trapped, timed out, broke the ABI at run time or returned an error code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class KernelTimeout(KernelFailed):
    """A kernel ran past its deadline and was interrupted."""


@dataclass(frozen=True)
class ModuleInfo:
    """What validation learned about an accepted module."""

    sha256: str
    size: int
    initial_pages: int
    maximum_pages: int
    exports: tuple[str, ...]
    abi_version: int = abi.ABI_VERSION


class _EpochTicker:
    """Advances the engine epoch every tick while at least one kernel call is running."""

    def __init__(self, engine: wasmtime.Engine, interval: float) -> None:
        self._engine = engine
        self._interval = interval
        self._active = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _EpochTicker:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="ccgsc-epoch-ticker", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            time.sleep(self._interval)
            self._engine.increment_epoch()


def _make_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    # Only deterministic, widely shipped features: the ABI's target is WebAssembly 2.0 plus
    # fixed-width SIMD, the same set every browser engine runs.
    config.wasm_simd = True
    config.wasm_relaxed_simd = False
    config.wasm_threads = False
    config.shared_memory = False
    config.wasm_memory64 = False
    config.wasm_multi_memory = False
    config.wasm_gc = False
    config.wasm_function_references = False
    config.wasm_exceptions = False
    config.wasm_stack_switching = False
    config.wasm_wide_arithmetic = False
    config.wasm_tail_call = False
    config.wasm_custom_page_sizes = False
    config.wasm_component_model = False
    return wasmtime.Engine(config)


_ENGINE: wasmtime.Engine | None = None
_TICKER: _EpochTicker | None = None
_ENGINE_LOCK = threading.Lock()
_CACHE: OrderedDict[str, tuple[wasmtime.Module, ModuleInfo]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _engine() -> tuple[wasmtime.Engine, _EpochTicker]:
    global _ENGINE, _TICKER
    with _ENGINE_LOCK:
        if _ENGINE is None or _TICKER is None:
            _ENGINE = _make_engine()
            _TICKER = _EpochTicker(_ENGINE, EPOCH_TICK_SECONDS)
        return _ENGINE, _TICKER


def _deadline_ticks(timeout: float) -> int:
    return max(1, math.ceil(timeout / EPOCH_TICK_SECONDS)) + 1


def _check_exports(module: wasmtime.Module) -> tuple[int, int, tuple[str, ...]]:
    exports = {e.name: e.type for e in module.exports}
    memory = exports.get(abi.EXPORT_MEMORY)
    if memory is None:
        raise KernelRejected(f"missing export {abi.EXPORT_MEMORY!r}")
    if not isinstance(memory, wasmtime.MemoryType):
        raise KernelRejected(f"export {abi.EXPORT_MEMORY!r} must be a memory")
    for name, (n_params, n_results) in _FUNC_SIGNATURES.items():
        kind = exports.get(name)
        if kind is None:
            raise KernelRejected(f"missing export {name!r}")
        if not isinstance(kind, wasmtime.FuncType):
            raise KernelRejected(f"export {name!r} must be a function")
        params = [str(t) for t in kind.params]
        results = [str(t) for t in kind.results]
        if params != ["i32"] * n_params or results != ["i32"] * n_results:
            want = f"({', '.join(['i32'] * n_params)}) -> i32"
            got = f"({', '.join(params)}) -> ({', '.join(results)})"
            raise KernelRejected(f"export {name!r} must have type {want}, has {got}")
    if memory.is_64 or memory.is_shared:
        raise KernelRejected("memory must be a plain unshared 32-bit memory")
    initial, maximum = memory.limits.min, memory.limits.max
    if initial > abi.MAX_INITIAL_PAGES:
        raise KernelRejected(
            f"initial memory is {initial} pages, limit is {abi.MAX_INITIAL_PAGES} pages (16 MiB)"
        )
    if maximum is None:
        raise KernelRejected("memory must declare a maximum size")
    if maximum > abi.MAX_MAXIMUM_PAGES_V2:
        raise KernelRejected(
            f"maximum memory is {maximum} pages, limit is {abi.MAX_MAXIMUM_PAGES_V2} pages (512 MiB)"
        )
    return initial, maximum, tuple(sorted(exports))


def _check_version_limits(version: int, maximum: int) -> None:
    if version not in abi.ABI_VERSIONS:
        *first, last = (str(v) for v in abi.ABI_VERSIONS)
        versions = f"{', '.join(first)} and {last}" if first else last
        raise KernelRejected(f"ABI version is {version}, this host speaks {versions}")
    if version == abi.ABI_VERSION and maximum > abi.MAX_MAXIMUM_PAGES:
        raise KernelRejected(
            f"maximum memory is {maximum} pages, limit is {abi.MAX_MAXIMUM_PAGES} pages (64 MiB)"
        )


def _new_store(memory_bytes: int = abi.MAX_MAXIMUM_PAGES * abi.WASM_PAGE_BYTES) -> wasmtime.Store:
    store = wasmtime.Store(_engine()[0])
    store.set_limits(memory_size=memory_bytes, instances=1, memories=1)
    return store


def _compile_and_check(wasm_bytes: bytes, digest: str) -> tuple[wasmtime.Module, ModuleInfo]:
    size = len(wasm_bytes)
    if size > abi.MAX_MODULE_BYTES:
        raise KernelRejected(f"module is {size} bytes, limit is {abi.MAX_MODULE_BYTES} bytes")
    if wasm_bytes[:4] != b"\0asm":
        raise KernelRejected("not a WebAssembly module (bad magic number)")
    if wasm_bytes[4:8] != b"\x01\0\0\0":
        raise KernelRejected("not a core WebAssembly module (unsupported binary version)")
    try:
        module = wasmtime.Module(_engine()[0], wasm_bytes)
    except wasmtime.WasmtimeError as exc:
        raise KernelRejected(f"invalid module: {str(exc).splitlines()[0]}") from exc
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    if imports:
        raise KernelRejected(f"kernels may not import anything; imports {', '.join(imports)}")
    initial, maximum, exports = _check_exports(module)
    store = _new_store()
    store.set_epoch_deadline(_deadline_ticks(VALIDATE_TIMEOUT_SECONDS))
    try:
        with _engine()[1]:
            instance = wasmtime.Instance(store, module, [])
            version = instance.exports(store)[abi.EXPORT_ABI_VERSION](store)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        raise KernelRejected(f"could not query the ABI version: {exc}") from exc
    _check_version_limits(version, maximum)
    info = ModuleInfo(digest, size, initial, maximum, exports, version)
    return module, info


def validate_module(wasm_bytes: bytes, *, kind: str | None = None) -> ModuleInfo:
    """Check a module against the ABI and the host limits; raise KernelRejected if it fails.

    With ``kind`` ("fc" or "train") the module must also speak that kind's ABI version.
    """
    digest = hashlib.sha256(wasm_bytes).hexdigest()
    info = _compile_and_check(wasm_bytes, digest)[1]
    if kind is not None and info.abi_version != abi.KIND_ABI_VERSION[kind]:
        raise KernelRejected(
            f"a {kind} kernel must speak ABI version {abi.KIND_ABI_VERSION[kind]}, "
            f"this module speaks {info.abi_version}"
        )
    return info


def load_module(wasm_bytes: bytes, expected_sha256: str) -> tuple[wasmtime.Module, ModuleInfo]:
    """Verify the digest, then return the validated compiled module, cached per digest."""
    digest = hashlib.sha256(wasm_bytes).hexdigest()
    if not hmac.compare_digest(digest, expected_sha256.strip().lower()):
        raise KernelHashMismatch(f"sha256 mismatch: expected {expected_sha256}, got {digest}")
    with _CACHE_LOCK:
        hit = _CACHE.get(digest)
        if hit is not None:
            _CACHE.move_to_end(digest)
            return hit
    compiled = _compile_and_check(wasm_bytes, digest)
    with _CACHE_LOCK:
        _CACHE[digest] = compiled
        while len(_CACHE) > MODULE_CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled


_ERROR_TEXT = {
    abi.ERR_BAD_INPUT: "bad input",
    abi.ERR_OUTPUT_TOO_LARGE: "output too large",
    abi.ERR_OUT_OF_MEMORY: "out of memory",
}


class KernelRunner:
    """Runs one hash-pinned kernel; not thread-safe, use one runner per thread."""

    def __init__(
        self,
        wasm_bytes: bytes,
        expected_sha256: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        reuse_instance: bool = True,
        limits: abi.KernelLimits | None = None,
    ) -> None:
        """Verify and compile the module; raise KernelRejected if it is not acceptable.

        ``limits`` default to the v1 limits for a v1 module and to the "train" kind's ceiling
        for a v2 one; pass ``abi.limits_for("train", manifest_entry["limits"])`` to apply a
        kernel's own.
        """
        self.module, self.info = load_module(wasm_bytes, expected_sha256)
        kind = abi.VERSION_KIND[self.info.abi_version]
        self.limits = limits or abi.KIND_LIMITS[kind]
        if self.limits.memory_bytes > abi.KIND_LIMITS[kind].memory_bytes:
            raise KernelRejected(
                f"memory limit {self.limits.memory_bytes} exceeds the {kind} kind's"
            )
        self.timeout = timeout
        self.reuse_instance = reuse_instance
        self._store: wasmtime.Store | None = None
        self._exports: wasmtime.InstanceExports | None = None

    @property
    def sha256(self) -> str:
        """The module's hex sha256 digest."""
        return self.info.sha256

    def _instance(self) -> tuple[wasmtime.Store, wasmtime.InstanceExports]:
        if self._store is None or self._exports is None or not self.reuse_instance:
            store = _new_store(self.limits.memory_bytes)
            store.set_epoch_deadline(_deadline_ticks(VALIDATE_TIMEOUT_SECONDS))
            with _engine()[1]:
                instance = wasmtime.Instance(store, self.module, [])
            self._store, self._exports = store, instance.exports(store)
        return self._store, self._exports

    def run(self, input_bytes: bytes, *, timeout: float | None = None) -> bytes:
        """Run the kernel on one task's input bytes and return its output bytes."""
        if len(input_bytes) > self.limits.input_bytes:
            raise KernelFailed(
                f"input of {len(input_bytes)} bytes exceeds {self.limits.input_bytes}"
            )
        limit = self.timeout if timeout is None else timeout
        try:
            return self._run(input_bytes, limit)
        except BaseException:
            self._store = self._exports = None  # the instance state may be inconsistent now
            raise
        finally:
            if not self.reuse_instance:
                self._store = self._exports = None

    def _run(self, data: bytes, limit: float) -> bytes:
        try:
            store, exports = self._instance()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise KernelFailed(f"instantiation failed: {exc}") from exc
        memory = exports[abi.EXPORT_MEMORY]
        store.set_epoch_deadline(_deadline_ticks(limit))
        try:
            with _engine()[1]:
                ptr = exports[abi.EXPORT_INPUT](store, len(data))
                if ptr <= 0:
                    raise KernelFailed(f"kernel has no room for {len(data)} input bytes")
                if ptr + len(data) > memory.data_len(store):
                    raise KernelFailed("input buffer lies outside memory")
                memory.write(store, data, ptr)
                rc = exports[abi.EXPORT_RUN](store, len(data))
                if rc < 0:
                    text = _ERROR_TEXT.get(rc, "kernel-defined error")
                    raise KernelFailed(f"kernel returned error {rc} ({text})", code=rc)
                if rc > self.limits.output_bytes:
                    raise KernelFailed(f"output of {rc} bytes exceeds {self.limits.output_bytes}")
                out = exports[abi.EXPORT_OUTPUT](store) if rc else 0
        except wasmtime.Trap as exc:
            if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
                raise KernelTimeout(f"kernel exceeded its {limit:g} s time limit") from exc
            raise KernelFailed(f"kernel trapped: {exc.message}") from exc
        except wasmtime.WasmtimeError as exc:
            raise KernelFailed(f"kernel failed: {exc}") from exc
        if rc == 0:
            return b""
        if out <= 0 or out + rc > memory.data_len(store):
            raise KernelFailed("output buffer lies outside memory")
        return bytes(memory.read(store, out, out + rc))

    def train(self, input_bytes: bytes, *, timeout: float | None = None) -> abi.TrainResult:
        """Run one v2 call (one epoch or one evaluation pass) and decode its output.

        A non-finite result is a decoded status (``result.ok`` is False), not an exception:
        the caller decides whether a diverged client is an error or a dropout.
        """
        if self.info.abi_version != abi.ABI_VERSION_V2:
            raise KernelFailed("train() needs an ABI v2 kernel, this one speaks v1")
        flags = int.from_bytes(input_bytes[8:12], "little") if len(input_bytes) >= 12 else 0
        output = self.run(input_bytes, timeout=timeout)
        try:
            return abi.decode_train_output(
                output, expect_momentum=bool(flags & abi.FLAG_MOMENTUM_OUT)
            )
        except abi.OutputError as exc:
            raise KernelFailed(f"malformed v2 output: {exc}") from exc
