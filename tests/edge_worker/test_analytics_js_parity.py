"""The worker page summarises analytics rounds exactly like the edge worker: for the same rows
(a contributor's CSV, or a public shard) and the same query, the body the page's
``analytics-round.js`` uploads, chunk by chunk through its resumable upload, is byte-identical to
the edge worker's ``analytics_body``.

The Python side runs here with wasmtime; the JavaScript side under Node
(tests/js/analytics-replay.mjs): the CSV read as the page reads a picked file, kept through the
page's store, and summarised by the same kernel, against an in-memory site that follows the
upload protocol (a chunk lost in transit, a chunk damaged on the way)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ccgsc_worker.analytics_abi import METRICS, vector_length
from ccgsc_worker.analytics_round import analytics_body
from jobs.analytics import Column, QuerySpec, summarize
from jobs.fl_shards import encode_shard

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "wasm" / "build" / "analytics.wasm"
NODE = shutil.which("node")
CHUNK_BYTES = 256  # small, so bodies span several chunks

# Every way a cell can be written: plain, signed, exponent, spaces around it, quoted, empty,
# words, non-finite, hexadecimal and underscores (missing on both sides), a short record, an extra
# field, CRLF endings, a byte-order mark, blank and whitespace-only lines, values outside [lo, hi]
# and on its bounds. The header lists the columns in another order than the query, with one the
# query does not ask for.
EDGE_CSV = (
    "\ufeffnote,temp_c, load ,temp_c\r\n"
    "a,21.5,0.25,9\r\n"
    'b,"-3.75",1e-1,9\r\n'
    "c, 40.0 ,+.5,9\r\n"
    "d,,0.75\r\n"
    "\r\n"
    "e,NaN,inf,9\r\n"
    "   \r\n"
    "f,0x10,1_000,9\r\n"
    "g,-40,1.0,9\r\n"
    "h,1e2,-0.5,9\r\n"
    "i,7.000000001,0.3333333333333333,9,extra\r\n"
    "j,12\r\n"
    "k,abc,0.5,9\r\n"
)
EDGE_COLUMNS = [
    {"name": "load", "feature": 0, "lo": 0.0, "hi": 1.0, "bins": 4},
    {"name": "temp_c", "feature": 1, "lo": -40.0, "hi": 45.0, "bins": 17},
]


def _invite(columns: list[dict], max_rows: int, data: dict, wasm: bytes) -> dict[str, Any]:
    d = vector_length([_spec(c) for c in columns])
    return {
        "type": "round_invite",
        "job": "00000000-0000-4000-8000-0000000000a1",
        "round": 1,
        "participation": 5,
        "seed": "1",
        "kernel": {
            "name": "analytics",
            "sha256": hashlib.sha256(wasm).hexdigest(),
            "url": "/fl/kernels/analytics.wasm",
        },
        "analytics": {"columns": columns, "max_rows": max_rows, "dimension": d},
        "data": data,
        "upload": {"url": "/fl/uploads/", "chunk_bytes": CHUNK_BYTES, "total_bytes": 32 + 4 * d},
        "deadline_ms": 60_000,
    }


def _spec(column: dict) -> Any:
    from ccgsc_worker.analytics_abi import ColumnSpec

    return ColumnSpec(column["feature"], column["bins"], column["lo"], column["hi"])


def _numbers_csv(path: Path, rng: np.random.Generator, rows: int) -> None:
    """Random values of several magnitudes, some missing, written with Python's repr."""
    values = rng.normal(0, 1, (rows, 3)) * np.array([1.0, 100.0, 1e-3])
    lines = ["a,b,c"]
    for row in values:
        cells = ["" if rng.random() < 0.05 else repr(float(v)) for v in row]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(not WASM.exists(), reason="the WASM kernels are not built")
def test_the_page_uploads_the_edge_workers_analytics_body_byte_for_byte(tmp_path: Path) -> None:
    if NODE is None:
        pytest.fail("node is needed for the worker page's analytics tests")
    wasm = WASM.read_bytes()
    rng = np.random.default_rng(9)
    local = {"source": "contributor_local", "private": True}
    # given: the edge-case CSV (all rows, then capped at 5), random numbers over bounds that are
    # not float32 values with 1 to 1,024 bins, and a public shard whose features the columns index
    (tmp_path / "edge.csv").write_text(EDGE_CSV, encoding="utf-8")
    _numbers_csv(tmp_path / "numbers.csv", rng, 700)
    numbers = [
        {"name": "c", "feature": 0, "lo": -0.003, "hi": 0.003, "bins": 1024},
        {"name": "a", "feature": 1, "lo": -0.1, "hi": 2.7, "bins": 1},
        {"name": "b", "feature": 2, "lo": -250.0, "hi": 250.0, "bins": 64},
    ]
    x = rng.random((40, 6)).astype(np.float32)
    x[3, 2] = np.nan
    (tmp_path / "shard.bin").write_bytes(encode_shard(x, np.zeros(40, dtype=np.int64), 2))
    shard_columns = [
        {"name": "f5", "feature": 5, "lo": 0.0, "hi": 1.0, "bins": 8},
        {"name": "f2", "feature": 2, "lo": 0.25, "hi": 0.75, "bins": 3},
    ]
    cases = [
        (_invite(EDGE_COLUMNS, 1000, local, wasm), "edge.csv"),
        (_invite(EDGE_COLUMNS, 5, local, wasm), "edge.csv"),
        (_invite(numbers, 650, local, wasm), "numbers.csv"),
        (_invite(shard_columns, 30, {**local, "private": False, "url": "/s/1.bin"}, wasm), None),
    ]
    cases[3][0]["data"]["source"] = "public_partition"
    # when the edge worker summarises each here
    expected = []
    for invite, csv_name in cases:
        fetched = (tmp_path / "shard.bin").read_bytes()
        expected.append(
            analytics_body(
                lambda _url, fetched=fetched: fetched,
                invite,
                wasm,
                time_left=lambda: 60.0,
                local_data=None if csv_name is None else str(tmp_path / csv_name),
            )
        )
    # and the page summarises and uploads the same rounds under Node
    replay = [
        {
            "invite": invite,
            "files": {
                "/fl/kernels/analytics.wasm": str(WASM),
                "/s/1.bin": str(tmp_path / "shard.bin"),
            },
            **({"csv": str(tmp_path / csv_name)} if csv_name else {}),
            "drop": [1] if number == 2 else [],
            "corrupt": [0] if number == 0 else [],
        }
        for number, (invite, csv_name) in enumerate(cases)
    ]
    done = subprocess.run(
        [NODE, str(ROOT / "tests" / "js" / "analytics-replay.mjs")],
        input=json.dumps({"cases": replay}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    # then every round is uploaded and the bodies are identical, byte for byte
    for number, (result, body) in enumerate(zip(results, expected, strict=True)):
        assert (result["code"], result["message"]) == ("uploaded", ""), number
        assert base64.b64decode(result["body_b64"]) == body, number
        assert len(body) == cases[number][0]["upload"]["total_bytes"]
    # and the edge-case CSV was read as intended: 11 data rows (blank lines skipped), 5 when
    # capped; load is missing in rows e (inf), f (1_000) and j (short), temp_c in rows d (empty),
    # e (NaN), f (0x10) and k (abc)
    assert results[0]["missing"] == [3, 4]
    assert results[1]["missing"] == [1, 2]
    edge_rows = np.array(
        [
            [0.25, 21.5],
            [0.1, -3.75],
            [0.5, 40.0],
            [0.75, math.nan],
            [math.nan, math.nan],
            [math.nan, math.nan],
            [1.0, -40.0],
            [-0.5, 100.0],
            [0.3333333333333333, 7.000000001],
            [math.nan, 12.0],
            [0.5, math.nan],
        ],
        dtype=np.float32,
    )
    spec = QuerySpec(
        columns=(Column("load", 0, 0.0, 1.0, 4), Column("temp_c", 1, -40.0, 45.0, 17)),
        max_rows=1000,
    )
    vector = np.frombuffer(expected[0], dtype="<f4", offset=METRICS.size)
    assert vector.tobytes() == summarize(edge_rows, spec).astype("<f4").tobytes()
    assert METRICS.unpack(expected[0][: METRICS.size])[1] == 11
    assert METRICS.unpack(expected[1][: METRICS.size])[1] == 5
    # and the resumable upload did its job: a lost chunk asked for the state again, a damaged
    # one was sent twice
    assert results[2]["log"].count("POST /fl/uploads/") == 2
    assert results[0]["log"].count("PUT /fl/uploads/u1/chunks/0") == 2
