"""The bus: log first, same bytes everywhere, bounded subscriptions, the drain, the mark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos.bus import Bus, Subscription
from frameos.envelope import Envelope
from frameos.eventlog import EventLog
from frameos.events import Message


def open_log(tmp_path: Path) -> EventLog:
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    return log


async def record(
    subscription: Subscription, log: EventLog, seen: list[Envelope], logged: list[bool]
) -> None:
    async for batch in subscription:
        on_disk = log.path.read_bytes()
        logged.extend(e.line in on_disk for e in batch)
        seen.extend(batch)


async def test_events_reach_subscribers_only_after_the_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    seen: list[Envelope] = []
    logged: list[bool] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        nursery.start_soon(record, bus.subscribe("recorder", 1000), log, seen, logged)
        for i in range(100):
            await bus.publish(Message(text=str(i)))
        await bus.aclose()  # the recorder's `async for` ends: the nursery can exit
    assert [e.seq for e in seen] == list(range(1, 101))
    assert all(logged)
    assert log.path.read_bytes() == b"".join(e.line for e in seen)
    assert all(isinstance(e.event, Message) for e in seen)  # the model rides along
    log.close()


async def test_aclose_is_the_drain_for_every_subscriber(tmp_path: Path) -> None:
    """Events still pending at `aclose` are written, then delivered, then the channels close."""
    log = open_log(tmp_path)
    bus = Bus(log)
    first, second = bus.subscribe("a", 100), bus.subscribe("b", 100)
    got: dict[str, list[int]] = {"a": [], "b": []}

    async def drain(name: str, subscription: Subscription) -> None:
        async for batch in subscription:
            got[name].extend(e.seq for e in batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, "a", first)
        nursery.start_soon(drain, "b", second)
        for i in range(5):
            bus.publish_nowait(Message(text=str(i)))  # pending: the writer has not started
        await nursery.start(bus.run)
        await bus.aclose()
    assert got == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4, 5]}
    late = bus.subscribe("late", 10)
    async for _ in late:  # closed at once: the bus is done
        pytest.fail("a subscription made after the bus closed got a batch")
    with pytest.raises(trio.ClosedResourceError):
        bus.publish_nowait(Message(text="too late"))
    log.close()


async def test_cancelling_run_also_flushes_and_closes(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    subscription = bus.subscribe("s", 100)
    seqs: list[int] = []

    async def drain() -> None:
        async for batch in subscription:
            seqs.extend(e.seq for e in batch)

    async with trio.open_nursery() as outer:
        outer.start_soon(drain)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            bus.publish_nowait(Message(text="x"))
            nursery.cancel_scope.cancel()
    assert seqs == [1]
    assert log.path.read_bytes().count(b"\n") == 1
    log.close()


async def test_unsubscribe_ends_that_subscriber_only(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    leaving, staying = bus.subscribe("leaving", 10), bus.subscribe("staying", 10)
    ended = trio.Event()

    async def leave() -> None:
        async for _ in leaving:
            pass
        ended.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        nursery.start_soon(leave)
        bus.unsubscribe(leaving)
        with trio.fail_after(5):
            await ended.wait()
        await bus.publish(Message(text="x"))
        await bus.aclose()
    assert [e.seq for batch in [staying.take_ready()] for e in batch] == [1]
    log.close()


async def test_seq_continues_from_the_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log, last_seq=41)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        envelope = await bus.publish(Message(text="x"))
        await bus.aclose()
    assert envelope.seq == 42
    log.close()


async def test_a_full_subscription_drops_with_a_count_and_never_slows_the_bus(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    stuck = bus.subscribe("stuck", 2)  # never read
    fine = bus.subscribe("fine", 100)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(10):  # ten batches of one event
            await bus.publish(Message(text=str(i)))
            await trio.testing.wait_all_tasks_blocked()
        assert bus.written_seq == 10
        await bus.aclose()
    assert (stuck.dropped, fine.dropped, bus.dropped) == (8, 0, 8)
    assert len(fine.take_ready()) == 10
    log.close()


async def test_slow_sink_drops_with_a_count_and_a_later_message(tmp_path: Path) -> None:
    from frameos.sinks import Sink

    log = open_log(tmp_path)
    bus = Bus(log)
    release = trio.Event()
    reported = trio.Event()
    token = trio.lowlevel.current_trio_token()
    written: list[Envelope] = []

    class SlowSink(Sink):
        name = "slow sink"

        def write(self, batch: list[Envelope]) -> bool:
            trio.from_thread.run(release.wait, trio_token=token)
            written.extend(batch)
            if any(b"dropped" in e.line for e in batch):
                trio.from_thread.run_sync(reported.set, trio_token=token)
            return True

    sink = SlowSink(bus, depth=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(sink.run)
        await bus.publish(Message(text="first"))
        await trio.testing.wait_all_tasks_blocked()  # the sink took "first" and blocks in write
        for i in range(10):
            await bus.publish(Message(text=str(i)))
            await trio.testing.wait_all_tasks_blocked()
        assert (sink.dropped, bus.dropped) == (8, 8)
        release.set()
        with trio.fail_after(5):
            await reported.wait()
        await bus.aclose()
    texts = [e.fields()["text"] for e in written]
    assert texts == ["first", "0", "1", "slow sink fell behind and dropped 8 events"]
    assert log.path.read_bytes().count(b"\n") == bus.published  # the log never drops
    log.close()


async def test_publish_waits_only_above_the_high_water_mark(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log, high_water_bytes=1000)
    bus.subscribe("never read", 1)
    for i in range(20):  # the writer is not running: the buffer fills
        bus.publish_nowait(Message(text=f"{i:0100d}"))  # never waits, never drops
    published = trio.Event()

    async def publisher() -> None:
        await bus.publish(Message(text="after"))
        published.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert not published.is_set()  # above the mark: waits for the disk
        await nursery.start(bus.run)
        with trio.fail_after(5):
            await published.wait()
        await bus.aclose()
    assert bus.written_seq == 21
    log.close()


async def test_ring_after(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log, ring_size=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(8):
            await bus.publish(Message(text=str(i)))
        await bus.aclose()
    recent = bus.ring_after(5)
    assert recent is not None
    assert [e.seq for e in recent] == [6, 7, 8]
    assert bus.ring_after(1) is None  # only the log has seq 2
    assert bus.ring_after(8) == []
    log.close()


class CountingLog(EventLog):
    syncs = 0

    def sync(self) -> None:
        type(self).syncs += 1
        super().sync()


async def test_fsync_batch_groups_commits_and_syncs_at_close(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    log = CountingLog(tmp_path / "events.jsonl")
    log.open()
    bus = Bus(log, fsync="batch")
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(100):  # 100 batches over 0.2 s
            await bus.publish(Message(text=str(i)))
            await trio.sleep(0.002)
        await bus.aclose()
    assert 1 <= CountingLog.syncs <= 100 // 5  # grouped: at most one pass per 20 ms (+ close)
    assert log.path.read_bytes().count(b"\n") == 100
    log.close()


class Deliverer:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def deliver(self, batch: Sequence[Envelope]) -> None:
        self.seen.extend(e.seq for e in batch)


async def test_deprecated_deliver_subscribers_still_work(tmp_path: Path) -> None:
    """Kept until the websocket hub and the systemd notifier move to `subscribe(name, depth)`."""
    log = open_log(tmp_path)
    bus = Bus(log)
    deliverer = Deliverer()
    bus.subscribe(deliverer)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await bus.publish(Message(text="x"))
        await trio.testing.wait_all_tasks_blocked()
        bus.unsubscribe(deliverer)
        await bus.publish(Message(text="y"))
        await bus.aclose()
    assert deliverer.seen == [1]
    log.close()
