"""The /ws/events fast path (SPEC §7.2; design F of shared/notes/ws-fanout.md).

hypercorn's websocket path costs ~50 µs per delivery whatever the app does, so the event stream
has its own: wsproto does the handshake and parses what clients send; each event is framed once
for every client (server frames are unmasked); an idle client's frames go straight to its
non-blocking socket, and only a would-block leaves bytes in the client's bounded queue, which its
sender task flushes when the socket is writable. A client more than `queue_depth` frames or
`queue_bytes` bytes behind is dropped; the others never wait for it.

All writes to a client socket go through `WsClient.send`, a synchronous call: with trio's single
thread that makes it the only writer, and frame order is the order of `send` calls.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections import deque
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from frameos.bus import Bus
from frameos.config import WebsocketConfig
from frameos.envelope import Envelope
from frameos.errors import StaleCursorError

HANDSHAKE_TIMEOUT_S = 10.0
HANDSHAKE_MAX_BYTES = 16 * 1024
CLOSE_FLUSH_S = 1.0
REPLAY_CHUNK = 1000
SNDBUF = 256 * 1024  # bound the kernel's share of a slow client's backlog
STALL_S = 1.0  # a client over queue_depth is dropped once it has taken no bytes for this long
WS_PATH_TEXT = "/ws/events"


def frame_text(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65_536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def frames_of(batch: Sequence[Envelope]) -> bytes:
    return b"".join(frame_text(e.json) for e in batch)


CLOSE_PROTOCOL_ERROR = b"\x88\x02\x03\xea"  # close 1002, for a peer whose framing is broken


class WsClient:
    """One connected websocket client: its socket, bounded backlog and state."""

    def __init__(self, hub: WsHub, stream: trio.SocketStream, conn: WSConnection, peer: str):
        self.hub = hub
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.conn = conn
        self.peer = peer
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.closed = False
        self.close_reason = ""
        self.last_seen = trio.current_time()
        self.last_progress = self.last_seen
        self._has_backlog = trio.Event()
        self.gone = trio.Event()

    def send(self, data: bytes) -> None:
        """Write now if nothing is queued, else queue; drop the client if it is too far behind.

        The backlog is what the kernel's socket buffer could not take. Over `queue_bytes` the
        client is dropped at once. Over `queue_depth` deliveries (one `send`: the frames of one
        bus batch, a single event at ordinary rates, or one control frame) it is dropped when it
        has also taken no bytes for `STALL_S`: a stuck reader goes, a reader that drains more
        slowly than a burst arrives does not (counting frames alone dropped healthy clients).
        """
        if self.closed:
            return
        if not self.backlog:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self.abort(f"write failed: {exc.strerror}")
                return
            if written:
                self.last_progress = trio.current_time()
            if written == len(data):
                return
            data = data[written:]
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        limits = self.hub.limits
        stalled = trio.current_time() - self.last_progress > STALL_S
        if (len(self.backlog) > limits.queue_depth and stalled) or (
            self.backlog_bytes > limits.queue_bytes
        ):
            self.hub.dropped_slow += 1
            self.abort(
                f"fell {len(self.backlog)} deliveries / {self.backlog_bytes} bytes behind"
            )
            return
        self._has_backlog.set()

    def _flush(self) -> None:
        """Write as much of the backlog as the socket takes; the rest stays as one entry."""
        if not self.backlog or self.closed:
            return
        data = b"".join(self.backlog) if len(self.backlog) > 1 else self.backlog[0]
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            return
        except OSError as exc:
            self.abort(f"write failed: {exc.strerror}")
            return
        if written:
            self.last_progress = trio.current_time()
        self.backlog.clear()
        rest = data[written:]
        self.backlog_bytes = len(rest)
        if rest:
            self.backlog.append(rest)

    async def run_sender(self) -> None:
        """Flush the backlog whenever the socket is writable; returns when the client closes."""
        while not self.closed:
            await self._has_backlog.wait()
            self._has_backlog = trio.Event()
            while self.backlog and not self.closed:
                await trio.lowlevel.wait_writable(self.fd)
                self._flush()

    async def wait_drained(self) -> None:
        """Wait until the backlog is empty (used while replaying from the log)."""
        while self.backlog and not self.closed:
            await trio.lowlevel.wait_writable(self.fd)
            self._flush()

    async def run_reader(self) -> None:
        """Answer pings, honour close, note liveness; a protocol error closes with 1002."""
        self._process(None)  # frames that arrived with the handshake
        while not self.closed:
            try:
                data = await self.stream.receive_some(65_536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.abort("connection lost")
                return
            if not data:
                self.abort("peer closed the connection")
                return
            self.last_seen = trio.current_time()
            self._process(data)

    def _process(self, data: bytes | None) -> None:
        try:
            if data is not None:
                self.conn.receive_data(data)
            for event in self.conn.events():
                self._on_event(event)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self._protocol_error(str(exc))

    def _protocol_error(self, detail: str) -> None:
        self.hub.protocol_errors += 1
        self.send(CLOSE_PROTOCOL_ERROR)
        self.finish(f"protocol error: {detail}")

    def _on_event(self, event: object) -> None:
        if isinstance(event, Ping):
            self.send(self.conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            if event.code == 1002 or event.code == 1007:  # wsproto's verdict on a bad frame
                self._protocol_error(event.reason or "invalid frame")
                return
            self.send(self.conn.send(event.response()))
            self.finish("closed by client")
        elif isinstance(event, (TextMessage, BytesMessage)):
            self.hub.client_messages += 1  # the stream is one-way; client data is ignored
        elif isinstance(event, Pong):
            pass

    def ping(self) -> None:
        self.send(self.conn.send(Ping(b"frameos")))

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (best effort) and finish."""
        if self.closed:
            return
        # wsproto refuses when the connection is already closing: then just finish
        with contextlib.suppress(LocalProtocolError):
            self.send(self.conn.send(CloseConnection(code=code, reason=reason)))
        self.finish(reason)

    def finish(self, reason: str) -> None:
        """Mark closed after the backlog has had its chance; the connection task closes it."""
        if not self.closed:
            self.close_reason = reason
            self.closed = True
            self._has_backlog.set()
            self.gone.set()

    def abort(self, reason: str) -> None:
        self.backlog.clear()
        self.finish(reason)


class WsHub:
    """Every connected client; a bus subscriber that frames each batch once."""

    def __init__(self, bus: Bus, limits: WebsocketConfig) -> None:
        self.bus = bus
        self.limits = limits
        self.clients: set[WsClient] = set()
        self.connected_total = 0
        self.dropped_slow = 0
        self.protocol_errors = 0
        self.client_messages = 0
        self.frames_sent = 0
        self.closing = False

    def deliver(self, batch: Sequence[Envelope]) -> None:
        if not self.clients:
            return
        data = frames_of(batch)
        for client in tuple(self.clients):
            client.send(data)
        self.frames_sent += len(batch) * len(self.clients)

    async def run_keepalive(self) -> None:
        """Ping every client each `ping_interval_s`; drop those silent past `idle_timeout_s`."""
        while True:
            await trio.sleep(self.limits.ping_interval_s)
            now = trio.current_time()
            for client in tuple(self.clients):
                if now - client.last_seen > self.limits.idle_timeout_s:
                    client.close(1001, "idle timeout")
                else:
                    client.ping()

    def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        self.closing = True
        for client in tuple(self.clients):
            client.close(code, reason)

    async def attach(self, client: WsClient, since: int | None) -> None:
        """Replay events after `since` from the log, then go live with no gap or duplicate."""
        cursor = self.bus.last_seq if since is None else since
        while not client.closed:
            recent = self.bus.ring_after(cursor)
            if recent is not None:
                # Synchronous from here on: no event can be delivered between replay and live.
                # (the ring holds only written events, so nothing here is ahead of the log)
                if recent:
                    client.send(frames_of(recent))
                self.clients.add(client)
                return
            page = await trio.to_thread.run_sync(self.bus.log.read_after, cursor, REPLAY_CHUNK)
            lines = page.lines
            if not lines:
                client.close(1011, "replay found no events after the cursor")
                return
            client.send(b"".join(frame_text(line[:-1]) for line in lines))  # one delivery
            cursor = orjson.loads(lines[-1])["seq"]
            await client.wait_drained()

    async def serve(self, stream: trio.SocketStream, head: bytes) -> None:
        """Handshake, attach, then run reader and sender until the client goes."""
        conn = WSConnection(ConnectionType.SERVER)
        handshake = await _handshake(stream, conn, head)
        if handshake is None:
            return
        request, raw = handshake
        try:
            since = _since(request.target)
            if since is not None:
                await _check_cursor(self.bus, since)
        except _Reject as reject:
            await _reject_http(stream, reject.status, reject.body)
            return
        if self.closing:
            await _reject_http(stream, 503, _error("shutting_down", "the server is stopping"))
            return
        _tune(stream)
        await stream.send_all(conn.send(AcceptConnection()))
        # wsproto's server side drops bytes that followed the handshake in the same read
        trailing = raw[raw.index(b"\r\n\r\n") + 4 :]
        if trailing:
            conn.receive_data(trailing)
        client = WsClient(self, stream, conn, _peer(stream))
        self.connected_total += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run_reader)
                nursery.start_soon(client.run_sender)
                await self.attach(client, since)
                await client.gone.wait()
                with trio.move_on_after(CLOSE_FLUSH_S):
                    await client.wait_drained()
                nursery.cancel_scope.cancel()
        finally:
            self.clients.discard(client)
            client.closed = True
            with trio.move_on_after(CLOSE_FLUSH_S, shield=True):
                await stream.aclose()


class _Reject(Exception):
    def __init__(self, status: int, body: dict[str, object]) -> None:
        self.status, self.body = status, body


def _error(code: str, message: str, **details: object) -> dict[str, object]:
    return {"error": code, "message": message, "details": details}


def _since(target: str) -> int | None:
    query = parse_qs(urlsplit(target).query)
    if "since" not in query:
        return None
    raw = query["since"][-1]
    if not raw.isdigit():
        raise _Reject(
            400,
            _error(
                "invalid_cursor",
                f"since must be a non-negative integer sequence number, found {raw!r}",
                parameter="since",
            ),
        )
    return int(raw)


async def _check_cursor(bus: Bus, since: int) -> None:
    oldest = await trio.to_thread.run_sync(bus.log.oldest_seq)
    head = bus.last_seq
    if since > head:
        raise _Reject(
            400,
            _error(
                "invalid_cursor",
                f"since={since} is ahead of the newest event {head}",
                requested_cursor=since,
                head_cursor=head,
            ),
        )
    try:
        check_stale(since, oldest, head)
    except StaleCursorError as exc:
        raise _Reject(410, stale_body(exc)) from None


def check_stale(cursor: int, oldest_seq: int | None, head: int) -> None:
    """Raise StaleCursorError when events after `cursor` have been rotated away."""
    if oldest_seq is not None and cursor < oldest_seq - 1:
        raise StaleCursorError(cursor, oldest_seq, head)


def stale_body(exc: StaleCursorError) -> dict[str, object]:
    return _error(
        "stale_cursor",
        str(exc),
        requested_cursor=exc.requested,
        oldest_available_cursor=exc.oldest - 1,
        head_cursor=exc.head,
        recovery=f"resume from oldest_available_cursor ({exc.oldest - 1})",
    )


async def _handshake(
    stream: trio.SocketStream, conn: WSConnection, head: bytes
) -> tuple[Request, bytes] | None:
    """Read until wsproto has the upgrade request; returns it with every raw byte read."""
    raw = head
    data = head
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        while True:
            try:
                conn.receive_data(data)
                for event in conn.events():
                    if isinstance(event, Request):
                        return event, raw
            except RemoteProtocolError as exc:
                await _reject_http(
                    stream,
                    400,
                    _error(
                        "bad_request",
                        f"/ws/events needs a websocket upgrade: {exc}",
                        fix="send Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key and "
                        "Sec-WebSocket-Version: 13",
                    ),
                )
                return None
            if len(raw) > HANDSHAKE_MAX_BYTES:
                await _reject_http(
                    stream, 431, _error("headers_too_large", "handshake headers exceed 16 KiB")
                )
                return None
            try:
                data = await stream.receive_some(16_384)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            raw += data
    await stream.aclose()
    return None


async def _reject_http(stream: trio.SocketStream, status: int, body: dict[str, object]) -> None:
    payload = orjson.dumps(body)
    reason = {
        400: "Bad Request",
        410: "Gone",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    ).encode()
    with trio.move_on_after(CLOSE_FLUSH_S):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(head + payload)
    await stream.aclose()


def _tune(stream: trio.SocketStream) -> None:
    import socket

    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
