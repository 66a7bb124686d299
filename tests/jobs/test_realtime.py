"""jobs.realtime: a notification reaches the channel layer whichever thread sends it (these call
the module's send itself: ``*_on_commit`` hands it the message once the transaction commits)."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from jobs import realtime


async def test_a_send_from_synchronous_code_inside_a_running_event_loop_is_delivered():
    # given a consumer's channel in a group, and synchronous code that runs inside this thread's
    # event loop (async_to_sync cannot be used there: it would block the loop)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("job.realtime-test", channel)
    try:
        # when that code notifies the group and one consumer
        realtime._send("job.realtime-test", {"type": "job.tick", "n": 1}, group=True)
        realtime._send(channel, {"type": "worker.cancel", "n": 2}, group=False)
        # then the loop delivers both once it gets control back, and keeps no task behind
        received = [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(2)]
        assert sorted(m["n"] for m in received) == [1, 2]
        for _ in range(500):  # each send's task ends just after its message is queued
            if not realtime._in_flight:
                break
            await asyncio.sleep(0.01)
        assert not realtime._in_flight
    finally:
        await layer.group_discard("job.realtime-test", channel)


def test_a_send_from_a_thread_without_an_event_loop_is_delivered_before_it_returns():
    from asgiref.sync import async_to_sync

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    realtime._send(channel, {"type": "worker.cancel", "n": 3}, group=False)
    assert async_to_sync(layer.receive)(channel) == {"type": "worker.cancel", "n": 3}
