"""The front door with raw sockets: every connection ends, every refusal is JSON (issue 8 #3,
#8, #9), and hypercorn is used through its public API only (issue 9)."""

from __future__ import annotations

import ast
import json
import struct
from pathlib import Path

import pytest
import trio

import frameos
from frameos.events import Message
from frameos.server.httphead import MAX_HEAD_BYTES, Rejected, parse_head
from tests.test_server import Server, serving

UPGRADE = (
    b"connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def until_eof(stream: trio.SocketStream, seconds: float = 5) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    data = b""
    with trio.fail_after(seconds):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def talk(port: int, raw: bytes) -> bytes:
    """Send raw bytes; return all the server answers; the server must end the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        return await until_eof(stream)


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split raw bytes into (status, headers, body) responses (Content-Length framed)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, v in (ln.decode().split(":", 1) for ln in lines[1:] if b":" in ln)
        )
        length = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split(b" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return out


def one_error(data: bytes, status: int) -> dict[str, object]:
    """Exactly one response, `status`, in the documented error shape."""
    [(got, headers, body)] = responses(data)
    assert got == status, data
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert set(error) == {"error", "message", "details"}, error
    return error


def no_errors(server: Server) -> None:
    """Nothing was reported as an internal failure (no `message` with severity error)."""
    errors = [e for e in server.bus.ring if e.severity == "error"]
    assert not errors, [e.line for e in errors]


# --- issue 8 #3: every HTTP connection ends --------------------------------------------------


async def test_connection_close_and_http10_end_the_connection(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        for request in (
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            b"GET /healthz HTTP/1.0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /readyz HTTP/1.1\r\nhost: x\r\n"
            b"connection: close\r\n\r\n",
        ):
            answers = responses(await talk(server.port, request))
            assert [status for status, _, _ in answers] == [200] * request.count(b"GET ")


async def test_keep_alive_timeout_is_enforced(tmp_path: Path) -> None:
    # 1 s, not less: hypercorn times a connection idle from its start, so a loop stalled for
    # longer than the keep-alive (a loaded machine) closes it before the request is forwarded
    async with serving(tmp_path, keep_alive_s=1) as server:
        streams = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(20)]
        for stream in streams:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        for stream in streams:
            [(status, _, _)] = responses(await until_eof(stream))  # closed once idle
            assert status == 200
            await stream.aclose()


async def test_stop_does_not_wait_for_idle_keep_alive_clients(tmp_path: Path) -> None:
    # graceful_s is 30 s: a stop that waited for the idle connection would fail the deadline
    async with serving(tmp_path, graceful_s=30, keep_alive_s=60) as server:
        idle = await trio.open_tcp_stream("127.0.0.1", server.port)
        await idle.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while not (answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"}")):
                answer += await idle.receive_some(65536)
        server.stop.set()
        assert await until_eof(idle) == b""
        await idle.aclose()


# --- issue 8 #8: upgrades elsewhere and bad cursors are JSON, never 500 ----------------------


async def test_websocket_upgrades_elsewhere_get_404_json(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        for path in ("/", "/healthz", "/ws/eventsx", "/v1/events"):
            error = one_error(
                await talk(
                    server.port, f"GET {path} HTTP/1.1\r\nhost: x\r\n".encode() + UPGRADE + b"\r\n"
                ),
                404,
            )
            assert error["error"] == "not_found"
        # the event stream after a keep-alive request on the same connection
        data = await talk(
            server.port,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /ws/events HTTP/1.1\r\nhost: x\r\n" + UPGRADE + b"\r\n",
        )
        (first, _, _), (second, _, body) = responses(data)
        assert (first, second) == (200, 404)
        assert "first request" in json.loads(body)["message"]
        no_errors(server)


@pytest.mark.parametrize("since", ["%C2%B2", "1" * 5000, "-1", "", "1e3"])
async def test_bad_since_gets_400_naming_it(tmp_path: Path, since: str) -> None:
    async with serving(tmp_path) as server:
        request = f"GET /ws/events?since={since} HTTP/1.1\r\nhost: x\r\n".encode() + UPGRADE
        error = one_error(await talk(server.port, request + b"\r\n"), 400)
        assert error["error"] == "invalid_cursor"
        assert error["details"] == {"parameter": "since"}
        assert "since" in str(error["message"]) and "pass the seq" in str(error["message"])
        status, _, body = responses(
            await talk(
                server.port,
                f"GET /v1/events?after={since} HTTP/1.1\r\nhost: x\r\n"
                "connection: close\r\n\r\n".encode(),
            )
        )[0]
        if since:  # an empty after= means the default
            assert status == 400 and json.loads(body)["details"] == {"parameter": "after"}
        no_errors(server)


# --- issue 8 #9: RFC 6455 / RFC 9112 details ---------------------------------------------------


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    key = b"\x01\x02\x03\x04"
    data = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + key + data


async def upgraded(port: int) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /ws/events HTTP/1.1\r\nhost: x\r\n" + UPGRADE + b"\r\n")
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 101 ")
    return stream, data.partition(b"\r\n\r\n")[2]


def close_code(data: bytes) -> int:
    start = data.index(b"\x88")
    return int(struct.unpack("!H", data[start + 2 : start + 4])[0])


async def test_invalid_utf8_closes_1007_and_a_client_1007_is_echoed(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        stream, rest = await upgraded(server.port)
        async with stream:
            await stream.send_all(masked(0x1, b"ok \xff\xfe"))
            assert close_code(rest + await until_eof(stream)) == 1007
        stream, rest = await upgraded(server.port)
        async with stream:
            await stream.send_all(masked(0x8, struct.pack("!H", 1007) + b"bad data"))
            assert close_code(rest + await until_eof(stream)) == 1007
        assert server.hub.protocol_errors == 1  # the echo is a normal close


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"GET /ws/events HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-version: 8\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            426,
            "upgrade_required",
        ),
        (
            b"POST /ws/events HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            b"GET /ws/events HTTP/1.1\r\nhost: x\r\n"
            + UPGRADE
            + b"x-pad: "
            + b"p" * MAX_HEAD_BYTES
            + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * MAX_HEAD_BYTES + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /healthz HTTP/2.0\r\nhost: x\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET /healthz HTTP/9.9\r\nhost: x\r\n\r\n", 505, "http_version_not_supported"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
        (
            b"POST /healthz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
            501,
            "not_implemented",
        ),
        (
            b"POST /healthz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
            "length_required",
        ),
    ],
)
async def test_refusals_are_json_and_close(
    tmp_path: Path, request_bytes: bytes, status: int, code: str
) -> None:
    async with serving(tmp_path) as server:
        error = one_error(await talk(server.port, request_bytes), status)
        assert error["error"] == code
        if status == 426:
            data = await talk(server.port, request_bytes)
            assert responses(data)[0][1]["sec-websocket-version"] == "13"
        if status == 405:
            data = await talk(server.port, request_bytes)
            assert responses(data)[0][1]["allow"] == "GET"
        no_errors(server)


async def test_content_length_with_transfer_encoding_is_refused_without_smuggling(
    tmp_path: Path,
) -> None:
    smuggled = b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n"
    request = (
        b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(smuggled))
    ) + smuggled
    async with serving(tmp_path) as server:
        data = await talk(server.port, request)
        error = one_error(data, 400)  # one answer only: the second request never ran
        assert "Content-Length and Transfer-Encoding" in str(error["message"])
        # after a good request, too: the refusal comes in order, then the connection ends
        data = await talk(server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" + request)
        assert [status for status, _, _ in responses(data)] == [200, 400]


async def test_a_bad_second_request_is_answered_in_order(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        data = await talk(
            server.port,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /x HTTP/9.9\r\nhost: x\r\n\r\n",
        )
        assert [status for status, _, _ in responses(data)] == [200, 505]


async def test_bodies_are_framed_by_content_length(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        body = b"G" * 70_000  # over the app's 64 KiB, to a GET-only route; then the next request
        data = await talk(
            server.port,
            b"POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789"
            b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
            % len(body)
            + body
            + b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        # the app reads a body before it answers: the one over 64 KiB is 413 before 405, and
        # its connection ends there, saying so (the rest of that body is never read)
        answers = responses(data)
        assert [status for status, _, _ in answers] == [405, 413]
        assert answers[1][1]["connection"] == "close"


def test_parse_head_strips_upgrade_and_frames() -> None:
    head = parse_head(
        b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\n"
    )
    assert head.path == b"/a" and head.content_length == 3 and not head.last
    assert b"upgrade" not in head.forward.lower() and head.forward.endswith(b"\r\n\r\n")
    assert parse_head(b"GET / HTTP/1.0\r\n\r\n").last
    assert not parse_head(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").last
    for bad in (
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1, 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: +1\r\n\r\n",
        b"GET  / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost : x\r\n\r\n",
    ):
        with pytest.raises(Rejected) as info:
            parse_head(bad)
        assert info.value.status == 400


# --- issue 9: hypercorn through its public API only ------------------------------------------

PUBLIC_HYPERCORN = {"hypercorn.config", "hypercorn.trio"}


def test_frameos_imports_only_public_hypercorn_modules() -> None:
    root = Path(frameos.__file__).parent
    used: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "hypercorn":
                    used.setdefault(name, set()).add(path.name)
    assert used, "the front door serves through hypercorn"
    assert set(used) <= PUBLIC_HYPERCORN, used


async def test_no_private_hypercorn_object_is_held_after_serving(tmp_path: Path) -> None:
    """hypercorn.trio.serve loads its own internals; frameos must not reach for them."""
    import sys

    async with serving(tmp_path) as server:
        await talk(server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        for name, module in list(sys.modules.items()):
            if not name.startswith("frameos") or module is None:
                continue
            for attr, value in vars(module).items():
                owner = getattr(value, "__module__", None) or getattr(value, "__name__", "")
                if isinstance(owner, str) and owner.startswith("hypercorn"):
                    assert owner in PUBLIC_HYPERCORN, f"{name}.{attr} comes from {owner}"
        await server.bus.publish(Message(text="still serving"))


# --- /healthz and the start ----------------------------------------------------------------


async def test_healthz_degraded_while_the_log_faults(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        server.bus._failed("append", OSError(28, "No space left on device"))  # what ENOSPC does
        [(status, _, body)] = responses(
            await talk(
                server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
        )
        health = json.loads(body)
        assert status == 200 and health["status"] == "degraded"
        assert (
            health["event_log"]["write_errors"] == 1 and "No space" in health["event_log"]["fault"]
        )
        [(_, _, metrics)] = responses(
            await talk(
                server.port, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
        )
        assert b"frameos_event_log_write_errors_total 1.0" in metrics
        assert b"frameos_event_log_fault 1.0" in metrics
        server.bus._recovered("append")
        [(_, _, body)] = responses(
            await talk(
                server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
        )
        assert json.loads(body)["status"] == "ok"


async def test_a_stack_that_cannot_serve_fails_the_start(tmp_path: Path) -> None:
    """An app that answers the start probe with 500: ServerError once, before any accept."""
    from frameos.errors import ServerError
    from frameos.server.frontdoor import FrontDoor
    from frameos.server.listen import bind
    from frameos.server.wsfast import WsHub
    from tests.test_server import Bus, EventLog, validate_config

    async def broken(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":  # type: ignore[operator]
                await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
            await send({"type": "lifespan.shutdown.complete"})  # type: ignore[operator]
            return
        await send({"type": "http.response.start", "status": 500, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    log = EventLog(tmp_path / "events.jsonl")
    bus = Bus(log, last_seq=log.open().last_seq)
    hub = WsHub(bus, validate_config({}, "test").websocket)
    door = FrontDoor(broken, hub, graceful_s=1)
    listeners = await bind("127.0.0.1", 0)

    async def start() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await nursery.start(door.run, listeners, trio.Event())

    with pytest.raises(BaseExceptionGroup) as info:
        await start()
    [error] = [e for e in _leaves(info.value) if isinstance(e, ServerError)]
    text = str(error)
    assert "HTTP stack cannot serve" in text and "500" in text and "reinstall" in text
    assert door.upstream.address.startswith("\0frameos-")  # abstract: no file left behind
    log.close()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def test_clients_that_reset_mid_response_leave_the_server_serving(tmp_path: Path) -> None:
    import socket

    async with serving(tmp_path) as server:
        for round_ in range(30):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            request = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n" * (1 + round_ % 5)
            await stream.send_all(request)
            if round_ % 2:
                await stream.receive_some(10)
            # close with RST (SO_LINGER 0) while answers are on their way
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()
        answer = await talk(
            server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        no_errors(server)


async def test_a_private_socket_that_cannot_bind_is_one_server_error(tmp_path: Path) -> None:
    from frameos.errors import ServerError
    from frameos.server.frontdoor import FrontDoor
    from frameos.server.listen import bind
    from frameos.server.wsfast import WsHub
    from tests.test_server import Bus, EventLog, validate_config

    log = EventLog(tmp_path / "events.jsonl")
    bus = Bus(log, last_seq=log.open().last_seq)
    hub = WsHub(bus, validate_config({}, "test").websocket)
    door = FrontDoor(None, hub, graceful_s=1)  # type: ignore[arg-type]  # never reached
    door.upstream.address = "\0" + "x" * 200  # longer than sun_path: bind fails
    listeners = await bind("127.0.0.1", 0)

    async def start() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await nursery.start(door.run, listeners, trio.Event())

    with pytest.raises(BaseExceptionGroup) as info:
        await start()
    [error] = [e for e in _leaves(info.value) if isinstance(e, ServerError)]
    assert "HTTP stack cannot start" in str(error) and "AF_UNIX" in str(error)
    log.close()


# --- one connection never stops the server (issue 8: never a crash of the supervisor) --------


async def test_a_failing_connection_is_reported_once_and_the_server_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frameos.server import frontdoor

    real = frontdoor._parse

    def parse(buffer: bytes) -> object:
        if buffer.startswith(b"GET /boom "):
            raise RuntimeError("a bug in one handler")
        return real(buffer)

    monkeypatch.setattr(frontdoor, "_parse", parse)
    async with serving(tmp_path) as server:
        assert await talk(server.port, b"GET /boom HTTP/1.1\r\nhost: x\r\n\r\n") == b""
        answer = await talk(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        with trio.fail_after(5):
            while not (errors := [e for e in server.bus.ring if e.severity == "error"]):
                await trio.sleep(0.01)
        [error] = errors
        assert b"RuntimeError" in error.line and b"a bug in one handler" in error.line


# --- issue 8 #3: a truncated or slow request body ends the connection ------------------------


@pytest.mark.parametrize("then", ["silence", "close"])
async def test_a_truncated_body_ends_the_connection_within_the_body_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    from frameos.server import frontdoor
    from tests.api_helpers import ADMIN, serving_api

    monkeypatch.setattr(frontdoor, "HEAD_TIMEOUT_S", 0.5)
    async with serving_api(tmp_path) as served:  # a route that reads its body
        stream = await trio.open_tcp_stream("127.0.0.1", served.port)
        async with stream:
            await stream.send_all(
                b"POST /v1/runs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer " + ADMIN.encode() + b"\r\ncontent-length: 100\r\n\r\n"
                b'{"a": 1234'
            )
            if then == "close":
                await stream.send_eof()
            await until_eof(stream, 5)  # fails if the server holds the connection


# --- several listeners share one descriptor budget -------------------------------------------


async def test_every_listener_accepts_again_after_the_budget_was_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frameos.server import frontdoor

    monkeypatch.setattr(frontdoor, "fd_budget", lambda *_: 2 * frontdoor.HTTP_FDS)
    listeners = [
        *await trio.open_tcp_listeners(0, host="127.0.0.1"),
        *await trio.open_tcp_listeners(0, host="127.0.0.1"),
    ]
    ports = [listener.socket.getsockname()[1] for listener in listeners]
    async with serving(tmp_path, listeners=listeners) as server:
        for _ in range(2):  # two episodes at the budget
            held = [await trio.open_tcp_stream("127.0.0.1", port) for port in ports * 2]
            with trio.fail_after(5):
                while not any(b"RLIMIT_NOFILE" in e.line for e in server.bus.ring):
                    await trio.sleep(0.01)
            for stream in held:
                await stream.aclose()
            for port in ports:  # each listener answers again
                answer = await talk(port, b"GET /healthz HTTP/1.0\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 200 "), port


# --- edges of the front door's own code ------------------------------------------------------


def test_the_descriptor_budget_with_an_unlimited_or_a_tiny_rlimit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    from frameos.server import frontdoor

    limit = resource.RLIM_INFINITY
    monkeypatch.setattr(frontdoor.resource, "getrlimit", lambda _: (limit, limit))
    assert frontdoor.fd_budget(vms=2) == (1 << 20) - frontdoor.FD_RESERVE - 2 * frontdoor.FDS_PER_VM
    limit = 64  # less than frameos keeps for itself: still room for a few connections
    assert frontdoor.fd_budget() == 4 * frontdoor.HTTP_FDS


def test_a_client_going_away_is_not_a_failure_but_anything_else_is() -> None:
    from frameos.server.frontdoor import _unexpected

    gone = trio.BrokenResourceError("reset")
    bug = ValueError("a bug")
    assert _unexpected(gone) is None
    assert _unexpected(bug) is bug
    assert _unexpected(ExceptionGroup("x", [gone, trio.ClosedResourceError()])) is None
    nested = ExceptionGroup("outer", [gone, ExceptionGroup("inner", [bug])])
    assert _unexpected(nested) is bug  # the one failure itself, for its type and text
    two = _unexpected(ExceptionGroup("x", [gone, bug, KeyError("k")]))
    assert isinstance(two, ExceptionGroup) and len(two.exceptions) == 2


async def test_an_app_that_cannot_be_reached_is_a_503_json_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frameos.server.upstream import Upstream

    async with serving(tmp_path) as server:

        async def refused(self: Upstream) -> trio.SocketStream:
            raise ConnectionRefusedError(111, "Connection refused")

        monkeypatch.setattr(Upstream, "connect", refused)  # hypercorn's socket went away
        error = one_error(await talk(server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"), 503)
        assert error["error"] == "unavailable" and "cannot reach the app" in str(error["message"])
        no_errors(server)


async def test_a_second_head_that_never_completes_ends_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frameos.server import frontdoor

    # the partial head is given up after HEAD_TIMEOUT_S; hypercorn then ends the connection
    # when its keep-alive runs out (it is not told that no request follows)
    monkeypatch.setattr(frontdoor, "HEAD_TIMEOUT_S", 0.3)
    async with serving(tmp_path, keep_alive_s=1) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /readyz HTTP/1.1\r\nho"
            )
            answers = responses(await until_eof(stream))
        assert [status for status, _, _ in answers] == [200]
        no_errors(server)


async def test_a_websocket_handshake_during_the_stop_is_refused_503(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        server.hub.close_all()  # the stop has begun (the front door calls it first)
        error = one_error(
            await talk(server.port, b"GET /ws/events HTTP/1.1\r\nhost: x\r\n" + UPGRADE + b"\r\n"),
            503,
        )
        assert error["error"] == "shutting_down"
        assert not server.hub.clients and server.hub.active == 0
