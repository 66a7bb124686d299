"""A browser page and edge workers share one federated analytics round, end to end with real
processes: Daphne, Celery (with beat), PostgreSQL, Redis, a headless Chromium worker page and two
``ccgsc-worker`` processes. The contributor on the page picks a CSV for the job in the page's
"Your local data" section, consents and keeps it; the edge workers read theirs with ``--data``.
The round invites all three; each runs the analytics kernel over its own rows and uploads its
summary vector; Celery sums them. The result is the plain computation over the union of the three
files, and not one of the page's values reached the server in an HTTP request or WebSocket frame.
Run twice: in the clear, and under secure aggregation, where the page and the edge workers run the
four SecAgg+ phases, upload masked vectors and the server unmasks only their sum (the query's
power-of-two scale holds these sixteenths exactly, so the sum is still exact).
"""

from __future__ import annotations

import numpy as np
import pytest

from billing.operations import balance_adjust
from jobs.analytics import Column, QuerySpec, summarize
from jobs.analytics_models import AnalyticsResult
from jobs.fl_models import Participation, Round, RoundStatus
from jobs.secagg_models import SecAggPhase, SecAggPhaseSet, SecAggRound
from jobs.services.analytics_creation import AnalyticsJobSpec, analytics_job_create
from jobs.services.lifecycle import job_pause, job_resume
from tenants.roles import Role
from tenants.tiers import Tier
from tests.e2e.conftest import wait_for_job
from tests.e2e.fl_checks import contributors_accounted, workers_online

pytestmark = [pytest.mark.services, pytest.mark.browser, pytest.mark.slow]

COLUMNS = [
    {"name": "reading_qz", "feature": 0, "lo": 0.0, "hi": 64.0, "bins": 16},
    {"name": "level_vk", "feature": 1, "lo": -8.0, "hi": 8.0, "bins": 8},
]
SPEC = QuerySpec(
    columns=(Column("reading_qz", 0, 0.0, 64.0, 16), Column("level_vk", 1, -8.0, 8.0, 8)),
    max_rows=16,
)
# The page's rows: distinctive values (multiples of 1/16, so every sum below is exact in float32
# and the result can be compared exactly), one clipped, one missing, and a column the job does not
# ask for. Any copy of them in a request or frame would be found.
PAGE_ROWS = [
    (37.4375, -7.8125, 98765.4321),
    (51.6875, 3.0625, 12121.8989),
    (12.8125, None, 34343.5656),
    (44.9375, 9.4375, 56565.2323),
    (29.5625, -2.6875, 78787.1414),
]
SECRETS = [b"37.4375", b"7.8125", b"51.6875", b"3.0625", b"12.8125", b"44.9375", b"9.4375"]
SECRETS += [b"29.5625", b"2.6875", b"98765.4321", b"12121.8989", b"56565.2323", b"private_memo"]


def _csv(rows) -> bytes:  # noqa: ANN001
    lines = ["private_memo,level_vk,reading_qz"]
    for reading, level, memo in rows:
        lines.append(f"{memo},{'' if level is None else level},{reading}")
    return ("\n".join(lines) + "\n").encode()


def _edge_rows(seed: int) -> list[tuple[float, float | None, float]]:
    """Ten rows in sixteenths, a few outside the bounds or missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(10):
        reading = float(rng.integers(-16, 66 * 16)) / 16
        level = None if rng.random() < 0.1 else float(rng.integers(-10 * 16, 10 * 16)) / 16
        rows.append((reading, level, 1.0))
    return rows


def _as_array(rows) -> np.ndarray:  # noqa: ANN001
    return np.array(
        [[reading, np.nan if level is None else level] for reading, level, _ in rows],
        dtype=np.float32,
    )


def _record_traffic(page, sent: list[tuple[str, bytes]]) -> None:  # noqa: ANN001
    page.on("request", lambda r: sent.append((r.url, r.post_data_buffer or b"")))
    page.on(
        "websocket",
        lambda ws: ws.on(
            "framesent", lambda p: sent.append((ws.url, p if isinstance(p, bytes) else p.encode()))
        ),
    )


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_a_page_with_a_local_csv_and_two_edge_workers_share_an_analytics_round(
    fc_stack, browser, tenant, owner, tmp_path, secure
):
    # given a core tenant with credit and an analytics job over contributors' own files, paused
    # until its three contributors are online (so one round invites them all)
    tenant.tier = Tier.CORE
    tenant.save(update_fields=["tier"])
    balance_adjust(tenant=tenant, amount_cents=5000, actor=owner, reason="tests", promotional=True)
    spec = AnalyticsJobSpec(
        name="sensor readings",
        columns=COLUMNS,
        data_source="contributor_local",
        max_rows=SPEC.max_rows,
        secure_aggregation=secure,
        cohort_size=3,
        min_reports=3,
        round_deadline_seconds=90,
    )
    job = analytics_job_create(tenant=tenant, actor=owner, actor_role=Role.OWNER, spec=spec)
    job = job_pause(job=job, actor_role=Role.OWNER)
    # and a contributor who opens the worker page on a phone, picks a CSV for the job, consents
    # and keeps it on the device
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors: list[str] = []
    sent: list[tuple[str, bytes]] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    _record_traffic(page, sent)
    page.goto(fc_stack.daphne.url + "/contribute/")
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.ready === '1'")
    card = page.locator(f'[data-testid="local-data-job"][data-job="{job.pk}"]')
    assert "numeric columns named “reading_qz”, “level_vk”" in card.inner_text()
    card.get_by_label("Pick a CSV file").set_input_files(
        files=[{"name": "mine.csv", "mimeType": "text/csv", "buffer": _csv(PAGE_ROWS)}]
    )
    card.get_by_test_id("local-data-summary").wait_for()
    assert card.get_by_test_id("local-data-rows").inner_text() == "5"
    assert card.get_by_test_id("local-data-missing").inner_text() == "reading_qz: 0 · level_vk: 1"
    card.get_by_label("I agree that this job summarises these columns here").check()
    card.get_by_test_id("local-data-save").click()
    page.wait_for_function("() => document.querySelector('#wf-local-data').dataset.kept === '1'")
    # and two edge workers with CSV files of their own
    edge_rows = [_edge_rows(seed) for seed in (1, 2)]
    for index, rows in enumerate(edge_rows):
        path = tmp_path / f"edge-{index}.csv"
        path.write_bytes(_csv(rows))
        fc_stack.edge_worker(extra_args=("--data", str(path)))
    page.get_by_test_id("cores").select_option("1")
    page.get_by_test_id("join").click()
    page.wait_for_function("() => window.ccgscWorker.state().welcomed", timeout=15_000)
    workers_online(3, fc_stack)
    contributors_accounted()  # a secure cohort admits few anonymous contributors

    # when the job resumes and its round runs
    job_resume(job=job, actor_role=Role.OWNER)
    job = wait_for_job(job.pk, timeout_s=120, stack=fc_stack)

    # then the one round folded the three vectors, the page's among them
    round_ = Round.objects.for_tenant(tenant).get(job=job)
    assert (round_.status, round_.reports) == (RoundStatus.CLOSED, 3), fc_stack.logs()
    included = Participation.objects.for_tenant(tenant).filter(round=round_, included=True)
    assert sorted(included.values_list("worker__kind", flat=True)) == ["browser", "edge", "edge"]
    if secure:  # all three went through the four phases, and the server unmasked only the sum
        secagg = SecAggRound.objects.for_tenant(tenant).get(round=round_)
        assert secagg.phase == SecAggPhase.DONE
        sets = SecAggPhaseSet.objects.for_tenant(tenant).filter(secagg_round=secagg)
        assert {s.phase: len(s.members) for s in sets} == dict.fromkeys(
            ["advertise", "share", "masked_input", "unmask"], 3
        )
        assert secagg.scale == 2.0**13
    # and the released aggregate is the sum of the three files' summary vectors as the numpy
    # reference computes them, exactly, and its statistics are numpy's over the union of the files
    files = [_as_array(PAGE_ROWS), *(_as_array(rows) for rows in edge_rows)]
    union = np.concatenate(files)
    result = AnalyticsResult.objects.for_tenant(tenant).get(round=round_)
    assert (result.contributors, result.rows) == (3, 25)
    expected_sum = sum(summarize(rows, SPEC).astype(np.float64) for rows in files)
    assert result.aggregate == expected_sum.tolist()
    for column, entry in zip(SPEC.columns, result.statistics, strict=True):
        values = union[:, column.feature].astype(np.float64)
        values = np.clip(values[np.isfinite(values)], column.lo, column.hi)
        assert entry["count"] == values.size
        assert entry["sum"] == values.sum()
        assert entry["mean"] == pytest.approx(values.mean(), rel=1e-15)
        expected, _ = np.histogram(values, bins=column.bins, range=(column.lo, column.hi))
        assert entry["histogram"] == expected.tolist()
    # and the page shows how its round ended
    state = page.evaluate("() => window.ccgscWorker.state()")
    assert state["roundOutcomes"] == {"uploaded": 1}, state
    assert (
        state["lastRound"]["sentBytes"]
        == state["lastRound"]["totalBytes"]
        == 32 + 4 * SPEC.dimension
    )
    assert "round 1: update sent" in page.get_by_test_id("fl-round-outcome").inner_text()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    # and not one of the page's values (nor the column it was not asked for) reached the server
    assert any("/ws/worker/" in url for url, _ in sent), "the socket's frames were recorded"
    assert any("/fl/uploads/" in url for url, _ in sent), "the upload was recorded"
    for url, body in sent:
        for secret in SECRETS:
            assert secret not in body, f"{secret!r} was sent to {url}"
            assert secret.decode() not in url
    assert not errors, errors
    context.close()
