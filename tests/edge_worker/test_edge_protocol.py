"""Client-side protocol v1: builders, the binary result frame and server message parsing."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid

import pytest

from ccgsc_worker import abi
from ccgsc_worker import protocol as proto

SHA = "ab" * 32
AID = str(uuid.UUID(int=7))


def assign_message(**overrides: object) -> dict:
    """A valid assign message, as in the protocol document."""
    message = {
        "v": 1,
        "type": "assign",
        "assignment": AID,
        "job": str(uuid.UUID(int=8)),
        "task": 17,
        "kernel": {"name": "prime_count", "version": "1.0.0", "sha256": SHA, "url": "/k.wasm"},
        "input": {"lo": "1000001", "hi": "2000001", "seed": "0", "params": []},
        "lease_ms": 60000,
        "work_units": 1000000,
    }
    message.update(overrides)
    return message


def test_result_frame_layout_and_round_trip() -> None:
    output = bytes(range(256)) * 3
    frame = proto.encode_result_frame(AID, output, 120)
    (length,) = struct.unpack(">I", frame[:4])
    header_bytes = frame[4 : 4 + length]
    assert frame[4 + length :] == output
    assert b" " not in header_bytes  # compact JSON
    header = json.loads(header_bytes)
    assert header == {
        "v": 1,
        "type": "result",
        "assignment": AID,
        "sha256": hashlib.sha256(output).hexdigest(),
        "elapsed_ms": 120,
    }
    assert proto.decode_result_frame(frame) == (header, output)


def test_result_frame_empty_output_and_elapsed_clamped() -> None:
    header, output = proto.decode_result_frame(proto.encode_result_frame(AID, b"", -5))
    assert output == b""
    assert header["sha256"] == hashlib.sha256(b"").hexdigest()
    assert header["elapsed_ms"] == 0
    header, _ = proto.decode_result_frame(proto.encode_result_frame(AID, b"x", 10**12))
    assert header["elapsed_ms"] == proto.MAX_ELAPSED_MS


def test_decode_result_frame_detects_tampering() -> None:
    frame = bytearray(proto.encode_result_frame(AID, b"\x01\x02\x03", 5))
    frame[-1] ^= 0xFF
    with pytest.raises(proto.ProtocolError):
        proto.decode_result_frame(bytes(frame))
    with pytest.raises(proto.ProtocolError):
        proto.decode_result_frame(b"\x00\x00")
    with pytest.raises(proto.ProtocolError):
        proto.decode_result_frame(struct.pack(">I", 5000) + b"{}")


def test_messages_match_the_server_schemas() -> None:
    """Every message the client builds passes the server's own validation."""
    server = pytest.importorskip("jobs.protocol")
    messages = [
        proto.hello(
            "t" * 32,
            client_version="1.0.0",
            capabilities={"cores": 8, "memory_mb": 4096, "simd": True},
            slots=4,
            user_agent="ccgsc-worker/1.0.0",
        ),
        proto.hello(
            "t" * 32, client_version="1.0.0", capabilities={"cores": 1}, slots=0, resume=AID
        ),
        proto.capacity(0),
        proto.capacity(64),
        proto.progress(AID),
        proto.progress(AID, 0.5),
        proto.error(AID, "hash_mismatch", "sha256 mismatch"),
        proto.ping(),
    ]
    for message in messages:
        assert server.parse_text(proto.encode_text(message)) == message
    frame = server.parse_result_frame(proto.encode_result_frame(AID, b"\x07" * 8, 33))
    assert frame.output == b"\x07" * 8
    assert frame.header["assignment"] == AID


def test_builders_check_their_arguments() -> None:
    assert proto.progress(AID, 1.5)["fraction"] == 1.0
    assert "fraction" not in proto.progress(AID, float("nan"))
    assert len(proto.error(AID, "internal", "x" * 2000)["message"]) == proto.MAX_ERROR_MESSAGE
    with pytest.raises(ValueError, match="error code"):
        proto.error(AID, "oops")
    with pytest.raises(ValueError, match="slots"):
        proto.capacity(65)
    with pytest.raises(ValueError, match="not JSON compliant"):
        proto.encode_text({"v": 1, "x": float("inf")})


def test_decode_assign_with_u64_strings_above_2_pow_53() -> None:
    lo, hi, seed = 2**53 + 1, abi.U64_MAX, 2**64 - 2
    message = assign_message(
        input={"lo": str(lo), "hi": str(hi), "seed": str(seed), "params": [1, 2.5, -0.0]},
        work_units=str(hi - lo),
    )
    a = proto.decode_assign(message)
    assert (a.lo, a.hi, a.seed) == (lo, hi, seed)
    assert a.params == (1.0, 2.5, -0.0)
    assert all(isinstance(p, float) for p in a.params)
    assert a.work_units == hi - lo
    assert a.id == AID
    assert a.task == 17
    assert a.lease_ms == 60000
    assert a.kernel == proto.KernelRef("prime_count", "1.0.0", SHA, "/k.wasm")
    assert a.input_bytes() == abi.encode_input(lo, hi, seed, [1.0, 2.5, -0.0])
    assert abi.decode_input(a.input_bytes())[:3] == (lo, hi, seed)


def test_decode_assign_normalises_the_digest() -> None:
    message = assign_message()
    message["kernel"] = dict(message["kernel"], sha256=SHA.upper())
    assert proto.decode_assign(message).kernel.sha256 == SHA


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lo", "-1"),
        ("lo", "01"),
        ("lo", "1e3"),
        ("lo", 1.5),
        ("lo", True),
        ("hi", str(2**64)),
        ("lo", "3000000"),  # lo > hi
        ("params", [True]),
        ("params", ["1"]),
        ("params", "1,2"),
    ],
)
def test_decode_assign_rejects_bad_input(field: str, value: object) -> None:
    message = assign_message()
    message["input"] = dict(message["input"], **{field: value})
    with pytest.raises(proto.ProtocolError):
        proto.decode_assign(message)


def test_decode_assign_rejects_bad_kernel_and_lease() -> None:
    with pytest.raises(proto.ProtocolError, match="sha256"):
        proto.decode_assign(assign_message(kernel={"name": "k", "sha256": "12", "url": "/k"}))
    with pytest.raises(proto.ProtocolError, match="lease_ms"):
        proto.decode_assign(assign_message(lease_ms=-1))
    with pytest.raises(proto.ProtocolError):
        proto.decode_assign(assign_message(kernel="prime_count"))


def test_parse_server_message_checks_version_type_and_fields() -> None:
    ack = {"v": 1, "type": "ack", "assignment": AID, "status": "accepted"}
    assert proto.parse_server_message(json.dumps(ack)) == ack
    assert proto.parse_server_message(json.dumps(ack).encode())["status"] == "accepted"
    with pytest.raises(proto.ProtocolError) as exc:
        proto.parse_server_message(json.dumps(dict(ack, v=2)))
    assert exc.value.code == "protocol_version"
    for bad in (
        json.dumps(dict(ack, type="hello")),
        json.dumps({"v": 1, "type": "ack", "assignment": AID}),
        '{"v": 1, "type": "credit", "validated": NaN, "work_units": 1}',
        "[1, 2]",
        "not json",
    ):
        with pytest.raises(proto.ProtocolError):
            proto.parse_server_message(bad)
    with pytest.raises(proto.ProtocolError) as exc:
        proto.parse_server_message(" " * (proto.MAX_JSON_BYTES + 1))
    assert exc.value.code == "too_large"
