"""Which items a flush takes (``jobs.dispatch.flusher.batch_take``): a job start's first claims
go ahead of the prefetch claims of sockets answered a flush earlier, for at most
``PREFETCH_WAIT_FLUSHES`` flushes, and a few first claims beyond the cap ride along rather than
wait for a flush of their own; everything else keeps its arrival order."""

import uuid

from jobs.dispatch.batch import ClaimItem, HeartbeatItem, ResultItem
from jobs.dispatch.flusher import FIRST_CLAIM_TAIL_SHARE, PREFETCH_WAIT_FLUSHES, batch_take


def entry(item, arrived: int = 0):  # noqa: ANN001, ANN201
    return (item, None, arrived)


def first(n: int = 1) -> ClaimItem:
    return ClaimItem(worker_id=uuid.uuid4(), count=n)


def prefetch() -> ClaimItem:
    return ClaimItem(worker_id=uuid.uuid4(), count=1, prefetch=True)


def items(entries) -> list:  # noqa: ANN001
    return [item for item, _, _ in entries]


def test_first_claims_go_ahead_of_fresh_prefetch_claims_and_those_follow_in_the_next_flush():
    # given the last first claims of a start queued behind prefetch claims of answered sockets
    early = [prefetch() for _ in range(3)]
    late = [first() for _ in range(2)]
    pending = [entry(p, arrived=4) for p in early] + [entry(f, arrived=3) for f in late]
    # when the next flush (number 4) takes its items
    batch, rest = batch_take(pending, max_items=256, flush=4)
    # then it takes only the first claims, and the prefetch claims wait, in their order
    assert items(batch) == late
    assert items(rest) == early
    # and the flush after takes them
    batch, rest = batch_take(rest, max_items=256, flush=5)
    assert items(batch) == early
    assert rest == []


def test_a_prefetch_claim_waits_at_most_the_bound_however_many_first_claims_come():
    old = prefetch()
    newer = [first() for _ in range(4)]
    pending = [
        entry(old, arrived=10),
        *(entry(f, arrived=10 + PREFETCH_WAIT_FLUSHES) for f in newer),
    ]
    batch, _ = batch_take(pending, max_items=256, flush=10 + PREFETCH_WAIT_FLUSHES)
    assert items(batch) == [old, *newer]


def test_without_first_claims_waiting_arrival_order_and_the_size_cap_hold():
    result = ResultItem.__new__(ResultItem)  # only its type matters here
    beat = HeartbeatItem(worker_id=uuid.uuid4(), assignment_id=str(uuid.uuid4()))
    queued = [prefetch(), result, beat, prefetch()]
    batch, rest = batch_take([entry(i, arrived=7) for i in queued], max_items=3, flush=7)
    assert items(batch) == queued[:3]
    assert items(rest) == queued[3:]


def test_first_claims_beyond_the_cap_stay_in_order_with_the_waiting_prefetch_behind_them():
    firsts = [first() for _ in range(5)]
    waiting = prefetch()
    pending = [entry(waiting, arrived=2), *(entry(f, arrived=2) for f in firsts)]
    batch, rest = batch_take(pending, max_items=3, flush=2)
    assert items(batch) == firsts[:3]
    assert items(rest) == [waiting, *firsts[3:]]


def test_a_few_first_claims_beyond_the_cap_ride_along_instead_of_waiting_for_a_flush():
    # given a process with 263 woken sockets' first claims queued (cap 256) and a fresh prefetch
    firsts = [first() for _ in range(256 + 256 // FIRST_CLAIM_TAIL_SHARE - 25)]
    waiting = prefetch()
    pending = [entry(waiting, arrived=2), *(entry(f, arrived=2) for f in firsts)]
    # when the flush takes its items
    batch, rest = batch_take(pending, max_items=256, flush=2)
    # then every first claim is in it, and the prefetch claim still waits
    assert items(batch) == firsts
    assert items(rest) == [waiting]


def test_more_first_claims_beyond_the_cap_than_the_tail_wait_for_the_next_flush():
    firsts = [first() for _ in range(256 + 256 // FIRST_CLAIM_TAIL_SHARE + 1)]
    batch, rest = batch_take([entry(f, arrived=2) for f in firsts], max_items=256, flush=2)
    assert items(batch) == firsts[:256]
    assert items(rest) == firsts[256:]


def test_the_tail_takes_only_first_claims_and_leaves_what_else_is_over_the_cap_in_order():
    result = ResultItem.__new__(ResultItem)  # only its type matters here
    firsts = [first() for _ in range(18)]
    pending = [entry(f, arrived=2) for f in firsts[:16]] + [
        entry(result, arrived=2),
        *(entry(f, arrived=2) for f in firsts[16:]),
    ]
    batch, rest = batch_take(pending, max_items=16, flush=2)
    assert items(batch) == firsts
    assert items(rest) == [result]
