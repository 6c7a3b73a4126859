"""The JetStream side of the forwarder; it runs in the sender process (sender.py), on asyncio.

No hand-written protocol: nats-py does the talking. The connection does not reconnect by
itself (`allow_reconnect=False`): nats-py would replay what it buffered during an outage on
the new connection, after messages the old one may have lost, and the order would break. Here a
broken connection is closed and the sender makes a new one, asks the broker for the last seq
it holds of this host, and publishes from there. On one connection the server stores in the
order it reads, so what a dead connection stored is always a prefix of what was sent.

Publishing is pipelined: every message is a plain `PUB` with a reply subject of this
connection's own inbox (`INBOX.SEQ`), where JetStream sends its acknowledgement; up to a window
of messages is in flight, and `acked` is the last seq of the acknowledged prefix. nats-py's
`publish_async` does the same with a future, a semaphore and a decoded `PubAck` per message, at
three times the CPU (59 vs 18 µs a message here).
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
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from frameos.config.models import NatsConfig

CONNECT_S = 3.0
REQUEST_S = 5.0  # one JetStream API call, or the acks of one window of publishes
MSG_ID = "Nats-Msg-Id"


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
) -> Client:
    """One attempt at one server, no reconnecting; BrokerError with the real cause.
    `on_lost` is called when an open connection breaks (or is closed)."""
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
        self._outstanding: deque[int] = deque()  # sent, not yet acknowledged, in order
        self._done: set[int] = set()  # acknowledged out of order (not seen: acks come in order)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._inbox = ""

    @property
    def in_flight(self) -> int:
        return len(self._outstanding)

    async def connect(self) -> int:
        """Connect, create the stream if it is missing; the last seq the broker holds of this
        host (0 when none). Raises BrokerError."""
        creds = self.config.credentials_file
        self.failure = None
        self._outstanding.clear()
        self._done.clear()
        try:
            self._nc = await open_connection(
                self.config.url,
                str(creds) if creds else None,
                f"frameos {self.host}",
                on_lost=self._lost,
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
            await self._js.stream_info(limits.name)
        except NotFoundError:
            await self._js.add_stream(
                StreamConfig(
                    name=limits.name,
                    subjects=[f"{self.config.subject_prefix}.*.events"],
                    max_age=limits.max_age_s or None,
                    max_bytes=limits.max_bytes,
                    max_msgs_per_subject=limits.max_msgs_per_subject,
                    duplicate_window=limits.duplicate_window_s,
                )
            )

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
        acknowledgements. Raises BrokerError (the connection is then useless: close it)."""
        nc = self._nc
        if nc is None or self.failure is not None:
            raise BrokerError(self.failure or "not connected")
        subject, inbox, host = self.subject, self._inbox, self.host
        try:
            for seq, line in enumerate(lines, first):
                self._outstanding.append(seq)
                await nc.publish(
                    subject, line[:-1], reply=f"{inbox}.{seq}", headers={MSG_ID: f"{host}:{seq}"}
                )
                self.sent = seq
        except Exception as exc:
            raise BrokerError(_explain(exc)) from None

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
        outstanding, done = self._outstanding, self._done
        while outstanding and outstanding[0] in done:
            done.discard(outstanding[0])
            self.acked = outstanding.popleft()
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
