"""A read-only websocket client for `/ws/events`: wsproto directly on a trio stream, every
complete message one read brings handed on together (`async for batch in ws:`).

trio-websocket's `get_message` hands on one message a call, through a channel from its reader
task: a trio wakeup and a hand-off for every event, a quarter of the view's CPU at 1,000
events/s, and seconds behind after a burst on a busy machine (docs/performance.md, B12). This
client sends nothing but the handshake, the pongs the server's pings ask for and, when it
leaves, a close frame.

`connect(...)` raises `Rejected` (the handshake's HTTP status and body) or `WsError` (with the
cause chained, an OSError when there is one) and, while reading, `WsError` when the
connection ends.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

MAX_MESSAGE = 1 << 20  # an event envelope is a few hundred bytes; SPEC §3.1 caps them far below
MAX_REJECT_BODY = 1 << 16


class WsError(Exception):
    """The connection could not be made or has ended; the message says why."""


class Rejected(WsError):
    """The server answered the handshake with an HTTP response instead of switching."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"the handshake was refused with HTTP {status_code}")
        self.status_code, self.body = status_code, body


class Reader:
    """An open connection; iterate it for lists of messages (bytes), one list per read."""

    def __init__(self, stream: trio.abc.Stream, conn: WSConnection, receive_bytes: int) -> None:
        self.stream, self.conn, self.receive_bytes = stream, conn, receive_bytes
        self.partial: list[bytes] = []
        self.partial_size = 0
        self.closed = False  # a close frame was sent or received: none is sent on the way out
        self.fresh = True  # what came with the handshake's answer is not parsed yet
        self.ended: WsError | None = None  # raised once the messages before it are handed on

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> list[bytes]:
        """The messages completed by the next read (a read that completed none, a frame in
        parts or a ping, is not handed on); WsError once the connection has ended and every
        message before the end was handed on."""
        while True:
            if self.ended is not None:
                raise self.ended
            if self.fresh:
                self.fresh = False
            else:
                await self._receive()
            messages: list[bytes] = []
            try:
                await self._parse(messages)
            except RemoteProtocolError as exc:
                self.ended = WsError(f"a protocol error from the server: {exc}")
            except WsError as exc:
                self.ended = exc
            if messages:
                return messages

    async def _receive(self) -> None:
        """One read of the socket into `conn`, or `ended` set."""
        try:
            data = await self.stream.receive_some(self.receive_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.ended = WsError(_reason(exc))
            self.ended.__cause__ = exc
            return
        if not data:
            self.closed = True
            self.ended = WsError("the connection closed")
            return
        self.conn.receive_data(bytes(data))

    async def _parse(self, messages: list[bytes]) -> None:
        """The events `conn` has, the complete messages appended to `messages` as they come."""
        for event in self.conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                piece = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
                if event.message_finished and not self.partial:
                    messages.append(piece)  # the usual case: a whole message in one piece
                    continue
                self.partial.append(piece)
                self.partial_size += len(piece)
                if self.partial_size > MAX_MESSAGE:
                    raise WsError(f"a message over {MAX_MESSAGE} bytes")
                if event.message_finished:
                    messages.append(b"".join(self.partial))
                    self.partial, self.partial_size = [], 0
            elif isinstance(event, Ping):
                await self._send(self.conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = True
                with _quietly():
                    await self._send(self.conn.send(event.response()))
                why = f"the server closed the connection ({event.code}"
                raise WsError(why + (f": {event.reason})" if event.reason else ")"))

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise WsError(_reason(exc)) from exc

    async def close(self, grace_s: float) -> None:
        """A close frame (best effort, within `grace_s`, even when cancelled), then the socket
        closed; the server's answer is not waited for (nothing more is read)."""
        with trio.move_on_after(grace_s, shield=True):
            if not self.closed:
                self.closed = True
                with _quietly():
                    await self._send(self.conn.send(CloseConnection(code=1000)))
            await self.stream.aclose()
        await trio.aclose_forcefully(self.stream)


@asynccontextmanager
async def connect(
    url: str,
    headers: list[tuple[bytes, bytes]],
    *,
    connect_timeout: float,
    close_timeout: float,
    receive_bytes: int = 1 << 16,
) -> AsyncIterator[Reader]:
    """The websocket at `url` (ws:// or wss://), open within `connect_timeout`."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            if secure:
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl.create_default_context()
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
            conn = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(
                conn.send(Request(host=parts.netloc, target=target, extra_headers=headers))
            )
            await _handshake(stream, conn, receive_bytes)
    except trio.TooSlowError as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise WsError(f"no answer within {connect_timeout:g}s") from exc
    except (OSError, trio.BrokenResourceError, LocalProtocolError, RemoteProtocolError) as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise WsError(_reason(exc)) from exc
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    reader = Reader(stream, conn, receive_bytes)
    try:
        yield reader
    finally:
        await reader.close(close_timeout)


async def _handshake(stream: trio.abc.Stream, conn: WSConnection, receive_bytes: int) -> None:
    """Reads until the server switches (AcceptConnection) or refuses (Rejected with the body).
    Frames that came in the same read as the 101 stay in `conn`: the first `__anext__` has them."""
    status: int | None = None
    body = b""
    while True:
        data = await stream.receive_some(receive_bytes)
        if not data:  # not fed to h11: it calls an answer cut short "Bad HTTP message"
            if status is not None:
                raise Rejected(status, body)
            raise WsError("the connection closed during the handshake")
        conn.receive_data(bytes(data))
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise Rejected(status, b"")
            elif isinstance(event, RejectData) and status is not None:
                body = (body + event.data)[:MAX_REJECT_BODY]
                if event.body_finished:
                    raise Rejected(status, body)


def _reason(exc: BaseException) -> str:
    """What went wrong, in a few words: an OSError's strerror when there is one (trio's
    `open_tcp_stream` chains a group of them, one per address tried)."""
    seen: list[BaseException] = [exc]
    for candidate in seen:
        if isinstance(candidate, ssl.SSLCertVerificationError):  # an OSError, errno 1
            return f"certificate verify failed: {candidate.verify_message}"
        if isinstance(candidate, ssl.SSLError):
            return f"TLS: {candidate.reason or candidate}"
        if isinstance(candidate, OSError) and candidate.errno:
            return os.strerror(candidate.errno).lower()  # not strerror: trio adds the address
        if isinstance(candidate, BaseExceptionGroup):
            seen.extend(candidate.exceptions)
        seen.extend(e for e in (candidate.__cause__, candidate.__context__) if e is not None)
        if len(seen) > 20:
            break
    return str(exc) or type(exc).__name__


class _quietly:
    """Swallows WsError: for the sends made on the way out."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, WsError)
