"""The bus at its edges (frameos/bus.py): a subscriber that closed its own channel is let go,
unsubscribing twice (or something that is not a subscription) is harmless, and a closed bus
refuses every kind of publish."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from frameos.bus import Bus
from frameos.eventlog import EventLog
from frameos.events import Message


async def test_a_subscriber_that_closed_its_channel_is_let_go_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    bus = Bus(log, last_seq=log.open().last_seq)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        gone, stays = bus.subscribe("gone", 4), bus.subscribe("stays", 4)
        gone.__aiter__().close()  # the subscriber left without unsubscribing
        await bus.publish(Message(text="one"))
        with trio.fail_after(5):
            batch = await stays.__aiter__().receive()
        assert [e.seq for e in batch] == [1]
        assert gone not in bus._subscriptions and stays in bus._subscriptions
        bus.unsubscribe(stays)
        bus.unsubscribe(stays)  # twice: harmless
        bus.unsubscribe("not a subscription")
        await bus.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await bus.publish(Message(text="late"))
        with pytest.raises(trio.ClosedResourceError):
            bus.publish_ext("ext.late", "info", b"{}")
        assert bus.written_seq == 1
    log.close()
