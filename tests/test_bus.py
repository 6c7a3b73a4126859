"""The bus: log first, same bytes everywhere, bounded subscriptions, the drain, the mark."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import eventlog
from frameos.bus import Bus, Subscription
from frameos.envelope import Envelope, decode
from frameos.errors import EventLogError
from frameos.eventlog import EventLog
from frameos.events import Message
from tests.conftest import require, require_tools


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


# --- faults (issue 8 #2) ---------------------------------------------------------------------


class FullDisk:
    """os.write for the log's fd fails with ENOSPC (after a short write) while `full` is set."""

    def __init__(
        self, log: EventLog, monkeypatch: pytest.MonkeyPatch, failures: int | None = None
    ) -> None:
        self.log, self.full, self.calls, self.failures = log, True, 0, failures
        self.real_write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.failures is not None and self.calls >= self.failures:
            self.full = False
        if fd != self.log._fd or not self.full:
            return self.real_write(fd, data)
        self.calls += 1
        if self.calls == 1 and len(data) > 40:
            return self.real_write(fd, bytes(data)[:40])  # a short write, mid-line
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_full_disk_is_a_fault_retried_with_no_gap_and_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The old bus let ENOSPC out of `run`: a traceback, exit 1, a partial last line."""
    log = open_log(tmp_path)
    bus = Bus(log)
    seen: list[Envelope] = []
    logged: list[bool] = []
    disk = FullDisk(log, monkeypatch)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        nursery.start_soon(record, bus.subscribe("recorder", 1000), log, seen, logged)
        for i in range(3):
            await bus.publish(Message(text=f"during {i}"))
        await trio.sleep(5)  # the writer retries: 50 ms, 100 ms, ... 2 s
        assert bus.fault is not None and "No space left on device" in bus.fault
        assert "the disk is full" in bus.fault
        assert bus.write_errors >= 5
        assert seen == []  # observers see nothing the log does not have
        assert b"\n" not in log.path.read_bytes()  # not even a partial line
        disk.full = False
        await bus.publish(Message(text="after"))
        await bus.aclose()
    assert bus.fault is None
    texts = [(e.severity, e.fields()["text"]) for e in seen]
    assert texts[:3] == [("info", "during 0"), ("info", "during 1"), ("info", "during 2")]
    severity, text = texts[3]  # the fault, in seq order once the disk had room
    assert severity == "error" and "event log write failed: No space left on device" in text
    assert "retrying with backoff" in text
    assert texts[4:] == [  # "after" was published while the writer was backing off
        ("info", "after"),
        ("info", f"event log write works again ({bus.write_errors} errors so far)"),
    ]
    assert [e.seq for e in seen] == list(range(1, 7))
    assert log.path.read_bytes() == b"".join(e.line for e in seen)
    assert all(logged)
    log.close()


async def test_publishers_wait_at_the_mark_while_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    log = open_log(tmp_path)
    bus = Bus(log, high_water_bytes=1000)
    disk = FullDisk(log, monkeypatch)
    waiting, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)

        async def publisher() -> None:
            for i in range(30):  # ~3 KB: past the mark
                if bus._unwritten_bytes > bus.high_water_bytes:
                    waiting.set()
                await bus.publish(Message(text=f"{i:040d}"))
            done.set()

        nursery.start_soon(publisher)
        with trio.fail_after(60):
            await waiting.wait()
        await trio.sleep(10)
        assert bus.last_seq < 31  # blocked, nothing lost: the events wait in memory
        assert bus.fault is not None
        bus.publish_nowait(Message(text="a sync caller never waits"))  # nor raises, nor drops
        disk.full = False
        with trio.fail_after(60):
            await done.wait()
        await bus.aclose()
    seqs = [decode(line).seq for line in log.read_after(0, 1000).lines]
    assert seqs == list(range(1, bus.last_seq + 1))
    assert bus.published == 30 + 1 + 2  # 30 events, the sync one, the fault and its end
    log.close()


async def test_a_failing_fsync_is_a_fault_until_it_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # real time (0.35 s of backoff): the mock clock would jump while the fsync thread runs
    log = open_log(tmp_path)
    bus = Bus(log, fsync="always")
    real_fsync, failures = os.fsync, [3]

    def eio(fd: int) -> None:
        if fd == log._fd and failures[0]:
            failures[0] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", eio)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await bus.publish(Message(text="x"))
        await bus.aclose()
    texts = [decode(line).fields()["text"] for line in log.read_after(0, 10).lines]
    assert texts[0] == "x"
    assert "event log fsync failed: Input/output error" in str(texts[1])
    assert texts[2] == "event log fsync works again (3 errors so far)"
    assert bus.write_errors == 3
    log.close()


async def test_a_failed_rotation_is_reported_and_writing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "events.jsonl", max_bytes=300, keep=20)
    log.open()
    monkeypatch.setattr(eventlog, "ROTATE_RETRY_FIRST_S", 0.0)
    log._rotate_delay = 0.0
    real_open, failures = os.open, [1]

    def emfile(file: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if str(file).endswith(".new") and failures[0]:
            failures[0] -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(file, flags, mode)

    monkeypatch.setattr(os, "open", emfile)
    bus = Bus(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(10):
            await bus.publish(Message(text=f"{i:0100d}"))
            await trio.testing.wait_all_tasks_blocked()
        await bus.aclose()
    texts = [decode(line).fields()["text"] for line in log.read_after(0, 100).lines]
    assert any("event log rotation failed: Too many open files" in str(t) for t in texts)
    assert "event log rotation works again (1 errors so far)" in texts
    assert bus.fault is None
    log.close()


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
async def test_a_real_full_tmpfs_then_room_again(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root for a tmpfs")
    require_tools("mount", "umount")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        log = open_log(disk)  # 256 KiB free: opens
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (200 << 10))
        bus = Bus(log)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            for i in range(200):  # ~100 KB: more than the disk has
                bus.publish_nowait(Message(text=f"{i:0400d}"))
            with trio.fail_after(10):
                while bus.fault is None:  # a condition with a deadline: the real disk fills
                    await trio.sleep(0.01)
            filler.unlink()
            await bus.aclose()
        lines = log.path.read_bytes().splitlines()
        seqs = [decode(line).seq for line in lines]  # every line parses: none torn
        assert seqs == list(range(1, 203))
        texts = [decode(line).fields()["text"] for line in lines]
        assert any("No space left on device" in str(t) for t in texts)
        assert texts[-1] == f"event log write works again ({bus.write_errors} errors so far)"
        log.close()
        with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:  # up to ENOSPC
                handle.write(b"\0" * 4096)
        with pytest.raises(EventLogError, match="bytes free on its filesystem; free space"):
            EventLog(disk / "events.jsonl").open()  # a restart on the still-full disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


async def test_cancelled_during_a_fault_the_batch_in_flight_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The stop comes while the writer retries a batch: the final flush writes that batch too."""
    log = open_log(tmp_path)
    bus = Bus(log)
    FullDisk(log, monkeypatch, failures=6)  # ~1.5 s of backoff, then room again
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        for i in range(3):
            bus.publish_nowait(Message(text=f"in flight {i}"))
        await trio.sleep(0.5)  # retrying the first batch
        for i in range(2):
            bus.publish_nowait(Message(text=f"pending {i}"))
        nursery.cancel_scope.cancel()
    seqs = [decode(line).seq for line in log.path.read_bytes().splitlines(keepends=True)]
    assert seqs == list(range(1, bus.last_seq + 1))  # nothing lost, nothing twice
    texts = [decode(line).fields()["text"] for line in log.read_after(0, 100).lines]
    assert texts[:3] == ["in flight 0", "in flight 1", "in flight 2"]
    log.close()


async def test_a_disk_that_never_comes_back_is_said_on_stderr(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    FullDisk(log, monkeypatch)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        bus.publish_nowait(Message(text="lost"))
        await bus.aclose()  # gives up after FINAL_FLUSH_S
    err = capsys.readouterr().err
    assert "events could not be written (event log write failed: No space left" in err
    log.close()


async def test_a_rotation_does_not_freeze_the_loop_while_a_slow_fsync_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """M4: with fsync=batch the append rotated on the event loop: it waited there for the fd
    lock, held by the group commit's fsync (a slow disk), then fsynced three times itself."""
    import threading

    log = EventLog(tmp_path / "events.jsonl", max_bytes=4096, keep=2)
    log.open()
    bus = Bus(log, fsync="batch")
    in_fsync, release = threading.Event(), threading.Event()
    timed_out: list[bool] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if not in_fsync.is_set():  # the first one (the group commit's) takes its time
            in_fsync.set()
            timed_out.append(not release.wait(10))  # a frozen loop cannot release it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        bus.publish_nowait(Message(text="first"))
        await trio.to_thread.run_sync(in_fsync.wait)  # the group commit holds the lock now
        for i in range(100):  # past max_bytes: the writer rotates
            bus.publish_nowait(Message(text=f"filler {i:03d} " + "x" * 40))
        await trio.sleep(0.2)  # returns only if the loop runs while the fsync holds the lock
        release.set()
        await bus.aclose()
    assert timed_out == [False]
    assert log.path.with_name("events.jsonl.1").exists()  # the rotation happened
    lines = [*log.path.with_name("events.jsonl.1").read_bytes().splitlines()]
    lines += log.path.read_bytes().splitlines()
    assert [decode(line).seq for line in lines] == list(range(1, 102))
    log.close()


async def test_a_hung_fsync_does_not_stall_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final flush is bounded by FINAL_FLUSH_S, but its fsync (and the group commit's)
    ran in threads that cancellation waited for: a hung disk held the exit for good. `close`
    waited on the same lock."""
    import threading

    from frameos import bus as bus_module

    monkeypatch.setattr(bus_module, "FINAL_FLUSH_S", 0.1)
    monkeypatch.setattr(eventlog, "LOCK_WAIT_S", 0.1, raising=False)
    log = open_log(tmp_path)
    bus = Bus(log, fsync="batch")
    in_fsync, release = threading.Event(), threading.Event()
    timed_out: list[bool] = []
    real_fsync = os.fsync

    def hung_fsync(fd: int) -> None:
        in_fsync.set()
        timed_out.append(not release.wait(10))  # the disk answers only once the test is done
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", hung_fsync)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await bus.publish(Message(text="written, never synced"))
            await trio.to_thread.run_sync(in_fsync.wait)  # the group commit hangs in fsync
            await bus.aclose()
        log.close()  # and closing does not wait for the fsync in flight either
        assert log._fd is None
    finally:
        release.set()
    assert not any(timed_out)
    assert log.path.read_bytes().count(b"\n") == 1


async def test_fsync_always_writes_then_syncs_a_batch_in_two_thread_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the module docstring says of fsync=always (it said "one worker-thread call")."""
    log = open_log(tmp_path)
    bus = Bus(log, fsync="always")
    calls: list[str] = []
    real_run_sync = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(getattr(fn, "__name__", "?"))
        return await real_run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        written = bus.subscribe("test", 4)
        await bus.publish(Message(text="durable"))
        async for _ in written:  # seen only once written and synced
            break
        assert calls == ["<lambda>", "sync"]
        await bus.aclose()
    log.close()
