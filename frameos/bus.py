"""The event bus (SPEC §4): number, serialize once, log durably, then fan out.

    publish ──► pending batch ──► writer task: one write per batch
                                      │
                                      └─► ring (recent events) ─► every subscriber's `deliver`

`publish` never waits on an observer. It waits only when the log's unwritten buffer is above the
high-water mark (a stalled disk). An event reaches observers only after it is in the log file.

fsync policy: `always` writes and fsyncs each batch in one worker-thread call before any observer
sees it (what a client saw is on disk). `batch` appends on the event loop (a few hundred bytes
into the page cache) and a group-commit task fsyncs in a worker thread whatever was written
since its last pass, at most every `FSYNC_GROUP_S`: a process crash loses nothing, a power cut at
most the last ~20 ms. `never` leaves syncing to the OS. A thread round trip costs ~150 µs of CPU
on a small VM, so at a few hundred events/s one hop per batch would be most of the bus's cost.
Subscribers own bounded queues and count their drops.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import trio

from frameos.envelope import Envelope, encode
from frameos.eventlog import EventLog
from frameos.events import Event, Severity

FsyncPolicy = Literal["always", "batch", "never"]
HIGH_WATER_BYTES = 8 << 20
RING_SIZE = 8192
FINAL_FLUSH_S = 5.0
FSYNC_GROUP_S = 0.02


class Subscriber(Protocol):
    """An observer of the bus: takes each written batch without blocking."""

    def deliver(self, batch: Sequence[Envelope]) -> None: ...


class Bus:
    """Publishes events to the durable log, then to subscribers. Run `run` in the outer nursery."""

    def __init__(
        self,
        log: EventLog,
        *,
        last_seq: int = 0,
        fsync: FsyncPolicy = "batch",
        high_water_bytes: int = HIGH_WATER_BYTES,
        ring_size: int = RING_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.fsync = fsync
        self.high_water_bytes = high_water_bytes
        self._clock = clock
        self._seq = last_seq
        self._pending: list[Envelope] = []
        self._pending_bytes = 0
        self._wake = trio.Event()
        self._below_hwm = trio.Event()
        self._below_hwm.set()
        self._closed = False
        self._done = trio.Event()
        self._dirty = trio.Event()
        self.ring: deque[Envelope] = deque(maxlen=ring_size)
        self.subscribers: list[Subscriber] = []
        self.published = 0
        self.written_seq = last_seq
        self._drop_counters: list[Callable[[], int]] = []

    # --- publishing ----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the newest published event (written or not)."""
        return self._seq

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> Envelope:
        """Publish without waiting, ever. For synchronous code paths of bounded rate."""
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        self._seq += 1
        envelope = encode(event, self._seq, self._clock(), severity)
        self._pending.append(envelope)
        self._pending_bytes += len(envelope.line)
        self.published += 1
        if self._pending_bytes > self.high_water_bytes:
            self._below_hwm = trio.Event()
        self._wake.set()
        return envelope

    async def publish(self, event: Event, severity: Severity | None = None) -> Envelope:
        """Publish; waits only while the log's unwritten buffer is above the high-water mark.

        Cancellation while waiting leaves the event unpublished.
        """
        if not self._below_hwm.is_set():
            await self._below_hwm.wait()
        return self.publish_nowait(event, severity)

    # --- subscribers ---------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, dropped: Callable[[], int] | None = None) -> None:
        self.subscribers.append(subscriber)
        if dropped is not None:
            self._drop_counters.append(dropped)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    @property
    def dropped(self) -> int:
        """Events dropped by observers (the log itself never drops)."""
        return sum(count() for count in self._drop_counters)

    def ring_after(self, seq: int) -> list[Envelope] | None:
        """Written events with seq > `seq` from memory, or None when the ring no longer has them."""
        if not self.ring:
            return [] if seq >= self.written_seq else None
        first = self.ring[0].seq
        if seq + 1 < first:
            return None
        start = seq + 1 - first
        return [self.ring[i] for i in range(max(0, start), len(self.ring))]

    # --- the writer ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until `aclose`; on cancellation, flush what is pending (bounded)."""
        async with trio.open_nursery() as nursery:
            if self.fsync == "batch":
                nursery.start_soon(self._group_commit)
            task_status.started()
            try:
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    if self._pending:
                        await self._write_batch()
                    if self._closed and not self._pending:
                        break
            finally:
                nursery.cancel_scope.cancel()
                with trio.move_on_after(FINAL_FLUSH_S, shield=True):
                    while self._pending:
                        await self._write_batch()
                    if self.fsync != "never":
                        await trio.to_thread.run_sync(self.log.sync)
                self._done.set()

    async def _group_commit(self) -> None:
        """fsync=batch: sync what was written since the last pass, at most every FSYNC_GROUP_S."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            await trio.to_thread.run_sync(self.log.sync)
            await trio.sleep(FSYNC_GROUP_S)

    async def _write_batch(self) -> None:
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        data = b"".join(e.line for e in batch)
        if self.fsync == "always":
            await trio.to_thread.run_sync(self._append_and_sync, data)
        else:
            self.log.append(data)  # page cache; a stalled disk here stops the watchdog pings
            self._dirty.set()
        self.written_seq = batch[-1].seq
        if not self._below_hwm.is_set():
            self._below_hwm.set()
        self.ring.extend(batch)
        for subscriber in tuple(self.subscribers):
            subscriber.deliver(batch)

    def _append_and_sync(self, data: bytes) -> None:
        self.log.append(data)
        self.log.sync()

    async def aclose(self) -> None:
        """Stop accepting events and wait until every published one is written and delivered."""
        self._closed = True
        self._wake.set()
        await self._done.wait()

    @property
    def bytes_logged(self) -> int:
        return self.log.bytes_written
