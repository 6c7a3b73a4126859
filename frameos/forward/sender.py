"""The sender: a child process of frameos that sends the event log to NATS JetStream.

    python -m frameos.forward.sender SPEC_JSON

The log is the hand-over. frameos writes the newest logged seq (its head) to the sender's stdin,
a line at a time, without ever waiting (a full pipe means the sender has a wake-up to read
already); the sender reads the log after its cursor with the indexed reader
(`EventLog.read_after`) and publishes, pipelined (jetstream.py), up to `WINDOW` messages in
flight. It persists the acknowledged cursor in the state dir and reports to frameos on stdout,
one JSON object a line:

    {"up": SEQ}                 connected; forwarding after SEQ
    {"down": "WHY"}             the broker cannot take events now (retrying with backoff)
    {"acked": SEQ, "n": N}      the broker acknowledged up to SEQ, N more events than reported
    {"message": "TEXT", "severity": "error"|"warn"}   for frameos to publish as a `message`

frameos does the reporting (the warn-once outage message, the metrics) from these. End of
stdin: when frameos closed it (a stop), the sender goes on until everything logged is
acknowledged, at most `drain_s` of the spec, then saves the cursor and exits 0; when frameos is gone
(SIGKILL: the parent pid changed), it saves the cursor and exits at once: the next frameos
starts a new sender, which resumes from the cursor or the broker's last seq, whichever is
further. nats-py runs on asyncio, in this process alone, so its CPU (~7-10 µs a message) never
competes with frameos's event loop for the GIL (docs/performance.md, B13).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import orjson

from frameos.errors import EventLogError, StaleCursorError
from frameos.eventlog import EventLog
from frameos.forward import cursor
from frameos.forward.jetstream import CONNECT_S, REQUEST_S, BrokerError, JetStreamLink

if TYPE_CHECKING:
    from frameos.config.models import NatsConfig

PAGE = 1000  # lines read from the log at a time
WINDOW = 4000  # messages in flight (sent, not yet acknowledged)
SAVE_EVERY_S = 0.2  # the cursor file is written at most this often (and at the end)
REPORT_EVERY_S = 0.005  # acknowledgements are reported at most this often while more are due
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 5.0


class Sender:
    def __init__(self, spec: dict[str, Any]) -> None:
        # forward.nats as frameos validated it (a dump of NatsConfig): read, not validated again,
        # so this process need not import the config models (a third of its start-up)
        nats = dict(spec["nats"])
        self.nats = cast(
            "NatsConfig", SimpleNamespace(**{**nats, "stream": SimpleNamespace(**nats["stream"])})
        )
        self.host: str = spec["host"]
        self.parent: int = spec["parent"]
        self.drain_s = float(spec["drain_s"])
        self.log = EventLog(Path(spec["log"]), keep=int(spec["keep"]))
        self.cursor_file = Path(spec["cursor"])
        self.acked = cursor.load(self.cursor_file)
        self.head: int | None = None  # the newest logged seq frameos told; None: read to see
        self.eof = False  # frameos closed stdin (a stop) or is gone
        self.drain_until = float("inf")  # set at the end of stdin
        self.connected = False
        self.wake = asyncio.Event()
        self.link = JetStreamLink(self.nats, self.host, self.wake.set)
        self._reported = self.acked
        self._next_report = 0.0
        self._saved = self.acked
        self._next_save = 0.0
        self._stdin = b""

    # --- talking to frameos --------------------------------------------------------------------

    def report(self, **record: object) -> None:
        with contextlib.suppress(OSError):  # frameos is gone: the end of stdin says so next
            os.write(1, orjson.dumps(record) + b"\n")

    def _report_acked(self, *, now: float, force: bool = False) -> None:
        if self.acked == self._reported or (not force and now < self._next_report):
            return
        self.report(acked=self.acked, n=max(0, self.acked - self._reported))
        self._reported = self.acked
        self._next_report = now + REPORT_EVERY_S

    def _read_stdin(self) -> None:
        try:
            chunk = os.read(0, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.eof = True
            self.drain_until = time.monotonic() + self.drain_s
            asyncio.get_running_loop().remove_reader(0)
        else:
            lines = (self._stdin + chunk).split(b"\n")
            self._stdin = lines.pop()
            for line in reversed(lines):  # the newest head is the last whole line
                if line.isdigit():
                    self.head = max(self.head or 0, int(line))
                    break
        self.wake.set()

    @property
    def orphaned(self) -> bool:
        return os.getppid() != self.parent

    # --- the cursor ----------------------------------------------------------------------------

    def save(self, *, now: float, force: bool = False) -> None:
        if self.acked == self._saved or (not force and now < self._next_save):
            return
        self._next_save = now + SAVE_EVERY_S
        try:
            cursor.save(self.cursor_file, self.acked)
        except OSError as exc:  # once per failure; the broker's last seq covers it
            self.report(
                message=f"NATS forwarder: cannot save the cursor {self.cursor_file}: {exc}",
                severity="warn",
            )
        self._saved = self.acked

    # --- forwarding ----------------------------------------------------------------------------

    async def run(self) -> int:
        os.set_blocking(0, False)
        asyncio.get_running_loop().add_reader(0, self._read_stdin)
        retry = RETRY_FIRST_S
        try:
            while True:
                if self.eof and (self.orphaned or not self.connected or self._drained()):
                    return 0
                try:
                    if not self.connected:
                        await self._connect()
                        retry = RETRY_FIRST_S
                    await self._forward()
                    return 0  # stdin ended, and what the log holds is acknowledged (or time is up)
                except (BrokerError, TimeoutError) as exc:
                    await self.link.close()
                    self.connected = False
                    if self.eof:
                        continue
                    self.report(down=str(exc) or "no answer in time")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wait_eof(), retry)
                    retry = min(retry * 2, RETRY_MAX_S)
        finally:
            now = time.monotonic()
            self.save(now=now, force=True)
            self._report_acked(now=now, force=True)
            await self.link.close()

    def _drained(self) -> bool:
        """At the end of stdin: frameos is gone, or the drain's time is up."""
        return self.eof and (self.orphaned or time.monotonic() >= self.drain_until)

    async def _wait_eof(self) -> None:
        while not self.eof:
            self.wake.clear()
            await self.wake.wait()

    async def _connect(self) -> None:
        await self.link.close()
        broker_seq = await asyncio.wait_for(self.link.connect(), CONNECT_S + REQUEST_S * 3)
        self.acked = max(self.acked, broker_seq)
        self.link.start_after(self.acked)
        self.connected = True
        self._reported = self.acked
        self.report(up=self.acked)

    async def _forward(self) -> None:
        """Publish what the log holds after the cursor until all of it is acknowledged; then,
        unless stdin ended, wait for the next head. Raises BrokerError."""
        link = self.link
        last_progress = time.monotonic()
        while True:
            self.wake.clear()
            now = time.monotonic()
            if self._drained():
                return
            if link.failure is not None:
                raise BrokerError(link.failure)
            if link.acked != self.acked:
                self.acked = link.acked
                last_progress = now
            self._report_acked(now=now, force=link.in_flight == 0)
            self.save(now=now)
            room = WINDOW - link.in_flight
            due = self.head is None or self.head > link.sent
            if room > 0 and due and await self._send_page(min(PAGE, room)):
                await asyncio.sleep(0)  # let the acknowledgements in
                continue
            if link.in_flight == 0:
                if self.eof:
                    return
                await self.wake.wait()
                last_progress = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.wake.wait(), max(0.0, min(REQUEST_S, self.drain_until - now))
                )
            if link.acked == self.acked and time.monotonic() - last_progress >= REQUEST_S:
                raise BrokerError(f"no acknowledgement in {REQUEST_S:g} s")

    async def _send_page(self, limit: int) -> bool:
        """Send the next lines of the log; False when there were none."""
        after = self.link.sent
        try:
            page = self.log.read_after(after, limit)
        except StaleCursorError as exc:
            self.report(
                message=f"NATS forwarder: events {exc.requested + 1}…{exc.oldest - 1} rotated "
                f"out of the event log before {self.nats.url} took them; forwarding "
                f"from {exc.oldest}",
                severity="error",
            )
            if self.link.in_flight == 0:
                self.link.start_after(exc.oldest - 1)
                self.acked = self._reported = exc.oldest - 1
            else:  # what is in flight is acknowledged first; the jump follows
                self.link.sent = exc.oldest - 1
            return True
        except EventLogError as exc:
            raise BrokerError(str(exc)) from None  # retried with backoff, like an outage
        self.head = max(self.head or 0, page.head)
        if not page.lines:
            return False
        if page.next_cursor - after != len(page.lines):  # never seen: seq is dense in the log
            raise BrokerError(f"event log {self.log.path}: seq is not contiguous after {after}")
        await self.link.send(after + 1, page.lines)
        self._report_too_large()
        return True

    def _report_too_large(self) -> None:
        for seq, size in self.link.too_large:
            self.report(
                message=f"NATS forwarder: event {seq} is {size} bytes, more than {self.nats.url} "
                f"takes ({self.link.max_msg}: the stream's max_msg_size or the server's "
                f"max_payload); not forwarded, it stays in the event log: raise max_msg_size of "
                f"stream {self.nats.stream.name} or the server's max_payload",
                severity="error",
            )
        self.link.too_large.clear()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m frameos.forward.sender SPEC (frameos starts it)", file=sys.stderr)
        return 2
    return asyncio.run(Sender(orjson.loads(argv[1])).run())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
