"""One analytics round on the edge worker: rows in, summary vector out, uploaded as the update.

The rows are the worker's public shard (fetched like a training shard; the columns' ``feature``
indexes a row) or, for ``contributor_local`` jobs, the CSV file given by ``--data``: a header
row, then one row per record; each requested column is found by its name in the header, and an
empty or non-numeric cell is missing (not counted). Only the first ``max_rows`` records are
read. A cell is a number when, without surrounding spaces, it is a plain decimal
(``[+-]digits[.digits][e[+-]digits]``; Python's ``float`` alone would also take ``1_000`` or
other scripts' digits); blank lines are skipped. The worker page reads a picked file by the same
rules (``static/worker_frontend/local-columns.js``), so both summarise it into the same bytes.
The file never leaves the machine: only the kernel's vector (counts, sums, sums of squares
and histogram counts, docs/analytics.md) is uploaded, through the FL upload protocol
(``RoundTrainer``: masked first in a secure round, as a trained update is).

Extra codes besides those of ``training``: ``no_local_data`` (no ``--data`` for a job on local
data), ``bad_data`` (the file cannot be read, lacks a column, or has no rows).
"""

from __future__ import annotations

import array
import csv
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ccgsc_worker import abi
from ccgsc_worker.analytics_abi import ColumnSpec, decode_output, encode_input
from ccgsc_worker.kernel import KernelRunner
from ccgsc_worker.training import decode_shard
from ccgsc_worker.transfer import RoundError

_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _number(cell: str) -> float:
    text = cell.strip()
    if not _DECIMAL.fullmatch(text):
        return math.nan
    value = float(text)
    return value if math.isfinite(value) else math.nan


def read_csv_columns(path: str | Path, names: list[str], max_rows: int) -> tuple[bytes, int]:
    """The named columns of a CSV file's first ``max_rows`` records as f32 rows (bytes) and the
    number of rows; raises RoundError(``bad_data``) when the file or a column is missing."""
    values = array.array("f")
    rows = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader, [])]
            missing = [name for name in names if name not in header]
            if missing:
                raise RoundError("bad_data", f"{path}: no column {', '.join(missing)}")
            where = [header.index(name) for name in names]
            for record in reader:
                if rows >= max_rows:
                    break
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                values.extend(_number(record[i]) if i < len(record) else math.nan for i in where)
                rows += 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RoundError("bad_data", f"{path}: {exc}") from exc
    return values.tobytes(), rows


def _rows(
    fetch: Callable[[str], bytes], invite: Mapping[str, Any], local_data: str | None
) -> tuple[bytes, int, int, list[ColumnSpec]]:
    query, data = invite["analytics"], invite["data"]
    columns = query["columns"]
    if data.get("source") == "contributor_local":
        if local_data is None:
            raise RoundError("no_local_data", "this job reads local data: start with --data")
        names = [column["name"] for column in columns]
        x, rows = read_csv_columns(local_data, names, int(query["max_rows"]))
        specs = [
            ColumnSpec(j, int(c["bins"]), float(c["lo"]), float(c["hi"]))
            for j, c in enumerate(columns)
        ]
        return x, rows, len(columns), specs
    if data.get("private") or "url" not in data:
        raise RoundError("bad_shard", "only public shards served by the site are read")
    x, _y, n, features = decode_shard(fetch(data["url"]))
    specs = [
        ColumnSpec(int(c["feature"]), int(c["bins"]), float(c["lo"]), float(c["hi"]))
        for c in columns
    ]
    if any(spec.feature >= features for spec in specs):
        raise RoundError("bad_shard", "a column's feature is past the shard's rows")
    return x.tobytes(), n, features, specs


def analytics_body(
    fetch: Callable[[str], bytes],
    invite: Mapping[str, Any],
    wasm: bytes,
    *,
    time_left: Callable[[], float],
    local_data: str | None,
) -> bytes:
    """This worker's rows summarised by the pinned analytics kernel → the upload body (metrics
    header ‖ f32[d]). Raises RoundError."""
    query = invite["analytics"]
    x, rows, features, specs = _rows(fetch, invite, local_data)
    if rows == 0:
        raise RoundError("bad_data", "no rows to summarise")
    runner = KernelRunner(wasm, invite["kernel"]["sha256"], limits=abi.limits_for("analytics"))
    data = encode_input(specs, x, rows=rows, features=features, max_rows=int(query["max_rows"]))
    summary = decode_output(runner.run(data, timeout=max(0.1, time_left())), columns=specs)
    if summary.status != 0 or summary.dimension != int(query["dimension"]):
        raise RoundError("kernel_failed", f"status {summary.status}, d {summary.dimension}")
    return summary.body
