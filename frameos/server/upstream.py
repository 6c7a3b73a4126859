"""hypercorn serving the quart-trio app on a private unix socket, through its public API only.

`hypercorn.trio.serve(app, config, shutdown_trigger=...)` listens on a unix socket in the
Linux abstract namespace (`\0frameos-PID-RANDOM`: no file, so no directory to create, nothing
to clean up, no dependence on TMPDIR or PrivateTmp), handed to hypercorn as `fd://N`; the front
door connects there once per HTTP connection and splices bytes. A process of this network
namespace could connect to it too, and gets what the TCP port gives: the same app, the same
token checks. Nothing here imports a hypercorn module other than `hypercorn.config` and
`hypercorn.trio` (tests/test_frontdoor.py checks the source).

Two things are done around the app, in ASGI terms:

- The app's final `http.response.body` send is shielded from cancellation. Under quart-trio 0.12
  the request task is cancelled as soon as the disconnect message reaches it, which is *during*
  that send: hypercorn's close of the connection (`send_eof`, `aclose`) and the restart of its
  keep-alive timer run inside it and are cancelled, so no connection ever ended (issue 8 #3).
- Requests the front door rejects arrive as `GET REJECT_PATH` carrying the answer in a header,
  so the answer goes out in order on the connection, after responses still in flight.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from frameos.errors import ServerError
from frameos.server.httphead import Rejected

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REJECT_PATH = b"/.frameos/reject"
REJECT_HEADER = b"x-frameos-reject"
KEEP_ALIVE_S = 5.0
PROBE_TIMEOUT_S = 10.0


def reject_request(rejected: Rejected) -> bytes:
    """The request line and head the front door sends upstream in place of a rejected one."""
    answer = {
        "status": rejected.status,
        "headers": list(rejected.headers),
        "body": rejected.body(),
    }
    value = json.dumps(answer, ensure_ascii=True, separators=(",", ":")).encode()
    return (
        b"GET "
        + REJECT_PATH
        + b" HTTP/1.1\r\nhost: frameos\r\nconnection: close\r\n"
        + REJECT_HEADER
        + b": "
        + value
        + b"\r\n\r\n"
    )


def front_app(app: ASGIApp) -> ASGIApp:
    """The app as hypercorn gets it: rejections answered, the final send shielded."""

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)  # lifespan (websockets never get here: no Upgrade)
            return
        if scope["raw_path"] == REJECT_PATH:
            await _answer_rejection(scope, send)
            return

        async def shielded_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await app(scope, receive, shielded_send)

    return front


async def _answer_rejection(scope: Scope, send: Send) -> None:
    raw = next(value for name, value in scope["headers"] if name == REJECT_HEADER)
    answer = json.loads(raw)
    body = json.dumps(answer["body"]).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in answer["headers"]),
    ]
    await send({"type": "http.response.start", "status": answer["status"], "headers": headers})
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": body, "more_body": False})


def hypercorn_config(fd: int, graceful_s: float, keep_alive_s: float) -> HyperConfig:
    """hypercorn's config, serving the bound (not yet listening) socket `fd` (it takes it)."""
    config = HyperConfig()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = None  # the app reports its own errors as events
    config.graceful_timeout = graceful_s
    config.keep_alive_timeout = keep_alive_s
    config.h11_max_incomplete_size = 64 * 1024  # heads are checked (16 KiB) before they get here
    config.include_server_header = False
    return config


class Upstream:
    """hypercorn on a private unix socket; `connect()` opens one connection to it."""

    def __init__(self, app: ASGIApp, *, graceful_s: float, keep_alive_s: float = KEEP_ALIVE_S):
        self.app = front_app(app)
        self.graceful_s = graceful_s
        self.keep_alive_s = keep_alive_s
        self.address = f"\0frameos-{os.getpid()}-{secrets.token_hex(8)}"  # abstract namespace
        self._shutdown = trio.Event()

    async def connect(self) -> trio.SocketStream:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.connect(self.address)
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def shutdown(self) -> None:
        """Begin hypercorn's graceful shutdown (idle connections close at once)."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until `shutdown()`; started once a probe request got its answer.

        A stack that cannot serve fails here, once, with a ServerError saying what to do.
        """
        config = hypercorn_config(self._bound(), self.graceful_s, self.keep_alive_s)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve, config)
            await self._probe()
            task_status.started()

    def _bound(self) -> int:
        """The private socket, bound; its descriptor, for hypercorn to take."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.address)
        except OSError as exc:
            sock.close()
            raise ServerError(
                f"the HTTP stack cannot start: binding its private unix socket (abstract "
                f"namespace) failed: {exc.strerror or exc}; frameos needs AF_UNIX sockets "
                "(systemd: RestrictAddressFamilies= must allow AF_UNIX)"
            ) from None
        return sock.detach()

    async def _serve(
        self, config: HyperConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await serve(
                self.app,  # type: ignore[arg-type]  # an ASGI 3 callable
                config,
                shutdown_trigger=self._shutdown.wait,
                task_status=task_status,  # type: ignore[arg-type]
            )
        except (OSError, TypeError, AttributeError) as exc:
            raise ServerError(
                _broken(f"hypercorn could not serve: {type(exc).__name__}: {exc}")
            ) from exc

    async def _probe(self) -> None:
        """One real request through hypercorn and the app before anything is accepted."""
        request = b"GET /healthz HTTP/1.1\r\nhost: frameos\r\nconnection: close\r\n\r\n"
        answer, ended = b"", False
        with trio.move_on_after(PROBE_TIMEOUT_S):
            stream = await self.connect()
            async with stream:
                await stream.send_all(request)
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                ended = True
        if not answer.startswith(b"HTTP/1.1 200 "):
            status = answer.split(b"\r\n", 1)[0].decode("latin-1") or "no answer"
            raise ServerError(_broken(f"GET /healthz through hypercorn got {status!r}"))
        if not ended:
            raise ServerError(_broken("hypercorn kept the connection open after Connection: close"))


def _broken(what: str) -> str:
    return (
        f"the HTTP stack cannot serve ({what}); reinstall frameos with its dependencies "
        "(pip install --force-reinstall frameos: hypercorn>=0.17, quart-trio) and start again"
    )
