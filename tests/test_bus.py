"""The bus: log first, same bytes everywhere, bounded observers, the high-water mark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import trio

from frameos.bus import Bus
from frameos.envelope import Envelope
from frameos.eventlog import EventLog
from frameos.events import Message
from frameos.sinks import QueueSink


class Recorder:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.seen: list[Envelope] = []
        self.logged_when_seen: list[bool] = []

    def deliver(self, batch: Sequence[Envelope]) -> None:
        on_disk = self.log.path.read_bytes()
        self.logged_when_seen.extend(e.line in on_disk for e in batch)
        self.seen.extend(batch)


def open_log(tmp_path: Path) -> EventLog:
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    return log


async def test_events_reach_observers_only_after_the_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    recorder = Recorder(log)
    bus.subscribe(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(100):
            await bus.publish(Message(text=str(i)))
        await bus.aclose()
    assert [e.seq for e in recorder.seen] == list(range(1, 101))
    assert all(recorder.logged_when_seen)
    assert log.path.read_bytes() == b"".join(e.line for e in recorder.seen)
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


class Stuck:
    """An observer that never drains: it must not slow the bus."""

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, batch: Sequence[Envelope]) -> None:
        self.calls += 1


async def test_slow_sink_drops_with_a_count_and_a_later_message(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    release = trio.Event()

    class SlowSink(QueueSink):
        name = "slow sink"
        written: ClassVar[list[Envelope]] = []

        def write(self, batch: list[Envelope]) -> None:
            trio.from_thread.run(release.wait)
            self.written.extend(batch)

    sink = SlowSink(bus, capacity=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(sink.run)
        await bus.publish(Message(text="first"))
        await trio.sleep(0.05)  # the sink takes "first" and blocks writing it
        for i in range(50):
            await bus.publish(Message(text=str(i)))
        await trio.sleep(0.05)
        assert sink.dropped == 40
        assert bus.dropped == 40
        release.set()
        await trio.sleep(0.05)
        sink.close()
        await bus.aclose()
    texts = [e.fields()["text"] for e in SlowSink.written]
    assert "slow sink fell behind and dropped 40 events" in texts
    # the log never drops
    assert log.path.read_bytes().count(b"\n") == bus.published
    log.close()


async def test_publish_waits_only_above_the_high_water_mark(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log, high_water_bytes=1000)
    stuck = Stuck()
    bus.subscribe(stuck)
    for i in range(20):  # the writer is not running: the buffer fills
        bus.publish_nowait(Message(text=f"{i:0100d}"))
    published = False

    async def publisher() -> None:
        nonlocal published
        await bus.publish(Message(text="after"))
        published = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.sleep(0.05)
        assert not published  # above the mark: waits for the disk
        await nursery.start(bus.run)
        await trio.sleep(0.05)
        assert published
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


async def test_fsync_batch_groups_commits_and_syncs_at_close(tmp_path: Path) -> None:
    log = CountingLog(tmp_path / "events.jsonl")
    log.open()
    bus = Bus(log, fsync="batch")
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(100):  # ~100 batches over ~0.2 s
            await bus.publish(Message(text=str(i)))
            await trio.sleep(0.002)
        await bus.aclose()
    assert 1 <= CountingLog.syncs <= 100 // 5  # grouped: at most one pass per 20 ms (+ close)
    assert log.path.read_bytes().count(b"\n") == 100
    log.close()
