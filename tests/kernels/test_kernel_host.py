"""The wasmtime host: module validation, hash pinning, traps and timeouts."""

from __future__ import annotations

import hashlib
import time

import pytest
import wasmtime

from ccgsc_worker import abi
from ccgsc_worker.kernel import (
    KernelFailed,
    KernelHashMismatch,
    KernelRejected,
    KernelRunner,
    KernelTimeout,
    validate_module,
)

EXPORTS = {
    "memory": '(memory (export "memory") {memory})',
    "ccgsc_abi_version": '(func (export "ccgsc_abi_version") (result i32) i32.const {version})',
    "ccgsc_input": '(func (export "ccgsc_input") (param i32) (result i32) i32.const 1024)',
    "ccgsc_run": '(func (export "ccgsc_run") (param i32) (result i32) {run})',
    "ccgsc_output": '(func (export "ccgsc_output") (result i32) i32.const 1024)',
}
ECHO = "local.get 0"


def module(
    *,
    omit: str = "",
    extra: str = "",
    memory: str = "1 2",
    version: int = 1,
    run: str = ECHO,
) -> bytes:
    """A tiny kernel in WAT; by default it echoes its input as output."""
    parts = [
        t.format(memory=memory, version=version, run=run) for n, t in EXPORTS.items() if n != omit
    ]
    return wasmtime.wat2wasm("(module " + extra + " ".join(parts) + ")")


def pinned(wasm: bytes, **kwargs: object) -> KernelRunner:
    """A runner for wasm pinned to its own digest."""
    return KernelRunner(wasm, hashlib.sha256(wasm).hexdigest(), **kwargs)


def test_valid_module_accepted() -> None:
    """A minimal conforming module validates and reports its limits."""
    info = validate_module(module())
    assert (info.initial_pages, info.maximum_pages) == (1, 2)
    assert "ccgsc_run" in info.exports


def test_built_kernels_validate(kernels) -> None:
    """Every built kernel passes validation and matches its manifest digest."""
    for name, entry in kernels.entries.items():
        data = kernels.path(name).read_bytes()
        info = validate_module(data)
        assert info.sha256 == entry["sha256"]
        ceiling = abi.MAX_MAXIMUM_PAGES if info.abi_version == 1 else abi.MAX_MAXIMUM_PAGES_V2
        assert info.maximum_pages <= ceiling
        assert info.abi_version == entry.get("abi_version", 1)


@pytest.mark.parametrize(
    ("wasm", "reason"),
    [
        (b"", "bad magic"),
        (b"hello, world, not wasm at all", "bad magic"),
        (b"\0asm\x0d\0\x01\0", "binary version"),
        (b"\0asm\x01\0\0\0\xff\xff", "invalid module"),
        (b"\0asm\x01\0\0\0" + b"\0" * abi.MAX_MODULE_BYTES, "limit is 4194304 bytes"),
    ],
)
def test_rejects_non_modules(wasm: bytes, reason: str) -> None:
    """Garbage, wrong binary versions, malformed and oversized inputs are rejected."""
    with pytest.raises(KernelRejected, match=reason):
        validate_module(wasm)


def test_rejects_imports() -> None:
    """Any import, even an unused one, is refused."""
    wasm = module(extra='(import "env" "log" (func (param i32)))')
    with pytest.raises(KernelRejected, match=r"may not import anything; imports env\.log"):
        validate_module(wasm)


@pytest.mark.parametrize("name", list(EXPORTS))
def test_rejects_missing_exports(name: str) -> None:
    """Each required export is checked."""
    with pytest.raises(KernelRejected, match=f"missing export '{name}'"):
        validate_module(module(omit=name))


def test_rejects_wrong_export_kind() -> None:
    """An export with the right name but the wrong kind is refused."""
    wasm = module(omit="ccgsc_output", extra='(global (export "ccgsc_output") i32 (i32.const 0))')
    with pytest.raises(KernelRejected, match="'ccgsc_output' must be a function"):
        validate_module(wasm)


def test_rejects_wrong_signature() -> None:
    """A function export with the wrong type is refused."""
    wasm = module(
        omit="ccgsc_run",
        extra='(func (export "ccgsc_run") (param i64) (result i32) i32.const 0)',
    )
    with pytest.raises(KernelRejected, match=r"'ccgsc_run' must have type \(i32\) -> i32"):
        validate_module(wasm)


def test_rejects_other_abi_version() -> None:
    """ccgsc_abi_version must return 1, 2 or 3 (analytics), and a kind pins its version."""
    with pytest.raises(KernelRejected, match="ABI version is 4, this host speaks 1, 2 and 3"):
        validate_module(module(version=4))
    assert validate_module(module(version=3), kind="analytics").abi_version == 3
    with pytest.raises(KernelRejected, match="a train kernel must speak ABI version 2"):
        validate_module(module(version=3), kind="train")


def test_abi_versions_and_kinds() -> None:
    """v2 modules are accepted, may declare up to 512 MiB, and a kind pins the version."""
    assert validate_module(module(version=2, memory="1 8192")).abi_version == 2
    with pytest.raises(KernelRejected, match="maximum memory is 8193 pages"):
        validate_module(module(version=2, memory="1 8193"))
    with pytest.raises(KernelRejected, match="maximum memory is 1025 pages"):
        validate_module(module(version=1, memory="1 1025"))
    with pytest.raises(KernelRejected, match="a fc kernel must speak ABI version 1"):
        validate_module(module(version=2), kind="fc")
    with pytest.raises(KernelRejected, match="a train kernel must speak ABI version 2"):
        validate_module(module(version=1), kind="train")
    assert validate_module(module(version=1), kind="fc").abi_version == 1


def test_v2_runner_memory_is_capped_by_its_limits() -> None:
    """A runner's store refuses memory.grow past its memory limit, whatever the module declares."""
    grow = "i32.const 100 memory.grow"  # returns -1 when the store refuses
    runner = pinned(
        module(version=2, memory="1 8192", run=grow),
        limits=abi.limits_for("train", {"memory_bytes": 4 << 20}),
    )
    with pytest.raises(KernelFailed, match="error -1"):
        runner.run(b"x")
    assert pinned(module(version=2, memory="1 8192", run=grow)).run(b"") == b"\0"  # old size 1


@pytest.mark.parametrize(
    ("memory", "reason"),
    [
        ("257 1024", "initial memory is 257 pages"),
        ("1", "must declare a maximum"),
        ("1 1025", "maximum memory is 1025 pages"),
    ],
)
def test_rejects_memory_limits(memory: str, reason: str) -> None:
    """Memory must start at most 16 MiB and declare a maximum of at most 64 MiB."""
    with pytest.raises(KernelRejected, match=reason):
        validate_module(module(memory=memory))


def test_runner_echo_and_reuse() -> None:
    """The runner writes input, runs, reads output, and can be called repeatedly."""
    runner = pinned(module())
    for n in (0, 1, 32, 1000):
        data = bytes(range(256)) * 4
        assert runner.run(data[:n]) == data[:n]


def test_hash_mismatch_rejected() -> None:
    """A module whose digest differs from the expected one is refused before compiling."""
    wasm = module()
    with pytest.raises(KernelHashMismatch, match="sha256 mismatch"):
        KernelRunner(wasm, "0" * 64)
    tampered = module(run="i32.const 0")
    with pytest.raises(KernelHashMismatch):
        KernelRunner(tampered, hashlib.sha256(wasm).hexdigest())


def test_uppercase_digest_accepted() -> None:
    """Digests compare case-insensitively."""
    wasm = module()
    assert KernelRunner(wasm, hashlib.sha256(wasm).hexdigest().upper()).run(b"x") == b"x"


def test_trap_becomes_kernel_failed() -> None:
    """A trap (here: unreachable) raises KernelFailed, and the runner recovers afterwards."""
    runner = pinned(module(run="local.get 0 i32.eqz (if (then unreachable)) local.get 0"))
    with pytest.raises(KernelFailed, match="trapped"):
        runner.run(b"")
    assert runner.run(b"ok") == b"ok"


def test_negative_return_becomes_kernel_failed() -> None:
    """A negative return code raises KernelFailed carrying the code."""
    runner = pinned(module(run="i32.const -2"))
    with pytest.raises(KernelFailed, match="output too large") as info:
        runner.run(b"abc")
    assert info.value.code == -2


def test_output_outside_memory_is_failure() -> None:
    """An output length running past the end of memory is a failure, not a crash."""
    runner = pinned(module(run="i32.const 200000"))
    with pytest.raises(KernelFailed, match="outside memory"):
        runner.run(b"abc")


def test_runaway_loop_interrupted() -> None:
    """An endless loop is interrupted by the timeout."""
    runner = pinned(module(run="(loop $spin (br $spin)) i32.const 0"), timeout=0.3)
    start = time.monotonic()
    with pytest.raises(KernelTimeout, match="time limit"):
        runner.run(b"")
    assert time.monotonic() - start < 5.0


def test_runaway_with_per_call_timeout() -> None:
    """A per-call timeout overrides the runner default."""
    runner = pinned(module(run="(loop $spin (br $spin)) i32.const 0"))
    with pytest.raises(KernelTimeout):
        runner.run(b"", timeout=0.1)


def test_memory_growth_capped() -> None:
    """memory.grow beyond the declared maximum fails inside the kernel instead of allocating."""
    runner = pinned(
        module(
            memory="1 4",
            run="i32.const 10 memory.grow i32.const 0 i32.lt_s (if (then unreachable)) i32.const 0",
        )
    )
    with pytest.raises(KernelFailed, match="trapped"):
        runner.run(b"")
