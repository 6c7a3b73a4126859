"""Observers that print events: JSON lines or rich human lines on stdout (SPEC §4, §10).

Each sink owns a bounded queue. When it is full the sink drops, counts, and later publishes a
`message` (warn) saying how many it dropped. Writing happens in a worker thread, so a stdout
pipe that blocks stalls only this sink, never the bus.
"""

from __future__ import annotations

import io
import os
import sys
from collections import deque
from collections.abc import Sequence
from typing import BinaryIO

import trio

from frameos.bus import Bus
from frameos.envelope import Envelope
from frameos.events import Message

SINK_CAPACITY = 65_536
DRAIN_S = 3.0


class QueueSink:
    """A bounded queue of envelopes drained by `run`; subclasses say how to write a batch."""

    name = "sink"

    def __init__(self, bus: Bus, capacity: int = SINK_CAPACITY) -> None:
        self.bus = bus
        self.capacity = capacity
        self._queue: deque[Envelope] = deque()
        self._wake = trio.Event()
        self.dropped = 0
        self._unreported = 0
        self._closing = False

    def deliver(self, batch: Sequence[Envelope]) -> None:
        room = self.capacity - len(self._queue)
        if room >= len(batch):
            self._queue.extend(batch)
        else:
            self._queue.extend(batch[: max(room, 0)])
            lost = len(batch) - max(room, 0)
            self.dropped += lost
            self._unreported += lost
        self._wake.set()

    def wants(self, envelope: Envelope) -> bool:
        return True

    def write(self, batch: list[Envelope]) -> None:
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until `close`; on cancellation, drain what is left (bounded)."""
        self.bus.subscribe(self, lambda: self.dropped)
        task_status.started()
        try:
            while not (self._closing and not self._queue):
                await self._wake.wait()
                self._wake = trio.Event()
                await self._drain()
        finally:
            self.bus.unsubscribe(self)
            with trio.move_on_after(DRAIN_S, shield=True):
                await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            batch = [e for e in self._queue if self.wants(e)]
            self._queue.clear()
            if batch:
                await trio.to_thread.run_sync(self.write, batch)
        if self._unreported and not self._closing:
            lost, self._unreported = self._unreported, 0
            self.bus.publish_nowait(
                Message(text=f"{self.name} fell behind and dropped {lost} events"), "warn"
            )

    def close(self) -> None:
        """Finish after writing what is queued."""
        self._closing = True
        self._wake.set()


class JsonSink(QueueSink):
    """The envelope bytes, exactly as logged, one per line."""

    name = "stdout JSON sink"

    def __init__(self, bus: Bus, stream: BinaryIO | None = None) -> None:
        super().__init__(bus)
        self.fd = (stream or sys.stdout.buffer).fileno()

    def write(self, batch: list[Envelope]) -> None:
        data = memoryview(b"".join(e.line for e in batch))
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except BrokenPipeError:
            self._closing = True


class HumanSink(QueueSink):
    """Rich lines for people at a terminal; debug events only with --verbose."""

    name = "terminal renderer"

    def __init__(self, bus: Bus, *, verbose: bool = False, console: object | None = None) -> None:
        super().__init__(bus, capacity=4096)
        from rich.console import Console

        self.verbose = verbose
        # soft_wrap: one event, one line, also when a pipe makes rich assume 80 columns
        self.console = (
            console if isinstance(console, Console) else Console(highlight=False, soft_wrap=True)
        )

    def wants(self, envelope: Envelope) -> bool:
        return self.verbose or envelope.severity != "debug"

    def write(self, batch: list[Envelope]) -> None:
        from frameos.render import render

        for envelope in batch:
            try:
                self.console.print(render(envelope))
            except (BrokenPipeError, io.UnsupportedOperation):
                self._closing = True
                return
