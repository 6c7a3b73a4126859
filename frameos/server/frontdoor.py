"""One host and port for the whole HTTP surface (design E of shared/notes/ws-fanout.md).

Our accept loop reads each connection's request line. `GET /ws/events` goes to the websocket
fast path; everything else is handed, with the bytes already read, to hypercorn's trio
`TCPServer` serving the quart-trio app. This uses hypercorn internals (TCPServer,
WorkerContext, Lifespan) instead of `worker_serve`, so graceful shutdown is ours: on shutdown we
stop accepting, tell hypercorn's connections to finish (`context.terminated`), close every
websocket with 1001, and give all connections `graceful_s` before cancelling them. hypercorn is
pinned to the minor versions this was tested with (pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from frameos.events import Message
from frameos.server.wsfast import WS_PATH_TEXT, WsHub

PEEK_TIMEOUT_S = 10.0
PEEK_MAX_BYTES = 8 * 1024
WS_PATH = WS_PATH_TEXT.encode()


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns bytes already read from it (the peeked request)."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.transport = stream
        self.socket = stream.socket  # hypercorn reads peer and local addresses from it
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


def is_event_stream(head: bytes) -> bool:
    """True when the request line is `GET /ws/events[?...] HTTP/1.x`."""
    parts = head.split(b" ", 2)
    if len(parts) < 3 or parts[0] != b"GET":
        return False
    path = parts[1].split(b"?", 1)[0]
    return path == WS_PATH


async def read_request_line(stream: trio.SocketStream) -> bytes:
    """Read until the first CRLF (or 8 KiB, or EOF); returns everything read."""
    buffer = b""
    while b"\r\n" not in buffer and len(buffer) < PEEK_MAX_BYTES:
        chunk = await stream.receive_some(PEEK_MAX_BYTES)
        if not chunk:
            break
        buffer += chunk
    return buffer


def hypercorn_config(graceful_s: float) -> HyperConfig:
    config = HyperConfig()
    config.accesslog = None
    config.errorlog = None  # the app reports its own errors as events
    config.graceful_timeout = graceful_s
    config.keep_alive_timeout = 5
    config.h11_max_incomplete_size = 16 * 1024
    return config


class FrontDoor:
    """Owns the listening socket and every connection on it."""

    def __init__(self, app: Any, hub: WsHub, *, graceful_s: float = 3.0) -> None:
        self.app = ASGIWrapper(app)
        self.hub = hub
        self.config = hypercorn_config(graceful_s)
        self.context = WorkerContext(None)
        self.lifespan_state: dict[str, Any] = {}
        self.graceful_s = graceful_s
        self.connections = 0
        self._idle = trio.Event()

    async def run(
        self,
        listeners: list[trio.SocketListener],
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the app's lifespan, serve until `stop` is set, then drain with a bound.

        `listeners` come from `frameos.server.listen.bind`; `task_status.started` hands back the
        bound (host, port): with port 0, the real port.
        """
        bound = listeners[0].socket.getsockname()[:2]
        lifespan = Lifespan(self.app, self.config, self.lifespan_state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            async with trio.open_nursery() as connections:
                connections.start_soon(self.hub.run_keepalive)
                accepting = await connections.start(self._accept_all, listeners, connections)
                task_status.started((bound[0], bound[1]))
                await stop.wait()
                accepting.cancel()
                for listener in listeners:
                    await listener.aclose()
                await self.context.terminated.set()
                self.hub.close_all()
                connections.cancel_scope.deadline = trio.current_time() + self.graceful_s
                await self._wait_idle()
                connections.cancel_scope.cancel()
            with trio.move_on_after(self.graceful_s, shield=True):
                await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()

    async def _wait_idle(self) -> None:
        """Wait until every connection (websocket ones included) has finished."""
        if self.connections:
            self._idle = trio.Event()
            await self._idle.wait()

    async def _accept_all(
        self,
        listeners: list[trio.SocketListener],
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            with trio.move_on_after(PEEK_TIMEOUT_S) as peek:
                try:
                    head = await read_request_line(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    head = b""
            if peek.cancelled_caught or not head:
                await stream.aclose()
                return
            if is_event_stream(head):
                await self.hub.serve(stream, head)
                return
            server = TCPServer(
                self.app,
                self.config,
                self.context,
                ConnectionState(self.lifespan_state.copy()),
                # hypercorn annotates SSLStream but uses only the Stream API
                PrefixedStream(stream, head),  # type: ignore[arg-type]
            )
            await server.run()
        except Exception as exc:
            # One connection's failure is a bug to report, never a reason to stop serving.
            self.hub.bus.publish_nowait(
                Message(text=f"HTTP connection handler failed: {type(exc).__name__}: {exc}"),
                "error",
            )
        finally:
            self.connections -= 1
            if not self.connections:
                self._idle.set()
            with trio.move_on_after(1, shield=True):
                await stream.aclose()  # idempotent; covers a handler cancelled mid-peek
