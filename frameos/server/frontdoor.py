"""One host and port for the whole HTTP surface: our listener, our accept loop, our stop.

Every connection's request heads are read here (frameos/server/httphead.py). `GET /ws/events`
as a connection's first request goes to the websocket fast path (wsfast.py); every other
request goes to hypercorn, which serves the quart-trio app on a private unix socket through its
public API (upstream.py), by splicing bytes: heads and `Content-Length` bodies towards hypercorn,
everything hypercorn answers back to the client. The connection ends when hypercorn ends its
side (after `Connection: close`, HTTP/1.0, the keep-alive timeout, or the stop).

The accept loop is ours so that running out of file descriptors is a warning and a back-off,
not a traceback every 0.1 s: connections are admitted against a budget taken from
RLIMIT_NOFILE (an HTTP connection holds 3 descriptors here: the client's and both ends of the
unix socket; a websocket 1), and EMFILE/ENFILE on accept backs off from 100 ms to 1 s. The
budget leaves FD_RESERVE descriptors plus FDS_PER_VM for each configured VM to the rest of
frameos (the log and its rotation, the VMs' pipes, pidfiles and spawns); every listener's accept
loop borrows from the same trio.CapacityLimiter, one token per descriptor.

One connection's failure is that connection's: an unexpected exception is reported once as a
`message` (error) and closes it; the server goes on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from typing import Any

import orjson
import trio

from frameos.events import Message
from frameos.server.httphead import (
    MAX_HEAD_BYTES,
    Head,
    Rejected,
    head_end,
    parse_head,
    route_event_stream,
    too_large,
)
from frameos.server.upstream import KEEP_ALIVE_S, Upstream, reject_request
from frameos.server.wsfast import WsHub

HEAD_TIMEOUT_S = 10.0  # a request head (or body) must arrive within this
LINGER_S = 1.0  # after our FIN, how long unread client bytes are drained before closing
FD_RESERVE = 128  # descriptors kept for the log and the rest of frameos...
FDS_PER_VM = 4  # ...and for each VM (its pipes, pidfile, a spawn or a rotation in flight)
HTTP_FDS, WS_FDS = 3, 1
ACCEPT_BACKOFF_S = (0.1, 1.0)
RECV = 65_536


def fd_budget(vms: int = 0) -> int:
    """Descriptors the connections may hold: RLIMIT_NOFILE less what frameos and `vms` VMs need."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(4 * HTTP_FDS, soft - FD_RESERVE - FDS_PER_VM * vms)


class FrontDoor:
    """Owns the listening sockets, hypercorn's lifetime and every connection."""

    def __init__(
        self,
        app: Any,
        hub: WsHub,
        *,
        graceful_s: float = 3.0,
        keep_alive_s: float = KEEP_ALIVE_S,
        vms: int = 0,
    ) -> None:
        self.hub = hub
        self.graceful_s = graceful_s
        self.upstream = Upstream(app, graceful_s=graceful_s, keep_alive_s=keep_alive_s)
        self.budget = fd_budget(vms)
        self.fds = trio.CapacityLimiter(self.budget)  # a token per descriptor a connection holds
        self._warned = False  # in an episode at the budget (warned once)

    async def run(
        self,
        listeners: list[trio.SocketListener],
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start hypercorn (probed), serve until `stop` is set, then end every connection.

        `listeners` come from `frameos.server.listen.bind`; `task_status.started` hands back the
        bound (host, port): with port 0, the real port. A stack that cannot serve raises
        ServerError before anything is accepted.
        """
        bound = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as outer:
            await outer.start(self.upstream.run)
            await outer.start(self.hub.run)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self.hub.run_keepalive)
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    task_status.started((bound[0], bound[1]))
                    await stop.wait()
                    accepting.cancel_scope.cancel()
                # Stop: no new connections, no new requests; idle keep-alive connections end
                # now (hypercorn closes them on its shutdown, which ends their splices),
                # requests in flight get graceful_s; leaving this block waits for every
                # connection.
                for listener in listeners:
                    await listener.aclose()
                self.hub.close_all()
                self.upstream.shutdown()
                connections.cancel_scope.deadline = trio.current_time() + self.graceful_s
            outer.cancel_scope.cancel()

    # --- accepting -----------------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept with the descriptors of one HTTP connection in hand; back off on EMFILE."""
        backoff = ACCEPT_BACKOFF_S[0]
        tokens: list[object] = []
        try:
            while True:
                tokens = tokens or await self._borrow(HTTP_FDS)
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        raise
                    self._limit_reached(
                        f"accept failed: {exc.strerror}; accepting again in "
                        f"{backoff:g}..{ACCEPT_BACKOFF_S[1]:g} s (raise LimitNOFILE= / ulimit -n)"
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, ACCEPT_BACKOFF_S[1])
                    continue
                backoff = ACCEPT_BACKOFF_S[0]
                nursery.start_soon(self._handle, stream, tokens)
                tokens = []
        finally:
            self._give(tokens, len(tokens))

    async def _borrow(self, count: int) -> list[object]:
        """`count` descriptors of the budget, one limiter token each; waits while they are used."""
        tokens: list[object] = []
        try:
            for _ in range(count):
                token = object()
                try:
                    self.fds.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    self._limit_reached(
                        f"connections hold the whole descriptor budget ({self.budget}, from "
                        "RLIMIT_NOFILE); new connections wait until some close (raise "
                        "LimitNOFILE= / ulimit -n to allow more)"
                    )
                    await self.fds.acquire_on_behalf_of(token)
                tokens.append(token)
        except BaseException:
            self._give(tokens, len(tokens))
            raise
        return tokens

    def _give(self, tokens: list[object], count: int) -> None:
        """Return `count` of a connection's descriptors to the budget."""
        for _ in range(count):
            self.fds.release_on_behalf_of(tokens.pop())
        if self.fds.borrowed_tokens <= self.budget // 2:
            self._warned = False  # the episode is over: warn again next time

    def _limit_reached(self, text: str) -> None:
        """Warn once per episode (until usage falls to half the budget)."""
        if not self._warned:
            self._warned = True
            self.hub.bus.publish_nowait(Message(text=text), "warn")

    # --- one connection ------------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream, tokens: list[object]) -> None:
        try:
            buffer = b""
            with trio.move_on_after(HEAD_TIMEOUT_S):
                buffer = await _read_head(stream, b"")
            if head_end(buffer) < 0 and len(buffer) <= MAX_HEAD_BYTES:
                return  # nothing complete within the timeout, or the client left
            try:
                head = _parse(buffer)
                event_stream = route_event_stream(head, first=True)
            except Rejected as rejected:
                await self._splice(stream, buffer, rejected)
                return
            if event_stream:
                self._give(tokens, HTTP_FDS - WS_FDS)
                await self.hub.serve(stream, buffer)
                return
            await self._splice(stream, buffer, head)
        except Exception as exc:  # one connection's failure is never the server's
            failure = _unexpected(exc)  # None: the client went away
            if failure is not None:
                self._report(stream, failure)
        finally:
            self._give(tokens, len(tokens))
            with trio.move_on_after(LINGER_S, shield=True):
                await stream.aclose()

    def _report(self, stream: trio.SocketStream, failure: BaseException) -> None:
        """One `message` (error) for a connection that failed; the server goes on."""
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:
            peer = "a client"
        with contextlib.suppress(trio.ClosedResourceError):  # the bus closed: nothing to tell
            self.hub.bus.publish_nowait(
                Message(
                    text=f"the connection from {peer} failed and was closed: "
                    f"{type(failure).__name__}: {failure}; frameos goes on serving"
                ),
                "error",
            )

    async def _splice(
        self, client: trio.SocketStream, buffer: bytes, head: Head | Rejected
    ) -> None:
        try:
            upstream = await self.upstream.connect()
        except OSError as exc:
            await _answer_directly(client, 503, "unavailable", f"cannot reach the app: {exc}")
            return
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._responses, upstream, client, nursery.cancel_scope)
            try:
                if isinstance(head, Rejected):
                    await upstream.send_all(reject_request(head))
                else:
                    await self._requests(client, upstream, buffer, head)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, _BodyCut):
                # the client (or hypercorn) went away, or a body stopped short: hypercorn
                # would wait for the rest; closing both sides ends the connection
                nursery.cancel_scope.cancel()
                return
            # No more requests from this client: hypercorn's answers end the connection.
        with trio.move_on_after(LINGER_S):
            await client.send_eof()
            while await client.receive_some(RECV):
                pass  # unread request bytes would turn our close into a reset

    async def _responses(
        self, upstream: trio.SocketStream, client: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        """Copy hypercorn's bytes to the client until hypercorn closes; then stop reading."""
        source, sink = upstream.socket.fileno(), client.socket.fileno()
        try:
            while data := await read_fd(source):
                # hypercorn writes a response's head and body separately: give it the turn it
                # needs to write the rest, so the client gets one write (one segment) per answer
                await trio.lowlevel.checkpoint()
                with contextlib.suppress(BlockingIOError):
                    data += os.read(source, RECV)
                await write_fd(sink, data)
        except OSError:
            pass  # the client went away (or reset); closing upstream tells hypercorn
        finally:
            done.cancel()

    async def _requests(
        self, client: trio.SocketStream, upstream: trio.SocketStream, buffer: bytes, head: Head
    ) -> None:
        """Forward each request (head and Content-Length body); answer bad heads in order."""
        while True:
            end = head_end(buffer)
            body = buffer[end : end + head.content_length]
            buffer = buffer[end + len(body) :]
            await write_fd(upstream.socket.fileno(), head.forward + body if body else head.forward)
            missing = head.content_length - len(body)
            with trio.move_on_after(HEAD_TIMEOUT_S):
                while missing > 0:
                    chunk = await client.receive_some(min(RECV, missing))
                    if not chunk:
                        break
                    missing -= len(chunk)
                    await upstream.send_all(chunk)
            if missing > 0:
                raise _BodyCut  # the client closed mid-body, or it did not come in time
            if head.last:
                return
            try:
                buffer = await self._next_head(client, buffer)
            except _NoMore:
                return
            try:
                head = _parse(buffer)
                route_event_stream(head, first=False)  # only ever raises for a later request
            except Rejected as rejected:
                await upstream.send_all(reject_request(rejected))
                return

    async def _next_head(self, client: trio.SocketStream, buffer: bytes) -> bytes:
        """The next complete head: idle as long as hypercorn keeps the connection, then bounded.

        Idle is hypercorn's to end: when it closes the connection (the keep-alive timeout, or
        at once on the stop), `_responses` ends and cancels the splice, this wait with it.
        """
        if not buffer:
            buffer = await read_fd(client.socket.fileno())
            if not buffer:
                raise _NoMore
        with trio.move_on_after(HEAD_TIMEOUT_S):
            buffer = await _read_head(client, buffer)
        if head_end(buffer) < 0 and len(buffer) <= MAX_HEAD_BYTES:
            raise _NoMore
        return buffer


class _NoMore(Exception):
    """The client sends no further request on this connection."""


class _BodyCut(Exception):
    """A request body ended (or stalled) before its Content-Length."""


def _unexpected(exc: Exception) -> Exception | None:
    """What of `exc` is a failure, not the client going away (None when nothing is)."""
    gone = (trio.BrokenResourceError, trio.ClosedResourceError)
    if isinstance(exc, ExceptionGroup):
        rest = exc.split(gone)[1]
        while isinstance(rest, ExceptionGroup) and len(rest.exceptions) == 1:
            rest = rest.exceptions[0]  # the one failure itself, for its type and text
        return rest
    return None if isinstance(exc, gone) else exc


async def read_fd(fd: int) -> bytes:
    """One read from a non-blocking socket, waiting only when nothing is there yet.

    The splice's hot path uses the descriptors directly: trying first and waiting only on
    EAGAIN costs a fraction of a stream call, which waits (and re-arms epoll) every time.
    """
    while True:
        try:
            data = os.read(fd, RECV)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        await trio.lowlevel.checkpoint_if_cancelled()
        return data


async def write_fd(fd: int, data: bytes) -> None:
    """Write all of `data` to a non-blocking socket (OSError when the peer is gone)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
    await trio.lowlevel.checkpoint_if_cancelled()


async def _read_head(stream: trio.SocketStream, buffer: bytes) -> bytes:
    """Read until the buffer holds a complete head, exceeds MAX_HEAD_BYTES, or the peer ends."""
    while head_end(buffer) < 0 and len(buffer) <= MAX_HEAD_BYTES:
        chunk = await stream.receive_some(RECV)
        if not chunk:
            break
        buffer += chunk
    return buffer


def _parse(buffer: bytes) -> Head:
    end = head_end(buffer)
    if end < 0 or end > MAX_HEAD_BYTES:
        raise too_large()
    return parse_head(buffer[:end])


async def _answer_directly(client: trio.SocketStream, status: int, code: str, text: str) -> None:
    """For when hypercorn cannot be reached: the first request, nothing else in flight."""
    body = orjson.dumps({"error": code, "message": text, "details": {}})
    head = (
        f"HTTP/1.1 {status} Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    with trio.move_on_after(LINGER_S), contextlib.suppress(trio.BrokenResourceError):
        await client.send_all(head + body)
