"""The JetStream side of the forwarder; it runs in the sender process (sender.py), on asyncio.

No hand-written protocol: nats-py does the talking. The connection does not reconnect by
itself (`allow_reconnect=False`): nats-py would replay what it buffered during an outage on
the new connection, after messages the old one may have lost, and the order would break. Here a
broken connection is closed and the sender makes a new one, asks the broker for the last seq
it holds of this host, and publishes from there. On one connection the server stores in the
order it reads, so what a dead connection stored is always a prefix of what was sent.

Publishing is pipelined and acknowledged a batch at a time: the messages are plain `PUB`s, and
the last of every `ACK_EVERY` (and of every `send`) carries a reply subject of this connection's
own inbox (`INBOX.SEQ`), where JetStream sends its acknowledgement. Up to a window of messages is
in flight; `acked` is the last seq of the acknowledged prefix. An acknowledgement of seq K
covers every message sent before it on this connection: the server stores what one connection
sends in the order it reads it, and what refuses one message refuses the next as well (no
stream, no space, a closed connection), except a size limit, which is checked here: a line over
the stream's `max_msg_size` (or the server's max_payload) is never sent, and the sender reports
it. A stream that discards new messages when full (`discard: new`, an operator's choice) could
refuse a large message and take a smaller one after it: there every message asks. Catching up a
backlog, an acknowledgement a message cost 22-23 µs of the sender's CPU and 15-18 µs of
nats-server's; one per `ACK_EVERY`, 9 and 8 (nats-server 2.9.10, nats-py 2.16;
bench/bench_sender.py, docs/performance.md B13). nats-py's `publish_async` (a future, a
semaphore and a decoded `PubAck` per message) cost 59 µs a message in the client alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from frameos.config.models import NatsConfig

CONNECT_S = 3.0
REQUEST_S = 5.0  # one JetStream API call, or the acks of one window of publishes
MSG_ID = "Nats-Msg-Id"
ACK_EVERY = 256  # messages a JetStream acknowledgement covers at most
HEADERS_MAX = 512  # `NATS/1.0` and Nats-Msg-Id (a 200-byte host at most, and the seq)


def subject_of(prefix: str, host: str) -> str:
    return f"{prefix}.{host}.events"


class BrokerError(Exception):
    """The broker cannot take events now (one line: what and why)."""


def _explain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


async def open_connection(
    url: str,
    credentials: str | None,
    name: str,
    *,
    on_lost: Callable[[], Awaitable[None]] | None = None,
    check_subjects: bool = True,
) -> Client:
    """One attempt at one server, no reconnecting; BrokerError with the real cause.
    `on_lost` is called when an open connection breaks (or is closed). `check_subjects=False`
    skips nats-py's check of every subject published to (~1 µs a message): for subjects built
    from validated config only."""
    errors: list[Exception] = []

    async def keep(exc: Exception) -> None:  # nats-py would log to stderr
        errors.append(exc)

    try:
        return await nats.connect(
            url,
            user_credentials=credentials,
            allow_reconnect=False,
            connect_timeout=CONNECT_S,
            # 1, not 0: nats-py reads 0 as "no limit" when picking a server, and would try
            # the same dead server forever
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            error_cb=keep,
            disconnected_cb=on_lost,
            name=name,
            skip_subject_validation=not check_subjects,
        )
    except Exception as exc:
        cause = errors[0] if errors else exc
        raise BrokerError(_explain(cause)) from None


class JetStreamLink:
    """One connection to the NATS server, publishing one host's events in seq order.

    `on_change` is called (on the loop) when an acknowledgement arrives or the connection is
    lost, so the sender can look at `acked` and `failure`."""

    def __init__(self, config: NatsConfig, host: str, on_change: Callable[[], None]) -> None:
        self.config = config
        self.host = host
        self.subject = subject_of(config.subject_prefix, host)
        self.on_change = on_change
        self.acked = 0  # the last seq of the acknowledged prefix of what was sent
        self.sent = 0  # the last seq sent
        self.failure: str | None = None  # why the connection cannot go on (then: close it)
        self.in_flight = 0  # messages sent, not yet covered by an acknowledgement
        # the messages that asked for an acknowledgement, in order: (seq, messages it covers)
        self._outstanding: deque[tuple[int, int]] = deque()
        self._unasked = 0  # messages sent since the last one that asked
        self._done: set[int] = set()  # acknowledged out of order (not seen: acks come in order)
        self.max_msg = 0  # the largest line body the broker takes (stream and server limits)
        self.ack_every = ACK_EVERY  # 1 on a stream that discards new messages when full
        self.too_large: list[tuple[int, int]] = []  # (seq, bytes) not sent; the sender reports
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._inbox = ""

    async def connect(self) -> int:
        """Connect, create the stream if it is missing; the last seq the broker holds of this
        host (0 when none). Raises BrokerError."""
        creds = self.config.credentials_file
        self.failure = None
        self._outstanding.clear()
        self._done.clear()
        self.in_flight = self._unasked = 0
        self.too_large.clear()  # what a broken send skipped is read and skipped again
        try:
            self._nc = await open_connection(
                self.config.url,
                str(creds) if creds else None,
                f"frameos {self.host}",
                on_lost=self._lost,
                check_subjects=False,  # subject_prefix and host are validated config
            )
            self._js = self._nc.jetstream(timeout=REQUEST_S)
            await self._ensure_stream()
            last = await self._last_seq()
            self._inbox = self._nc.new_inbox()
            await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
        except BrokerError:
            await self.close()
            raise
        except Exception as exc:  # nats-py raises many kinds: all mean "not now"
            await self.close()
            raise BrokerError(_explain(exc)) from None
        return last

    def start_after(self, seq: int) -> None:
        """Publish from `seq + 1` on (after connect: the cursor or the broker's last seq)."""
        self.acked = self.sent = seq

    async def _ensure_stream(self) -> None:
        assert self._js is not None
        limits = self.config.stream
        try:
            info = await self._js.stream_info(limits.name)
        except NotFoundError:
            info = await self._js.add_stream(
                StreamConfig(
                    name=limits.name,
                    subjects=[f"{self.config.subject_prefix}.*.events"],
                    max_age=limits.max_age_s or None,
                    max_bytes=limits.max_bytes,
                    max_msgs_per_subject=limits.max_msgs_per_subject,
                    duplicate_window=limits.duplicate_window_s,
                )
            )
        assert self._nc is not None
        # the server counts HPUB's headers in max_payload; ours are < HEADERS_MAX bytes
        caps = [self._nc.max_payload - HEADERS_MAX, info.config.max_msg_size or -1]
        self.max_msg = min(cap for cap in caps if cap > 0)
        self.ack_every = 1 if info.config.discard == DiscardPolicy.NEW else ACK_EVERY

    async def _last_seq(self) -> int:
        assert self._js is not None
        try:
            msg = await self._js.get_last_msg(self.config.stream.name, self.subject)
        except NotFoundError:
            return 0
        msg_id = (msg.headers or {}).get(MSG_ID, "")
        host, _, seq = str(msg_id).rpartition(":")
        if host == self.host and seq.isdigit():
            return int(seq)
        try:
            return int(orjson.loads(msg.data or b"")["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise BrokerError(
                f"the last message on {self.subject} is not a frameos event; "
                "is another program publishing there?"
            ) from None

    async def send(self, first: int, lines: Sequence[bytes]) -> None:
        """Publish event-log lines (seq `first`, `first + 1`, …) without waiting for their
        acknowledgements. A line the broker could never take (over the stream's max_msg_size or
        the server's max_payload) is not sent: it goes to `too_large` for the sender to report,
        and counts as acknowledged once what was sent before it is. Raises BrokerError (the
        connection is then useless: close it)."""
        nc = self._nc
        if nc is None or self.failure is not None:
            raise BrokerError(self.failure or "not connected")
        subject, inbox, host, limit = self.subject, self._inbox, self.host, self.max_msg
        fits = [len(line) - 1 <= limit for line in lines]
        try:
            for index, (seq, line) in enumerate(enumerate(lines, first)):
                self.sent = seq
                if not fits[index]:
                    self.too_large.append((seq, len(line) - 1))
                    self._outstanding.append((seq, 0))  # nothing to wait for but its elders
                    self._done.add(seq)
                    continue
                self._unasked += 1
                self.in_flight += 1
                # the last sent before a line that is not, too: its elders need an answer
                last = index + 1 == len(lines) or not fits[index + 1]
                ask = last or self._unasked >= self.ack_every
                if ask:
                    self._outstanding.append((seq, self._unasked))
                    self._unasked = 0
                await nc.publish(
                    subject,
                    line[:-1],
                    reply=f"{inbox}.{seq}" if ask else "",
                    headers={MSG_ID: f"{host}:{seq}"},
                )
        except Exception as exc:
            raise BrokerError(_explain(exc)) from None
        self._advance()

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        if not token.isdigit():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            self._fail(f"no JetStream stream takes {self.subject} (no responders)")
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            answer = {"error": {"description": f"not an acknowledgement: {msg.data[:80]!r}"}}
        if isinstance(answer, dict) and "error" in answer:
            error = answer["error"]
            text = error.get("description", error) if isinstance(error, dict) else error
            self._fail(f"JetStream refused seq {token}: {text}")
            return
        self._done.add(int(token))
        self._advance()

    def _advance(self) -> None:
        """Move `acked` over the answered prefix of what asked (and the lines not sent)."""
        outstanding, done = self._outstanding, self._done
        moved = False
        while outstanding and outstanding[0][0] in done:
            seq, covered = outstanding.popleft()
            done.discard(seq)
            self.acked = seq
            self.in_flight -= covered
            moved = True
        if moved:
            self.on_change()

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self.on_change()

    async def _lost(self) -> None:
        self._fail("the connection to the broker was lost")

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                async with asyncio.timeout(CONNECT_S):
                    await nc.close()
            except Exception:  # closing a broken connection: nothing left to do
                pass
