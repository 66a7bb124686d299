"""The edge worker's side of an analytics round: reading a contributor's CSV, and the round
run against a server stand-in that records the upload."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from ccgsc_worker.analytics_round import read_csv_columns
from ccgsc_worker.cli import build_parser, main
from ccgsc_worker.training import RoundTrainer
from ccgsc_worker.transfer import Response
from jobs.analytics import Column, QuerySpec, summarize_body
from tests.kernels.conftest import BUILD_DIR


def test_named_columns_are_read_in_query_order_with_missing_cells(tmp_path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("id,height,weight\n1,170.5,60\n2,,72\n3,180,abc\n4,165,inf\n5,1,1\n")
    data, rows = read_csv_columns(path, ["weight", "height"], max_rows=4)
    values = np.frombuffer(data, dtype="<f4").reshape(rows, 2)
    assert rows == 4
    assert values[0].tolist() == [60.0, 170.5]
    assert values[1, 0] == 72.0
    assert math.isnan(values[1, 1])
    assert math.isnan(values[2, 0])
    assert values[2, 1] == 180.0
    assert math.isnan(values[3, 0])  # infinities are missing too


def test_a_missing_column_or_file_is_bad_data(tmp_path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="no column c"):
        read_csv_columns(path, ["a", "c"], max_rows=10)
    with pytest.raises(Exception, match="No such file"):
        read_csv_columns(tmp_path / "absent.csv", ["a"], max_rows=10)


def test_the_cli_refuses_a_data_file_that_does_not_exist(tmp_path, capsys) -> None:
    assert build_parser().parse_args(["--server", "http://x", "--data", "f.csv"]).data == "f.csv"
    with pytest.raises(SystemExit):
        main(["--server", "http://x", "--token", "t", "--data", str(tmp_path / "no.csv")])
    assert "no such file" in capsys.readouterr().err


class RecordingHttp:
    """The upload protocol's server side, keeping what was uploaded."""

    def __init__(self) -> None:
        self.chunks: dict[int, bytes] = {}
        self.created: dict = {}

    def request(self, method: str, path: str, *, body: bytes = b"", headers=None) -> Response:  # noqa: ANN001
        if method == "POST" and path.endswith("/complete"):
            return Response(202, b"{}", {})
        if method == "POST":
            self.created = json.loads(body)
            count = -(-self.created["total_bytes"] // self.created["chunk_size"])
            state = {"upload": "u1", "chunk_count": count, "chunks_received": []}
            return Response(201, json.dumps(state).encode(), {})
        index = int(path.rsplit("/", 1)[1])
        self.chunks[index] = body
        return Response(200, b"{}", {})


def test_a_local_data_round_uploads_the_kernels_vector_of_the_csv(tmp_path) -> None:
    """Given a CSV and an invite on local data, the upload is the kernel's output for those
    rows: exactly the numpy reference's bytes."""
    rng = np.random.default_rng(5)
    table = rng.normal(10.0, 3.0, (40, 2)).astype(np.float32)
    path = tmp_path / "mine.csv"
    path.write_text("a,b\n" + "\n".join(f"{a!r},{b!r}" for a, b in table.tolist()) + "\n")
    manifest = json.loads((BUILD_DIR / "manifest.json").read_text())
    entry = manifest["analytics_kernels"][0]
    wasm = (BUILD_DIR / entry["file"]).read_bytes()
    columns = [
        {"name": "b", "feature": 0, "lo": 5.0, "hi": 15.0, "bins": 5},
        {"name": "a", "feature": 1, "lo": 0.0, "hi": 20.0, "bins": 8},
    ]
    invite = {
        "participation": 3,
        "kernel": {"name": "analytics", "sha256": entry["sha256"], "url": "/k"},
        "analytics": {"columns": columns, "max_rows": 30, "dimension": 19},
        "data": {"source": "contributor_local", "private": True},
        "upload": {"url": "/fl/uploads/", "chunk_bytes": 64, "total_bytes": 32 + 4 * 19},
    }
    http = RecordingHttp()
    trainer = RoundTrainer(http, clock=lambda: 0.0, local_data=str(path))
    assert trainer.run(invite, wasm, deadline=60.0) == ("uploaded", "")
    body = b"".join(http.chunks[i] for i in sorted(http.chunks))
    spec = QuerySpec(
        columns=(Column("b", 1, 5.0, 15.0, 5), Column("a", 0, 0.0, 20.0, 8)), max_rows=30
    )
    # the CSV's decimal text parses back to the same float32 values
    assert body == summarize_body(table, spec)
    assert struct.unpack_from("<I", body, 4)[0] == 30
    assert http.created["participation"] == 3
    assert http.created["base_version"] == 0


def test_a_local_data_invite_without_data_is_refused_with_its_code() -> None:
    invite = {
        "participation": 1,
        "kernel": {"name": "analytics", "sha256": "0" * 64, "url": "/k"},
        "analytics": {"columns": [], "max_rows": 1, "dimension": 4},
        "data": {"source": "contributor_local", "private": True},
        "upload": {"url": "/fl/uploads/", "chunk_bytes": 64, "total_bytes": 48},
    }
    trainer = RoundTrainer(RecordingHttp(), clock=lambda: 0.0)
    code, message = trainer.run(invite, b"", deadline=60.0)
    assert code == "no_local_data"
    assert "--data" in message
