"""The Daphnes' connection balancing, its parts alone: the decision, the shared load table and
the connection count (the launcher's processes are tested in tests/services)."""

from __future__ import annotations

import asyncio

from ccgsc_site.accept_balance import STALE_S, ConnectionCount, SlotTable, accepts


def test_the_least_loaded_process_accepts_and_one_past_the_slack_does_not():
    assert accepts(100, [100, 300])
    assert accepts(108, [100, 108])  # within the slack of 8
    assert not accepts(109, [100, 109])
    # the slack grows with the load: 2 % of 1,000
    assert accepts(1_020, [1_000, 1_020])
    assert not accepts(1_021, [1_000, 1_021])
    # alone, or with no live peer, a process always accepts
    assert accepts(5_000, [5_000])
    assert accepts(5_000, [])


def test_slots_not_written_lately_or_cleared_do_not_count(tmp_path):
    table = SlotTable.create(tmp_path / "loads", 3)
    now = 1_000.0
    table.write(0, 40, now)
    table.write(1, 7, now - STALE_S - 0.1)  # stopped or stuck
    assert table.live(now) == [40]  # slot 2 was never written
    table.write(2, 12, now)
    assert sorted(table.live(now)) == [12, 40]
    table.clear(2)  # its process died
    assert table.live(now) == [40]
    # another process maps the same file and sees the same loads
    assert SlotTable.open(tmp_path / "loads").live(now) == [40]


def test_the_count_follows_application_instances_even_when_one_fails():
    release = asyncio.Event()

    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        await release.wait()
        if scope.get("fail"):
            raise RuntimeError("boom")

    count = ConnectionCount(app)

    async def scenario() -> list[int]:
        seen = []
        tasks = [
            asyncio.create_task(count({"type": "websocket", "fail": i == 0}, None, None))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        seen.append(count.open)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        seen.append(count.open)
        assert isinstance(results[0], RuntimeError)
        return seen

    assert asyncio.run(scenario()) == [3, 0]


def test_lifespan_is_not_a_connection():
    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        return count.open

    count = ConnectionCount(app)
    assert asyncio.run(count({"type": "lifespan"}, None, None)) == 0
