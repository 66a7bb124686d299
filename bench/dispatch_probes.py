"""What the dispatch benchmarks measure besides the swarm's own timings: PostgreSQL counters,
CPU seconds per process from /proc, SQL statements per server process (``sqlcount``), and
percentiles."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg

SQLCOUNT_DIR = Path(__file__).resolve().parent / "sqlcount"


def pg_stats(conn: psycopg.Connection) -> dict[str, float]:
    """Counters of the benchmark database and of validated replicas, at wall time ``t`` (the
    swarm processes' clock, ``bench/swarm.py``)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit, xact_rollback, sessions, tup_returned, tup_fetched, tup_inserted,"
        " tup_updated, blks_hit FROM pg_stat_database WHERE datname = current_database()",
    ).fetchone()
    valid = conn.execute("SELECT count(*) FROM jobs_assignment WHERE status = 'valid'").fetchone()
    names = ["xact_commit", "xact_rollback", "sessions", "tup_returned", "tup_fetched"]
    names += ["tup_inserted", "tup_updated", "blks_hit"]
    stats = dict(zip(names, (float(v) for v in row), strict=True))
    stats["valid"] = float(valid[0])
    stats["t"] = time.time()
    return stats


def pg_reads(conn: psycopg.Connection) -> dict[str, float]:
    """Rows read so far per table by sequential scans (``seq:<table>``) and per index
    (``idx:<index>``, index entries read), from the statistics views."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    reads = {
        f"seq:{name}": float(n)
        for name, n in conn.execute("SELECT relname, seq_tup_read FROM pg_stat_user_tables")
    }
    reads.update(
        (f"idx:{name}", float(n))
        for name, n in conn.execute("SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes")
    )
    return reads


def reads_per_replica(
    before: dict[str, float], after: dict[str, float], per: float, top: int = 8
) -> dict[str, float]:
    """The ``top`` relations by rows read per validated replica between two ``pg_reads``."""
    delta = {name: (after[name] - before.get(name, 0.0)) / per for name in after}
    ranked = sorted(delta.items(), key=lambda item: -item[1])[:top]
    return {name: round(n, 2) for name, n in ranked if n > 0}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes (and their reaped children), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (1-based) of the whole line
        total += sum(int(v) for v in fields[11:15]) / tick
    return total


def scheduled_cpu_ms(pid: int) -> float:
    """A process's CPU time so far in milliseconds, from the scheduler's nanosecond count
    (``/proc/<pid>/schedstat``; ``stat``'s clock ticks are 10 ms, coarser than a claim flush).
    For a PostgreSQL backend the server must run on this machine."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (Celery's prefork children)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        pids += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return pids


def backend_pids(conn: psycopg.Connection) -> list[int]:
    """PostgreSQL backends serving the benchmark database (the servers' connections)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    ).fetchall()
    return [row[0] for row in rows]


def cpu_snapshot(conn: psycopg.Connection, servers: dict[str, int]) -> dict[str, Any]:
    """CPU seconds so far per server process tree, and per PostgreSQL backend."""
    snap: dict[str, Any] = {name: cpu_seconds(process_tree(pid)) for name, pid in servers.items()}
    snap["self"] = cpu_seconds([os.getpid()])
    snap["backends"] = {pid: cpu_seconds([pid]) for pid in backend_pids(conn)}
    return snap


def backends_cpu(conn: psycopg.Connection, before: dict[str, Any], after: dict[str, Any]) -> list:
    """The PostgreSQL backends' CPU milliseconds between two snapshots, busiest first, each with
    its type and the first words of its last statement (which tell a Daphne's flusher from a
    request's or Celery's connection). A backend that started in between counts from its start;
    one that ended in between is missed."""
    rows = conn.execute(
        "SELECT pid, backend_type, left(regexp_replace(query, '\\s+', ' ', 'g'), 60)"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    info = {row[0]: (row[1], row[2]) for row in rows}
    out = [
        {
            "pid": pid,
            "cpu_ms": round((cpu - before["backends"].get(pid, 0.0)) * 1000),
            "type": info.get(pid, ("gone", ""))[0],
            "last": info.get(pid, ("", ""))[1],
        }
        for pid, cpu in after["backends"].items()
    ]
    return sorted((row for row in out if row["cpu_ms"] > 0), key=lambda r: -r["cpu_ms"])


def cpu_per_replica(before: dict[str, Any], after: dict[str, Any], per: float) -> dict:
    """Milliseconds of CPU per validated replica, by process. PostgreSQL counts the backends
    alive at both ends of the window (persistent connections; short-lived ones are missed)."""
    out = {
        name: round((after[name] - before[name]) * 1000 / per, 3)
        for name in after
        if name != "backends"
    }
    out["postgresql"] = round(
        sum(
            cpu - before["backends"][pid]
            for pid, cpu in after["backends"].items()
            if pid in before["backends"]
        )
        * 1000
        / per,
        3,
    )
    return out


def pct(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``values`` in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k] * 1000


def sql_env(directory: Path) -> dict[str, str]:
    """Environment that gives every server process the benchmark's SQL counter."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in [*directory.glob("sql-*.json"), *directory.glob("trace-*.json")]:
        old.unlink()
    path = os.environ.get("PYTHONPATH", "")
    return {
        "CCGSC_BENCH_SQL_DIR": str(directory),
        "PYTHONPATH": os.pathsep.join(p for p in (str(SQLCOUNT_DIR), path) if p),
    }


def sql_totals(directory: Path) -> dict[int, dict[str, Any]]:
    """Each counted process's running totals, by pid (a file being replaced is skipped)."""
    totals = {}
    for path in directory.glob("sql-*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        totals[data["pid"]] = data
    return totals


def sql_per_replica(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], per: float
) -> dict[str, Any]:
    """SQL statements (and transactions) per validated replica over the window, by process kind
    and statement kind (processes counted at both ends; one that died in the window is
    missed)."""
    roles: dict[str, float] = {}
    kinds: dict[str, float] = {}
    connections = 0
    transactions = 0
    for pid, end in after.items():
        start = before.get(pid)
        if start is None:
            continue
        role = "celery" if "celery" in end["argv"] else "daphne"
        roles[role] = roles.get(role, 0) + end["statements"] - start["statements"]
        connections += end["connections"] - start["connections"]
        transactions += end.get("transactions", 0) - start.get("transactions", 0)
        for kind, n in end["by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + n - start["by_kind"].get(kind, 0)
    return {
        "total": round(sum(roles.values()) / per, 3),
        "by_process": {k: round(v / per, 3) for k, v in sorted(roles.items())},
        "by_kind": {
            k: round(v / per, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if v
        },
        "connections_opened": round(connections / per, 4),
        "transactions": round(transactions / per, 4),
    }


def push_trace(directory: Path, t0: float, received: list[float]) -> dict[str, Any]:
    """Where a job start's push went, from the servers' trace files (``sqlcount/push_trace``)
    and the workers' own first-``assign`` times (``received``); milliseconds after ``t0``, the
    wall-clock time the start request was sent. Per Daphne: when its idle registry was woken,
    its flushes until its last first ``assign`` was sent (start, duration, claims, results,
    offers), and when its sockets' first ``assign``s were sent."""

    def ms(t: float) -> float:
        return round((t - t0) * 1000, 1)

    out: dict[str, Any] = {"daphnes": [], "received": {}}
    last_received = t0 + max(received) if received else t0
    for path in sorted(directory.glob("trace-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        events = [(t, kind, info) for t, kind, info in data["events"] if t >= t0 - 1]
        if "celery" in data["argv"]:
            chunks = [(t, info) for t, kind, info in events if kind == "queue_chunk"]
            out["celery_queue_chunks"] = [
                {"at": ms(t), "ms": round(info["seconds"] * 1000, 1), "tasks": info["tasks"]}
                for t, info in chunks
                if t <= last_received
            ]
            # What the fill cost in the first second after the start, whatever the push did.
            first_second = [info for t, info in chunks if t0 <= t <= t0 + 1]
            out["celery_fill_first_second"] = {
                "statements": len(first_second),
                "tasks": sum(info["tasks"] for info in first_second),
                "ms": round(sum(info["seconds"] for info in first_second) * 1000, 1),
            }
            continue
        for t, kind, info in events:
            if kind in ("start_begin", "start_end"):
                out[kind] = ms(t)
            elif kind == "queue_chunk":
                out["request_queue_chunk"] = {"ms": round(info["seconds"] * 1000, 1)}
                out["request_queue_chunk"]["tasks"] = info["tasks"]
            elif kind == "wake_sent" and "wake_sent" not in out:
                out["wake_sent"] = {"at": ms(t), "ms": round(info["seconds"] * 1000, 1)}
        sent = sorted(t for t, kind, _ in events if kind == "first_assign")
        if not sent:
            continue
        woken = [(t, info) for t, kind, info in events if kind == "woken"]
        flushes = [
            {"at": ms(t), "ms": round(info["seconds"] * 1000, 1)}
            | {k: info[k] for k in ("claims", "results", "other", "offers")}
            for t, kind, info in events
            if kind == "flush" and t <= sent[-1]
        ]
        out["daphnes"].append(
            {
                "pid": data["pid"],
                "woken_at": ms(woken[0][0]) if woken else None,
                "woken": woken[0][1]["count"] if woken else 0,
                # The first and the last ones when there are many: the first are the push's
                # first claims (the last twelve alone once hid them).
                "flushes": flushes if len(flushes) <= 16 else flushes[:8] + flushes[-8:],
                "flushes_until_last_first_assign": len(flushes),
                "first_assign_sent": {
                    "sockets": len(sent),
                    "first": ms(sent[0]),
                    "p50": ms(sent[len(sent) // 2]),
                    "last": ms(sent[-1]),
                },
            }
        )
    if received:
        ordered = sorted(received)
        out["received"] = {
            "first": round(ordered[0] * 1000, 1),
            "p50": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
            "last": round(ordered[-1] * 1000, 1),
        }
    return out
