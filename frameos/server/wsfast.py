"""The /ws/events fast path (SPEC §7.2; design F of shared/notes/ws-fanout.md).

hypercorn's websocket path costs ~50 µs per delivery whatever the app does, so the event stream
has its own: wsproto does the handshake and parses what clients send; each event is framed once
for every client (server frames are unmasked); an idle client's frames go straight to its
non-blocking socket, and only a would-block leaves bytes in the client's bounded queue, which its
sender task flushes when the socket is writable. A client more than `queue_depth` frames or
`queue_bytes` bytes behind is dropped; the others never wait for it.

All writes to a client socket go through `WsClient.send`, a synchronous call: with trio's single
thread that makes it the only writer, and frame order is the order of `send` calls. Only the
client's sender task ever waits for the socket to become writable; the replay waits for the
sender to report the backlog drained.

The hub reads the bus through its own subscription (`WsHub.run`), frames each batch once and
remembers the newest seq it delivered; a replay reads the log page by page (replay.py) and then
the bus's ring up to exactly that seq before the client joins, so no event is missed or sent
twice, whatever the replay's length.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
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

from frameos.bus import Bus, Wakeup
from frameos.config import WebsocketConfig
from frameos.envelope import Envelope
from frameos.errors import EventLogError, StaleCursorError
from frameos.eventlog import Page
from frameos.server.replay import CursorError, error_body, parse_cursor, read_page, stale_body

CLOSE_FLUSH_S = 1.0
HUB_DEPTH = 4096  # bus batches the hub's subscription may hold before it counts drops
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
        self.floor = 0  # the newest seq the replay sent: live deliveries start after it
        self.last_seen = trio.current_time()
        self.last_progress = self.last_seen
        self._has_backlog = Wakeup()  # the sender: bytes are queued (or the client finished)
        self._drained = Wakeup()  # the replay: the sender wrote the whole backlog
        self.gone = trio.Event()

    def send(self, data: bytes, *, replay: bool = False) -> None:
        """Write now if nothing is queued, else queue; drop the client if it is too far behind.

        The backlog is what the kernel's socket buffer could not take. Over `queue_bytes` the
        client is dropped at once. Over `queue_depth` deliveries (one `send`: the frames of one
        bus batch, a single event at ordinary rates, or one control frame) it is dropped when it
        has also taken no bytes for `STALL_S`: a stuck reader goes, a reader that drains more
        slowly than a burst arrives does not (counting frames alone dropped healthy clients).
        A replay page (`replay=True`) is exempt: the replay waits for it to drain before reading
        the next.
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
        stalled = trio.current_time() - self.last_progress > STALL_S
        if not replay and (
            (stalled and self._over_depth()) or self.backlog_bytes > self.hub.limits.queue_bytes
        ):
            self._drop_slow()
            return
        self._has_backlog.set()

    def _over_depth(self) -> bool:
        return len(self.backlog) > self.hub.limits.queue_depth

    def _drop_slow(self) -> None:
        self.hub.dropped_slow += 1
        self.abort(f"fell {len(self.backlog)} deliveries / {self.backlog_bytes} bytes behind")

    def _flush(self) -> None:
        """Write as much of the backlog as the socket takes; the rest stays as one entry."""
        if not self.backlog:
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
        """The one task that waits for the socket: flush the backlog whenever it is writable.

        The wait has the stall's deadline: a client over `queue_depth` that has taken no bytes
        for STALL_S is dropped then, not at whatever `send` comes next (after a burst, maybe
        the next ping). Runs until cancelled; after `finish` it still flushes what is queued
        (the close frame).
        """
        while True:
            await self._has_backlog.wait()
            while self.backlog:
                with trio.move_on_at(self.last_progress + STALL_S) as stall:
                    await trio.lowlevel.wait_writable(self.fd)
                if stall.cancelled_caught:
                    if self._over_depth() and not self.closed:
                        self._drop_slow()
                        break
                    await trio.lowlevel.wait_writable(self.fd)  # `send` checks from now on
                self._flush()
            self._drained.set()

    async def wait_drained(self) -> None:
        """Wait until the sender has written the whole backlog (`abort` empties it too)."""
        while self.backlog:
            self._has_backlog.set()
            await self._drained.wait()

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
            self._protocolerror_body(str(exc))

    def _protocolerror_body(self, detail: str, code: int = 1002) -> None:
        """Close with `code` (1002 broken framing, 1007 invalid UTF-8, 1009 too big)."""
        self.hub.protocol_errors += 1
        self.close(code, "invalid frame" if code != 1007 else "invalid UTF-8 in a text frame")
        self.close_reason = f"protocol error: {detail}"

    def _on_event(self, event: object) -> None:
        if isinstance(event, Ping):
            self.send(self.conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.conn.state is ConnectionState.OPEN:
                # wsproto's verdict on a frame it could not parse (no close frame arrived)
                self._protocolerror_body(event.reason or "invalid frame", event.code)
                return
            with contextlib.suppress(LocalProtocolError):  # already closing from our side
                self.send(self.conn.send(event.response()))
            self.finish("closed by client")
        elif isinstance(event, (TextMessage, BytesMessage)):
            self.hub.client_messages += 1  # the stream is one-way; client data is ignored
        elif isinstance(event, Pong):
            pass

    def ping(self) -> None:
        """A client that is closing or closed (still in `hub.clients` until its connection task
        ends) is not pinged: wsproto would refuse."""
        if self.closed or self.conn.state is not ConnectionState.OPEN:
            return
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
        self.backlog_bytes = 0
        self._drained.set()
        self.finish(reason)


class WsHub:
    """Every connected client; a bus subscriber (its own task) that frames each batch once."""

    def __init__(self, bus: Bus, limits: WebsocketConfig) -> None:
        self.bus = bus
        self.limits = limits
        self.clients: set[WsClient] = set()
        self.active = 0  # connections in the fast path: handshaking, replaying or live
        self.delivered_seq = 0  # newest seq handed to the live clients (set on subscribing)
        self.connected_total = 0
        self.dropped_slow = 0
        self.rejected_full = 0
        self.protocol_errors = 0
        self.client_messages = 0
        self.frames_sent = 0
        self.hub_dropped = 0
        self.closing = False
        # the token check of each handshake (auth.ws_authorizer): None or (status, error body)
        self.authorize: Callable[[Sequence[tuple[bytes, bytes]]], tuple[int, Any] | None] | None = (
            None
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver every bus batch to the live clients until the subscription ends."""
        sub = self.bus.subscribe("websocket", HUB_DEPTH)
        self.delivered_seq = self.bus.written_seq
        try:
            task_status.started()
            async for batch in sub:
                if sub.dropped != self.hub_dropped:
                    # Our own queue overflowed: the live stream has a gap. Clients reconnect
                    # with ?since= and replay it from the log.
                    self.hub_dropped = sub.dropped
                    self._close_clients(1013, "the server fell behind; reconnect with ?since=")
                self.deliver(batch)
        finally:
            self.bus.unsubscribe(sub)

    def deliver(self, batch: Sequence[Envelope]) -> None:
        if batch[-1].seq <= self.delivered_seq:
            return  # already delivered (a caller still wiring the hub as a bus subscriber too)
        self.delivered_seq = batch[-1].seq
        if not self.clients:
            return
        data = frames_of(batch)
        first = batch[0].seq
        for client in tuple(self.clients):
            if client.floor < first:
                client.send(data)
            else:  # its replay read the log ahead of the hub: only what it has not had
                client.send(frames_of([e for e in batch if e.seq > client.floor]))
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

    def close_all(self) -> None:
        """The stop: close every client with 1001 and admit no new one."""
        self.closing = True
        self._close_clients(1001, "server shutting down")

    def _close_clients(self, code: int, reason: str) -> None:
        for client in tuple(self.clients):
            client.close(code, reason)

    async def attach(self, client: WsClient, since: int | None, first: Page | None) -> None:
        """Replay events after `since` from the log, then go live with no gap or duplicate.

        Log pages until the bus's ring reaches back to the cursor; then, without a checkpoint,
        the ring's events up to `delivered_seq` and membership of `clients`: every later batch
        the hub delivers starts after `delivered_seq`. The log is written before the hub takes
        a batch, so a page (or the cursor) can reach past `delivered_seq`: the client's `floor`
        (the newest seq it has) makes `deliver` skip those events when they come.
        """
        cursor = self.delivered_seq if since is None else since
        page = first
        while not client.closed:
            if cursor >= self.delivered_seq:
                client.floor = cursor
                self.clients.add(client)
                return
            recent = self.bus.ring_after(cursor)
            if recent is not None:
                upto = self.delivered_seq
                client.send(frames_of([e for e in recent if e.seq <= upto]), replay=True)
                self.clients.add(client)
                return
            if page is None:
                try:
                    page = await read_page(self.bus.log, cursor)
                except StaleCursorError as exc:  # rotation overtook this replay
                    client.close(1011, f"events after {cursor} were rotated away; reconnect")
                    client.close_reason = str(exc)
                    return
                except EventLogError as exc:  # EMFILE, EIO: this client's replay ends
                    client.close(1011, "the event log cannot be read now; reconnect")
                    client.close_reason = str(exc)
                    return
            if not page.lines:
                client.close(1011, "the log holds no events after the cursor; reconnect")
                return
            client.send(b"".join(frame_text(line[:-1]) for line in page.lines), replay=True)
            cursor, page = page.next_cursor, None
            await client.wait_drained()

    async def serve(self, stream: trio.SocketStream, head: bytes) -> None:
        """Handshake, attach, then run reader and sender until the client goes."""
        self.active += 1
        try:
            await self._serve(stream, head)
        finally:
            self.active -= 1

    async def _serve(self, stream: trio.SocketStream, head: bytes) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        request = await _handshake(stream, conn, head)
        if request is None:
            return
        refusal = self.authorize(request.extra_headers) if self.authorize is not None else None
        if refusal is not None:
            await _reject_http(stream, *refusal)
            return
        if self.closing:
            await _reject_http(stream, 503, error_body("shutting_down", "the server is stopping"))
            return
        if self.active > self.limits.max_clients:
            self.rejected_full += 1
            await _reject_http(
                stream,
                503,
                error_body(
                    "too_many_clients",
                    f"{self.limits.max_clients} websocket clients are connected "
                    "(websocket.max_clients); retry later or raise the limit",
                    max_clients=self.limits.max_clients,
                ),
            )
            return
        try:
            since, first = await self._cursor(request.target)
        except _Reject as reject:
            await _reject_http(stream, reject.status, reject.body)
            return
        _tune(stream)
        await stream.send_all(conn.send(AcceptConnection()))
        # wsproto's server side drops bytes that followed the handshake in the same read
        trailing = head[head.index(b"\r\n\r\n") + 4 :]
        if trailing:
            conn.receive_data(trailing)
        client = WsClient(self, stream, conn, _peer(stream))
        self.connected_total += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run_reader)
                nursery.start_soon(client.run_sender)
                nursery.start_soon(self.attach, client, since, first)
                await client.gone.wait()
                self.clients.discard(client)
                with trio.move_on_after(CLOSE_FLUSH_S):
                    await client.wait_drained()
                nursery.cancel_scope.cancel()
        finally:
            self.clients.discard(client)
            client.closed = True
            with trio.move_on_after(CLOSE_FLUSH_S, shield=True):
                await stream.aclose()

    async def _cursor(self, target: str) -> tuple[int | None, Page | None]:
        """`?since=`: checked against the log with the replay's first page (one reader)."""
        values = parse_qs(urlsplit(target).query, keep_blank_values=True).get("since")
        if values is None:
            return None, None
        try:
            if not values[-1]:
                raise CursorError("since", "")
            since = parse_cursor(values[-1], "since", 0)
        except CursorError as exc:
            raise _Reject(400, error_body("invalid_cursor", str(exc), parameter="since")) from None
        try:
            page = await read_page(self.bus.log, since)
        except StaleCursorError as exc:
            raise _Reject(410, stale_body(exc)) from None
        except EventLogError as exc:
            raise _Reject(503, error_body("log_unavailable", f"{exc}; retry later")) from None
        head = max(page.head, self.delivered_seq)
        if since > head:
            raise _Reject(
                400,
                error_body(
                    "invalid_cursor",
                    f"since={since} is ahead of the newest event {head}; pass a seq you have "
                    "received, or omit since to start live",
                    parameter="since",
                    requested_cursor=since,
                    head_cursor=head,
                ),
            )
        return since, page


class _Reject(Exception):
    def __init__(self, status: int, body: dict[str, object]) -> None:
        self.status, self.body = status, body


async def _handshake(stream: trio.SocketStream, conn: WSConnection, head: bytes) -> Request | None:
    """wsproto's verdict on the request head (complete: the front door read it, httphead.py);
    anything but a websocket upgrade is answered 400 and closed (None)."""
    try:
        conn.receive_data(head)
        for event in conn.events():
            if isinstance(event, Request):
                return event
        problem = "the request head is incomplete"
    except RemoteProtocolError as exc:
        problem = str(exc)
    await _reject_http(
        stream,
        400,
        error_body(
            "bad_request",
            f"/ws/events needs a websocket upgrade: {problem}",
            fix="send Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key and "
            "Sec-WebSocket-Version: 13",
        ),
    )
    return None


async def _reject_http(stream: trio.SocketStream, status: int, body: dict[str, object]) -> None:
    payload = orjson.dumps(body)
    reason = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
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
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
