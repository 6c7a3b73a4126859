"""Observers that print events: JSON lines or rich human lines on stdout (SPEC §4, §10).

Each sink is a bus `Subscription`: a bounded channel of batches that the bus fills without ever
waiting. When it is full the bus drops the batch and counts it; the sink then publishes a
`message` (warn) saying how many it dropped. Writing happens in a worker thread, so a stdout
pipe that blocks stalls only this sink, never the bus. The sink ends when the bus closes its
channel (after the bus's final flush): that is the drain. A broken pipe ends it early.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
from typing import BinaryIO

import trio

from frameos.bus import Bus, Subscription
from frameos.envelope import Envelope
from frameos.events import Message

JSON_DEPTH = 1024  # batches (a batch is what the bus wrote at once: 1 to a few hundred events)
HUMAN_DEPTH = 128
DRAIN_S = 3.0  # when cancelled: how long to go on writing what is already queued


class Sink:
    """A bus subscription written out by `run`; subclasses say what to write and how."""

    name = "sink"

    def __init__(self, bus: Bus, depth: int = JSON_DEPTH) -> None:
        self.bus = bus
        self.depth = depth
        self._subscription: Subscription | None = None
        self._reported = 0
        # Writes run in worker threads and a cancelled one is abandoned, not stopped: tickets
        # keep a later write (the drain) behind it, so the output stays in seq order.
        self._turns = threading.Condition()
        self._issued = 0
        self._turn = 0

    @property
    def dropped(self) -> int:
        """Events this sink lost because it fell behind."""
        return self._subscription.dropped if self._subscription is not None else 0

    def wants(self, envelope: Envelope) -> bool:
        return True

    def write(self, batch: list[Envelope]) -> bool:
        """Write a batch (in a worker thread); False when the output is gone for good."""
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every batch until the bus closes the subscription.

        On cancellation, what is already queued is still written, for at most DRAIN_S.
        """
        subscription = self._subscription = self.bus.subscribe(self.name, self.depth)
        task_status.started()
        try:
            async for batch in subscription:
                if not await self._write([*batch, *subscription.take_ready()]):
                    return
                self._report_drops()
        finally:
            with trio.move_on_after(DRAIN_S, shield=True):
                await self._write(subscription.take_ready())
            self.bus.unsubscribe(subscription)

    async def _write(self, envelopes: list[Envelope]) -> bool:
        wanted = [e for e in envelopes if self.wants(e)]
        if not wanted:
            return True
        ticket, self._issued = self._issued, self._issued + 1
        # abandon_on_cancel: a stdout that never drains must not hold up a bounded shutdown
        return await trio.to_thread.run_sync(
            self._write_in_turn, ticket, wanted, abandon_on_cancel=True
        )

    def _write_in_turn(self, ticket: int, batch: list[Envelope]) -> bool:
        with self._turns:
            self._turns.wait_for(lambda: self._turn == ticket)
        try:
            return self.write(batch)
        finally:
            with self._turns:
                self._turn += 1
                self._turns.notify_all()

    def _report_drops(self) -> None:
        lost = self.dropped - self._reported
        if lost and not self.bus.closed:
            self._reported = self.dropped
            self.bus.publish_nowait(
                Message(text=f"{self.name} fell behind and dropped {lost} events"), "warn"
            )


class JsonSink(Sink):
    """The envelope bytes, exactly as logged, one per line."""

    name = "stdout JSON sink"

    def __init__(self, bus: Bus, stream: BinaryIO | None = None) -> None:
        super().__init__(bus, JSON_DEPTH)
        self.fd = (stream or sys.stdout.buffer).fileno()

    def write(self, batch: list[Envelope]) -> bool:
        data = memoryview(b"".join(e.line for e in batch))
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except BlockingIOError:  # a stdout someone made non-blocking: wait until writable
                select.select([], [self.fd], [])
            except OSError:  # EPIPE, EIO (the terminal went away): nobody can read us now
                return False
        return True


class HumanSink(Sink):
    """Rich lines for people at a terminal; debug events only with --verbose."""

    name = "terminal renderer"

    def __init__(self, bus: Bus, *, verbose: bool = False, console: object | None = None) -> None:
        super().__init__(bus, HUMAN_DEPTH)
        from rich.console import Console

        class SinkConsole(Console):
            """rich's own turns a broken pipe into SystemExit(1) (and puts /dev/null on fd 1):
            here it is the BrokenPipeError it was, which `write` handles."""

            def on_broken_pipe(self) -> None:
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

        self.verbose = verbose
        # soft_wrap: one event, one line, also when a pipe makes rich assume 80 columns
        self.console = (
            console
            if isinstance(console, Console)
            else SinkConsole(highlight=False, soft_wrap=True)
        )

    def wants(self, envelope: Envelope) -> bool:
        return self.verbose or envelope.severity != "debug"

    def write(self, batch: list[Envelope]) -> bool:
        from frameos.render import render

        for envelope in batch:
            try:
                self.console.print(render(envelope))
            except OSError:  # EPIPE, EIO, not writable: nobody can read us now
                return False
        return True
