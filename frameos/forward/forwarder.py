"""The forwarder: a sink that sends every logged event to NATS JetStream, in seq order.

Two tasks. `_watch` reads the forwarder's own bounded bus subscription only to learn the
newest logged seq and wake the pump; a full subscription drops (nothing is lost: the pump reads
the log). `_pump` reads the log after the cursor (`EventLog.read_after`) and publishes page by
page through the bridge's asyncio thread; each acknowledged page moves the cursor, persisted
in the state dir. A broker outage is one `message` (warn), then one when it is back; meanwhile
the events wait in the log. On (re)connecting, the broker's own last seq of this host is
authoritative when it is ahead of the saved cursor (a crash after the ack, before the save),
and `Nats-Msg-Id: HOST:SEQ` lets JetStream drop what is resent inside its duplicate window.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import trio

from frameos.bus import Bus, Wakeup
from frameos.config.models import ForwardConfig
from frameos.envelope import decode
from frameos.errors import StaleCursorError
from frameos.events import Message
from frameos.forward import cursor
from frameos.forward.bridge import AsyncioThread
from frameos.forward.jetstream import CONNECT_S, REQUEST_S, BrokerError, JetStreamLink

DEPTH = 64  # batches: only the newest seq matters, so a small queue is plenty
PAGE = 1000  # events read from the log and published per window
SAVE_EVERY_S = 0.2  # the cursor file is written at most this often (and at the end)
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 5.0
DRAIN_S = 3.0  # at the end: how long to go on forwarding what the log holds


def host_name(configured: str | None) -> str:
    """`forward.host`, else the hostname as a NATS subject token (`.`, spaces … become `_`)."""
    if configured:
        return configured
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "localhost"


class Forwarder:
    """Run `run` in the outer nursery beside the output sinks (it ends after `bus.aclose`)."""

    name = "NATS forwarder"

    def __init__(self, bus: Bus, config: ForwardConfig, state_dir: Path) -> None:
        self.bus = bus
        self.config = config
        self.host = host_name(config.host)
        self.url = config.nats.url
        self.cursor_file = cursor.cursor_path(state_dir, self.host)
        self.acked = cursor.load(self.cursor_file)  # the last seq the broker acknowledged
        self.head = bus.last_seq  # the newest logged seq this forwarder knows of
        self.forwarded = 0  # events acknowledged by the broker in this run
        self.connected = False
        self._saved = self.acked
        self._next_save = 0.0
        self._wake = Wakeup()
        self._closing = False
        self._outage: str | None = None  # why the broker is unreachable, while it is

    @property
    def pending(self) -> int:
        return max(0, self.head - self.acked)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        subscription = self.bus.subscribe(self.name, DEPTH)
        async with AsyncioThread("frameos-nats") as loop:
            link = JetStreamLink(self.config.nats, self.host)
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, loop, link)
                    async for batch in subscription:
                        ready = subscription.take_ready()
                        self.head = max(self.head, (ready or batch)[-1].seq)
                        self._wake.set()
                    self._closing = True  # the bus closed: forward what is left, then end
                    self._wake.set()
            finally:
                self.bus.unsubscribe(subscription)
                with trio.move_on_after(CONNECT_S, shield=True):
                    await loop.call(link.close(), CONNECT_S)
                with trio.CancelScope(shield=True):
                    await self._save(force=True)

    async def _pump(self, loop: AsyncioThread, link: JetStreamLink) -> None:
        retry = RETRY_FIRST_S
        while True:
            if self._closing:
                with trio.move_on_after(DRAIN_S):
                    if self.connected:
                        await self._forward(loop, link)
                return
            if not self.connected:
                try:
                    broker_seq = await loop.call(link.connect(), CONNECT_S + REQUEST_S * 3)
                except (BrokerError, trio.TooSlowError) as exc:
                    self._down(str(exc) or "no answer in time")
                    with trio.move_on_after(retry):
                        await self._wake.wait()
                    retry = min(retry * 2, RETRY_MAX_S)
                    continue
                self.acked = max(self.acked, broker_seq)
                self._up()
                retry = RETRY_FIRST_S
            if await self._forward(loop, link):
                await self._wake.wait()

    async def _forward(self, loop: AsyncioThread, link: JetStreamLink) -> bool:
        """Publish what the log holds after the cursor; False when the broker went away."""
        while True:
            try:
                page = await trio.to_thread.run_sync(self.bus.log.read_after, self.acked, PAGE)
            except StaleCursorError as exc:
                self.bus.publish_nowait(
                    Message(
                        text=f"{self.name}: events {exc.requested + 1}…{exc.oldest - 1} "
                        f"rotated out of the event log before {self.url} took them; "
                        f"forwarding from {exc.oldest}"
                    ),
                    "error",
                )
                self.acked = exc.oldest - 1
                continue
            if not page.lines:
                await self._save()
                return True
            items = [(envelope.seq, envelope.json) for envelope in map(decode, page.lines)]
            try:
                self.acked = await loop.call(link.publish(items), REQUEST_S * 2)
            except (BrokerError, trio.TooSlowError) as exc:
                with trio.move_on_after(CONNECT_S, shield=True):
                    await loop.call(link.close(), CONNECT_S)
                self.connected = False
                self._down(str(exc) or "no acknowledgement in time")
                return False
            self.forwarded += len(items)
            self.head = max(self.head, self.acked)
            await self._save()

    async def _save(self, *, force: bool = False) -> None:
        if self.acked == self._saved:
            return
        now = trio.current_time()
        if not force and now < self._next_save:
            return
        self._next_save = now + SAVE_EVERY_S
        seq = self.acked
        try:
            await trio.to_thread.run_sync(cursor.save, self.cursor_file, seq)
        except OSError as exc:
            self._saved = seq  # reported once per failure; the broker's last seq covers it
            self.bus.publish_nowait(
                Message(text=f"{self.name}: cannot save the cursor {self.cursor_file}: {exc}"),
                "warn",
            )
            return
        self._saved = seq

    def _down(self, why: str) -> None:
        self.connected = False
        if self._outage is None and not self.bus.closed:
            self.bus.publish_nowait(
                Message(
                    text=f"{self.name}: broker {self.url} unreachable ({why}); events wait in "
                    f"the event log from seq {self.acked + 1} and go out when it is back"
                ),
                "warn",
            )
        self._outage = why

    def _up(self) -> None:
        self.connected = True
        if self._outage is not None and not self.bus.closed:
            self.bus.publish_nowait(
                Message(
                    text=f"{self.name}: broker {self.url} reachable again; forwarding from seq "
                    f"{self.acked + 1}"
                ),
                "info",
            )
        self._outage = None
