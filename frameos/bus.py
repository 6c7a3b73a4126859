"""The event bus (SPEC §4): number, serialize once, log durably, then fan out.

    publish ──► pending ──► writer task: one write per batch ──► ring (recent events)
                                                              └─► each Subscription's channel

`publish` never waits on an observer. It waits only while the events not yet in the log pass
the high-water mark (a stalled or full disk). An event reaches observers only after it is in the
log file. Each subscriber owns one bounded memory channel of batches; the bus hands a batch with
`send_nowait` and counts a drop when the channel is full. `aclose` (or cancelling `run`) writes
out what is pending, then closes every channel: each subscriber's `async for` ends, and that is
the drain.

fsync policy: `always` writes each batch, then fsyncs it, in two worker-thread calls, before any
observer sees it (what a client saw is on disk; a failed fsync is retried without writing the
batch again). `batch` appends on the event loop (a few hundred bytes into the page cache) and a
group-commit task fsyncs in a worker thread whatever was written since its last pass, at most
every `FSYNC_GROUP_S`: a process crash loses nothing, a power cut at most the last ~20 ms.
`never` leaves syncing to the OS. A thread round trip costs ~150 µs of CPU on a small VM, so at
a few hundred events/s one hop per batch would be most of the bus's cost. Rotation (which waits
for an fsync in flight and fsyncs itself) always runs in a worker thread, and a cancelled fsync
thread is abandoned, so a hung disk can hold up neither the loop nor the exit.

Faults (ENOSPC, EIO, EMFILE): a failed write, fsync or rotation never raises out of `run`. The
writer retries the same batch with backoff (`BACKOFF_FIRST_S` doubling to `BACKOFF_MAX_S`; the
log leaves no torn line), `fault` names the failure and `write_errors` counts them, a `message`
(error) says what failed and that it retries (written, in seq order, once the disk has room),
and a `message` (info) says when it works again. Meanwhile events wait in memory; `publish`
waits above the high-water mark. `publish_nowait` never waits and never drops: it may take the
buffer past the mark (its callers are synchronous paths of bounded rate, for which raising would
be worse than a few more KB of memory).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

import trio

from frameos.envelope import Envelope, encode, encode_ext
from frameos.eventlog import EventLog, explain
from frameos.events import Event, Message, Severity

FsyncPolicy = Literal["always", "batch", "never"]
HIGH_WATER_BYTES = 8 << 20
RING_SIZE = 8192
FINAL_FLUSH_S = 5.0
FSYNC_GROUP_S = 0.02
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0

Batch = Sequence[Envelope]


class Wakeup:
    """Wakes the tasks waiting now; a wake-up nobody waited for lets the next `wait` pass once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Return at the next (or a pending) `set`. Cancellation leaves nothing behind."""
        await self._event.wait()
        if self._event.is_set():
            self._event = trio.Event()


class Subscription:
    """One subscriber's bounded channel of written batches, in seq order.

    `async for batch in sub` ends when the bus closes the channel (`aclose`, `unsubscribe`).
    """

    def __init__(self, name: str, depth: int) -> None:
        self.name = name
        self.depth = depth
        self.dropped = 0  # events lost because the channel was full
        self._send, self._receive = trio.open_memory_channel[Batch](depth)

    def __aiter__(self) -> trio.MemoryReceiveChannel[Batch]:
        return self._receive

    def take_ready(self) -> list[Envelope]:
        """Every envelope already queued, without waiting (to write several batches at once)."""
        ready: list[Envelope] = []
        while True:
            try:
                ready.extend(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return ready

    def _offer(self, batch: Batch) -> bool:
        """Hand a batch over without waiting; False when the subscriber has gone."""
        try:
            self._send.send_nowait(batch)
        except trio.WouldBlock:
            self.dropped += len(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _close(self) -> None:
        self._send.close()


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
        self._writing: list[Envelope] = []  # the batch being written (kept if cancelled)
        self._appended = False  # whether `_writing` is in the file already
        self._unwritten_bytes = 0  # pending + the batch being written
        self._wake = Wakeup()  # the writer: something is pending
        self._room = Wakeup()  # publishers: the unwritten bytes went down
        self._dirty = Wakeup()  # the group commit: something was written
        self._closed = False
        self._writer_scope = trio.CancelScope()
        self._done = trio.Event()
        self.ring: deque[Envelope] = deque(maxlen=ring_size)
        self._subscriptions: list[Subscription] = []
        self._dropped_by_gone = 0
        self.published = 0
        self.written_seq = last_seq
        self._faults: dict[str, str] = {}
        self.write_errors = 0
        self._rotation_failures = log.rotation_failures

    # --- publishing ----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the newest published event (written or not)."""
        return self._seq

    @property
    def closed(self) -> bool:
        """True once `aclose` was called or `run` ended: publishing raises from then on."""
        return self._closed

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> Envelope:
        """Publish without waiting, ever, even above the high-water mark (never drops).

        For synchronous code paths of bounded rate. Raises trio.ClosedResourceError once the bus
        is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        return self._enqueue(event, severity)

    async def publish(self, event: Event, severity: Severity | None = None) -> Envelope:
        """Publish; waits only while the unwritten events are above the high-water mark.

        Raises trio.ClosedResourceError once the bus is closed. Cancellation while waiting
        leaves the event unpublished.
        """
        while self._unwritten_bytes > self.high_water_bytes and not self._closed:
            await self._room.wait()
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        return self._enqueue(event, severity)

    def publish_ext(self, name: str, severity: Severity, fields_json: bytes) -> Envelope:
        """Publish an external producer's `ext.NAME` event (`encode_ext`) without waiting, like
        `publish_nowait`. Raises ValueError for a name that is not `ext.*`, and
        trio.ClosedResourceError once the bus is closed."""
        if self._closed:
            raise trio.ClosedResourceError("the bus is closed")
        envelope = encode_ext(name, severity, fields_json, self._seq + 1, self._clock())
        self._seq = envelope.seq
        return self._append(envelope)

    def _enqueue(self, event: Event, severity: Severity | None) -> Envelope:
        self._seq = seq = self._seq + 1
        return self._append(encode(event, seq, self._clock(), severity))

    def _append(self, envelope: Envelope) -> Envelope:
        pending = self._pending
        pending.append(envelope)
        self._unwritten_bytes += len(envelope.line)
        self.published += 1
        if len(pending) == 1:  # the writer re-checks `_pending` before it waits again
            self._wake.set()
        return envelope

    # --- subscribers ---------------------------------------------------------------------------

    def subscribe(self, name: str, depth: int) -> Subscription:
        """A new subscription: a channel of `depth` batches, fed every batch once it is logged.

        Subscribing after the bus closed gives a closed subscription (its `async for` ends at
        once).
        """
        subscription = Subscription(name, depth)
        if self._done.is_set():
            subscription._close()
        else:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: object) -> None:
        """Close that subscription's channel (its `async for` ends after what is queued).

        Takes `object` so that observers may type the bus with their own Protocol.
        """
        if isinstance(subscription, Subscription):
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._dropped_by_gone += subscription.dropped
            subscription._close()

    @property
    def dropped(self) -> int:
        """Events dropped by subscribers (the log itself never drops)."""
        return self._dropped_by_gone + sum(s.dropped for s in self._subscriptions)

    def ring_after(self, seq: int) -> list[Envelope] | None:
        """Written events with seq > `seq` from memory, or None when the ring no longer has them."""
        if not self.ring:
            return [] if seq >= self.written_seq else None
        first = self.ring[0].seq
        if seq + 1 < first:
            return None
        start = seq + 1 - first
        return [self.ring[i] for i in range(max(0, start), len(self.ring))]

    # --- faults --------------------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        """What is failing in the log right now (None when healthy)."""
        return "; ".join(self._faults.values()) or None

    def _failed(self, what: str, exc: OSError) -> None:
        self.write_errors += 1
        if what in self._faults:
            return
        self._faults[what] = f"event log {what} failed: {explain(exc)}"
        then = "writing on in the current file" if what == "rotation" else "events wait in memory"
        self._enqueue(
            Message(
                text=f"{self._faults[what]} (event log {self.log.path}); retrying with "
                f"backoff, {then}"
            ),
            "error",
        )

    def _recovered(self, what: str) -> None:
        if self._faults.pop(what, None) is not None:
            self._enqueue(
                Message(text=f"event log {what} works again ({self.write_errors} errors so far)"),
                "info",
            )

    async def _until_done(self, what: str, step: Callable[[], None], *, thread: bool) -> None:
        """Run `step` until it succeeds, backing off while it fails; report the fault's start
        and end. Cancellation stops retrying, and abandons an fsync in its thread (a hung disk
        must not stall the exit; a write is never abandoned: it would race its retry)."""
        delay = BACKOFF_FIRST_S
        while True:
            try:
                if thread:
                    await trio.to_thread.run_sync(step, abandon_on_cancel=what == "fsync")
                else:
                    step()
            except OSError as exc:
                self._failed(what, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._recovered(what)
            return

    # --- the writer ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until `aclose` or cancellation; then flush what is pending (for at
        most FINAL_FLUSH_S while the disk fails) and close every subscription.
        """
        try:
            async with trio.open_nursery() as nursery:
                if self.fsync == "batch":
                    nursery.start_soon(self._group_commit)
                task_status.started()
                try:
                    with self._writer_scope:  # `aclose` cancels it: the rest is the final flush
                        while True:
                            await self._wake.wait()
                            while self._writing or self._pending:
                                await self._write_batch()
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.move_on_after(FINAL_FLUSH_S, shield=True):
                        while self._writing or self._pending:
                            await self._write_batch()
                        if self.fsync != "never":
                            await self._until_done("fsync", self.log.sync, thread=True)
        finally:
            self._closed = True
            if self._seq > self.written_seq:  # the disk never came back within FINAL_FLUSH_S
                print(
                    f"frameos: event log {self.log.path}: {self._seq - self.written_seq} events "
                    f"could not be written ({self.fault})",
                    file=sys.stderr,
                )
            for subscription in self._subscriptions:
                subscription._close()
            self._room.set()
            self._done.set()

    async def _group_commit(self) -> None:
        """fsync=batch: sync what was written since the last pass, at most every FSYNC_GROUP_S."""
        while True:
            await self._dirty.wait()
            await self._until_done("fsync", self.log.sync, thread=True)
            await trio.sleep(FSYNC_GROUP_S)

    async def _write_batch(self) -> None:
        """Write the oldest unwritten batch, then hand it to the subscribers.

        A cancelled write leaves its batch in `_writing` (and whether it reached the file in
        `_appended`), so the final flush goes on with the same batch: no gap, no duplicate.
        """
        if not self._writing:
            self._writing, self._pending = self._pending, []
            self._appended = False
        batch = self._writing
        data = b"".join(e.line for e in batch)
        if not self._appended:
            # fsync=batch: on the loop, into the page cache (a stalled disk here stops the
            # watchdog pings); fsync=always: in a thread, then the fsync before anyone sees it
            in_thread = self.fsync == "always"
            await self._until_done(
                "write", lambda: self.log.append(data, rotate=in_thread), thread=in_thread
            )
            self._appended = True  # no checkpoint since the append returned
        if self.log.rotation_due:  # it waits on the fd lock (an fsync) and fsyncs: off the loop
            await trio.to_thread.run_sync(self.log.rotate_if_due)
        if self.fsync == "always":
            await self._until_done("fsync", self.log.sync, thread=True)
        else:
            self._dirty.set()
        self._writing = []
        self._check_rotation()
        self._unwritten_bytes -= len(data)
        self._room.set()
        self.written_seq = batch[-1].seq
        self.ring.extend(batch)
        for subscription in tuple(self._subscriptions):
            if not subscription._offer(batch):
                self.unsubscribe(subscription)

    def _check_rotation(self) -> None:
        """A failed rotation does not stop writing: report it, and its end."""
        if self.log.rotation_error is None:
            self._recovered("rotation")
        elif self.log.rotation_failures != self._rotation_failures:
            self._rotation_failures = self.log.rotation_failures
            self._failed("rotation", self.log.rotation_error)

    async def aclose(self) -> None:
        """Stop accepting events; wait until every published one is written (for at most
        FINAL_FLUSH_S of a failing disk) and every subscription closed. Cancellation stops the
        wait, not the writer."""
        self._closed = True
        self._writer_scope.cancel()
        await self._done.wait()

    @property
    def bytes_logged(self) -> int:
        return self.log.bytes_written
