"""The stdout sinks: subscriptions that write the logged bytes, filter, end with the bus."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from rich.console import Console

from frameos import events as ev
from frameos.bus import Bus
from frameos.eventlog import EventLog
from frameos.sinks import HumanSink, JsonSink


def open_log(tmp_path: Path) -> EventLog:
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    return log


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_json_sink_writes_the_logged_bytes_and_ends_with_the_bus(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    with open(write_end, "wb") as stream:
        sink = JsonSink(bus, stream)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await nursery.start(sink.run)
            for i in range(500):
                await bus.publish(ev.Message(text=str(i)))
                if i % 50 == 0:
                    await trio.lowlevel.checkpoint()
            await bus.aclose()  # no sink.close(): the bus closing its channel is the drain
    os.set_blocking(read_end, True)
    try:
        printed = read_all(read_end)
    finally:
        os.close(read_end)
    assert printed == log.path.read_bytes()  # the same bytes: stdout JSON == log
    assert printed.count(b"\n") == 500
    assert sink.dropped == 0
    log.close()


async def test_human_sink_hides_debug_events_unless_verbose(tmp_path: Path) -> None:
    outputs = {}
    for verbose in (False, True):
        log = EventLog(tmp_path / f"events-{verbose}.jsonl")
        log.open()
        bus = Bus(log)
        out = io.StringIO()
        sink = HumanSink(bus, verbose=verbose, console=Console(file=out, width=200))
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await nursery.start(sink.run)
            await bus.publish(ev.RuntimeHeartbeat(uptime_seconds=1, server="s", loop_lag_ms=0.5))
            await bus.publish(ev.Message(text="hello people"))
            await bus.aclose()
        outputs[verbose] = out.getvalue()
        log.close()
    assert "hello people" in outputs[False] and "heartbeat" not in outputs[False]
    assert "hello people" in outputs[True] and "heartbeat" in outputs[True]


async def test_a_broken_stdout_ends_the_sink_not_the_bus(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads stdout any more: EPIPE
    ended = trio.Event()
    with open(write_end, "wb") as stream:
        sink = JsonSink(bus, stream)

        async def run_sink() -> None:
            await sink.run()
            ended.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            nursery.start_soon(run_sink)
            await trio.testing.wait_all_tasks_blocked()
            await bus.publish(ev.Message(text="into the void"))
            with trio.fail_after(5):
                await ended.wait()  # the sink gave up on its output...
            await bus.publish(ev.Message(text="still logged"))  # ...the bus goes on
            await bus.aclose()
    assert log.path.read_bytes().count(b"\n") == 2
    log.close()


async def test_a_cancelled_sink_still_writes_what_is_queued(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    bus = Bus(log)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    with open(write_end, "wb") as stream:
        sink = JsonSink(bus, stream)
        async with trio.open_nursery() as outer:
            await outer.start(bus.run)
            async with trio.open_nursery() as inner:
                await inner.start(sink.run)
                for i in range(20):
                    bus.publish_nowait(ev.Message(text=str(i)))
                    await trio.testing.wait_all_tasks_blocked()  # written: queued for the sink
                inner.cancel_scope.cancel()
            await bus.aclose()
    os.set_blocking(read_end, True)
    try:
        printed = read_all(read_end)
    finally:
        os.close(read_end)
    assert printed == log.path.read_bytes()
    log.close()


class HungUpTerminal(io.TextIOBase):
    """A terminal that hung up: every write fails with EIO (a plain OSError)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


@pytest.mark.parametrize("output", ["closed pipe", "hung-up terminal"])
async def test_a_broken_terminal_ends_the_human_sink_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    """M2: rich turned EPIPE into SystemExit(1) (after putting /dev/null on fd 1) and EIO came
    as a plain OSError: either escaped the sink and tore down the run before runtime:stop."""
    log = open_log(tmp_path)
    bus = Bus(log)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads stdout any more: EPIPE
    with open(write_end, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe if output == "closed pipe" else HungUpTerminal())
        sink = HumanSink(bus)  # writes to sys.stdout, as `frameos run` does
        ended = trio.Event()

        async def run_sink() -> None:
            await sink.run()
            ended.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            nursery.start_soon(run_sink)
            await trio.testing.wait_all_tasks_blocked()
            await bus.publish(ev.Message(text="into the void"))
            with trio.fail_after(5):
                await ended.wait()  # the sink gave up on its output...
            await bus.publish(ev.Message(text="still logged"))  # ...the bus goes on
            await bus.aclose()
        with contextlib.suppress(OSError):
            pipe.close()
    assert log.path.read_bytes().count(b"\n") == 2
    log.close()
