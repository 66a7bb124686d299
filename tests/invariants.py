"""The dispatch plane's invariants, checked with plain SQL after a run (the benchmarks and the
failover test share them): no task lost, exactly ``quorum`` credited replicas per validated task,
the books balance."""

from __future__ import annotations

from typing import Any


def invariants(conn: Any, job_id: str, quorum: int) -> dict[str, Any]:
    """After a run: no task lost, exactly ``quorum`` credited replicas per validated task, the
    books balance, one usage row per validated task."""
    one = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
    # Known-answer tasks are checks, validated by one matching replica and never metered.
    validated = one(
        "SELECT count(*) FROM jobs_task WHERE job_id = %s AND status = 'validated'"
        " AND known_answer_sha256 = ''",
        job_id,
    )
    wrong_credit = one(
        "SELECT count(*) FROM (SELECT t.id FROM jobs_task t LEFT JOIN jobs_assignment a"
        " ON a.task_id = t.id AND a.status = 'valid' AND a.credited_at IS NOT NULL"
        " WHERE t.job_id = %s AND t.status = 'validated' AND t.known_answer_sha256 = ''"
        " GROUP BY t.id"
        " HAVING count(a.id) <> %s) x",
        job_id,
        quorum,
    )
    credited_elsewhere = one(
        "SELECT count(*) FROM jobs_assignment a JOIN jobs_task t ON t.id = a.task_id"
        " WHERE t.job_id = %s AND t.status <> 'validated' AND a.credited_at IS NOT NULL",
        job_id,
    )
    # An open task's live count matches its live replicas: none lost, none double counted.
    lost = one(
        "SELECT count(*) FROM jobs_task t WHERE t.job_id = %s AND t.status = 'open' AND"
        " t.active_replicas <> (SELECT count(*) FROM jobs_assignment a WHERE a.task_id = t.id"
        " AND a.status IN ('assigned', 'returned'))",
        job_id,
    )
    counter = one("SELECT tasks_validated FROM jobs_job WHERE id = %s", job_id)
    usage = one("SELECT count(*) FROM billing_usagerecord WHERE job_id = %s", job_id)
    unbalanced = one(
        "SELECT count(*) FROM (SELECT currency FROM billing_posting GROUP BY currency"
        " HAVING sum(amount_cents) <> 0) x"
    )
    mismatched = one(
        "SELECT count(*) FROM billing_account a WHERE a.balance_cents <> COALESCE((SELECT"
        " sum(amount_cents) FROM billing_posting p WHERE p.account_id = a.id), 0)"
    )
    # The director's counters (row plus unfolded deltas) against a recount.
    counted = conn.execute(
        "SELECT COALESCE(sum(tasks_validated), 0), COALESCE(sum(tasks_open), 0),"
        " COALESCE(sum(replicas_valid), 0), COALESCE(sum(replicas_running), 0) FROM ("
        " SELECT tasks_validated, tasks_open, replicas_valid, replicas_running"
        " FROM jobs_jobcounters WHERE job_id = %s UNION ALL"
        " SELECT tasks_validated, tasks_open, replicas_valid, replicas_running"
        " FROM jobs_jobcounterdelta WHERE job_id = %s) c",
        (job_id, job_id),
    ).fetchone()
    recounted = (
        validated,
        one(
            "SELECT count(*) FROM jobs_task WHERE job_id = %s AND status = 'open'"
            " AND known_answer_sha256 = ''",
            job_id,
        ),
        one("SELECT count(*) FROM jobs_assignment WHERE job_id = %s AND status = 'valid'", job_id),
        one(
            "SELECT count(*) FROM jobs_assignment WHERE job_id = %s AND status = 'assigned'",
            job_id,
        ),
    )
    report = {
        "validated_tasks": validated,
        "tasks_with_other_than_quorum_credited": wrong_credit,
        "credited_replicas_of_unvalidated_tasks": credited_elsewhere,
        "open_tasks_with_lost_replicas": lost,
        "job_counter_matches": counter == validated,
        "usage_rows_match": usage == validated,
        "unbalanced_currencies": unbalanced,
        "accounts_not_matching_postings": mismatched,
        "director_counters_match": tuple(int(v) for v in counted) == recounted,
    }
    report["ok"] = (
        wrong_credit == 0
        and credited_elsewhere == 0
        and lost == 0
        and counter == validated
        and usage == validated
        and unbalanced == 0
        and mismatched == 0
        and report["director_counters_match"]
    )
    return report
