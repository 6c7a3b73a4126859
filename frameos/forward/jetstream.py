"""The JetStream side of the forwarder; every coroutine here runs on the bridge's asyncio loop.

No hand-written protocol: nats-py does the talking. The connection does not reconnect by
itself (`allow_reconnect=False`): nats-py would replay what it buffered during an outage on
the new connection, after messages the old one may have lost, and the order would break. Here a
broken connection is closed and the forwarder makes a new one, asks the broker for the last seq
it holds of this host, and publishes from there. On one connection the server stores in the
order it reads, so what a dead connection stored is always a prefix of what was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nats
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

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


async def open_connection(url: str, credentials: str | None, name: str) -> Client:
    """One attempt at one server, no reconnecting; BrokerError with the real cause."""
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
            name=name,
        )
    except Exception as exc:
        cause = errors[0] if errors else exc
        raise BrokerError(_explain(cause)) from None


class JetStreamLink:
    """One connection to the NATS server, publishing one host's events."""

    def __init__(self, config: NatsConfig, host: str) -> None:
        self.config = config
        self.host = host
        self.subject = subject_of(config.subject_prefix, host)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    async def connect(self) -> int:
        """Connect, create the stream if it is missing; the last seq the broker holds of this
        host (0 when none). Raises BrokerError."""
        creds = self.config.credentials_file
        try:
            self._nc = await open_connection(
                self.config.url, str(creds) if creds else None, f"frameos {self.host}"
            )
            self._js = self._nc.jetstream(timeout=REQUEST_S)
            await self._ensure_stream()
            return await self._last_seq()
        except BrokerError:
            await self.close()
            raise
        except Exception as exc:  # nats-py raises many kinds: all mean "not now"
            await self.close()
            raise BrokerError(_explain(exc)) from None

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

    async def publish(self, items: Sequence[tuple[int, bytes]]) -> int:
        """Publish (seq, envelope JSON) in order; the last seq acknowledged. Raises BrokerError
        (after which the connection is closed) when not all of them were acknowledged; the
        forwarder then goes on from the last seq the broker holds."""
        js = self._js
        if js is None or self._nc is None or not self._nc.is_connected:
            raise BrokerError("not connected")
        acked = 0
        try:
            # no `wait_stall`: nats-py then wraps every publish in a task of its own (5x
            # slower); a page (PAGE ≤ 1,000) never reaches its 4,000 pending acks anyway
            futures = [
                await js.publish_async(self.subject, data, headers={MSG_ID: f"{self.host}:{seq}"})
                for seq, data in items
            ]
            async with asyncio.timeout(REQUEST_S):
                for (seq, _), future in zip(items, futures, strict=True):
                    await future
                    acked = seq
            return acked
        except Exception as exc:
            await self.close()
            raise BrokerError(_explain(exc) if str(exc) else "no acknowledgement in time") from None

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                async with asyncio.timeout(CONNECT_S):
                    await nc.close()
            except Exception:  # closing a broken connection: nothing left to do
                pass
