"""The HTTP surface in-process: real sockets on port 0, the real app and front door."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed, open_websocket_url

from frameos.bus import RING_SIZE, Bus
from frameos.config import validate_config
from frameos.eventlog import EventLog
from frameos.events import Message
from frameos.server.app import create_app
from frameos.server.frontdoor import FrontDoor
from frameos.server.listen import bind
from frameos.server.metrics import Metrics
from frameos.server.wsfast import WsHub, frame_text
from frameos.state import Phase, RuntimeState
from tests.conftest import require_tools, until


@dataclass
class Server:
    url: str
    ws: str
    bus: Bus
    hub: WsHub
    state: RuntimeState
    port: int
    stop: trio.Event


@asynccontextmanager
async def serving(tmp_path: Path, **config: object) -> AsyncIterator[Server]:
    log = EventLog(
        tmp_path / "events.jsonl",
        max_bytes=config.pop("max_bytes", None),  # type: ignore[arg-type]
        keep=2,
    )
    listeners = config.pop("listeners", None)
    ring_size: int = config.pop("ring_size", RING_SIZE)  # type: ignore[assignment]
    bus = Bus(log, last_seq=log.open().last_seq, ring_size=ring_size)
    graceful_s = config.pop("graceful_s", 1)
    keep_alive_s = config.pop("keep_alive_s", 5)
    cfg = validate_config({"frame_port": 0, **config}, "test")
    state = RuntimeState(config=cfg, config_source="test")
    hub = WsHub(bus, cfg.websocket)
    door = FrontDoor(
        create_app(state, bus, hub, Metrics(state, bus, hub)),
        hub,
        graceful_s=graceful_s,  # type: ignore[arg-type]
        keep_alive_s=keep_alive_s,  # type: ignore[arg-type]
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        host, port = await nursery.start(door.run, listeners or await bind("127.0.0.1", 0), stop)
        state.set_phase(Phase.READY)
        yield Server(
            f"http://{host}:{port}", f"ws://{host}:{port}/ws/events", bus, hub, state, port, stop
        )
        stop.set()
        await bus.aclose()
    log.close()


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw HTTP request; return status, headers and body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(5):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                headers = dict(
                    line.decode().lower().split(": ", 1)
                    for line in head.split(b"\r\n")[1:]
                    if b": " in line
                )
                if "content-length" in headers and len(body) >= int(headers["content-length"]):
                    break
    status = int(data.split(b" ", 2)[1])
    return status, headers, body


async def get(port: int, path: str) -> tuple[int, bytes]:
    status, _, body = await http(port, f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return status, body


async def test_health_ready_and_not_found(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        status, body = await get(server.port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok"
        assert health["event_stream"]["transport"] == "websocket"
        assert health["event_stream"]["path"] == "/ws/events"
        assert health["workers"] == {"total": 0, "running": 0, "failed": 0}
        assert (await get(server.port, "/health"))[0] == 200
        assert (await get(server.port, "/readyz"))[0] == 200
        status, body = await get(server.port, "/nope")
        assert status == 404 and json.loads(body)["error"] == "not_found"
        server.state.set_phase(Phase.STOPPING)
        status, body = await get(server.port, "/readyz")
        assert status == 503 and json.loads(body)["reasons"] == ["shutdown in progress (stopping)"]


async def test_bad_methods_and_bodies_get_4xx(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        status, _, body = await http(
            server.port, b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
        )
        assert status == 405 and json.loads(body)["error"] == "method_not_allowed"
        status, _, _ = await http(server.port, b"GARBAGE\r\n\r\n")
        assert status == 400
        for bad in (b"no colon here", b"content-length: -5", b"content-length: x"):
            status, _, _ = await http(
                server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + bad + b"\r\n\r\n"
            )
            assert 400 <= status < 500, bad
        assert (await get(server.port, "/healthz"))[0] == 200


async def test_metrics_pass_promtool(tmp_path: Path) -> None:
    require_tools("promtool")
    async with serving(tmp_path) as server:
        await get(server.port, "/healthz")
        status, body = await get(server.port, "/metrics")
    assert status == 200
    assert b"frameos_events_published_total" in body
    # 2: ours and the front door's start probe (one real request through hypercorn and the app)
    assert b'frameos_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in body
    assert b"frameos_event_log_write_errors_total 0.0" in body
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()


async def test_poll_events_and_stale_cursor(tmp_path: Path) -> None:
    async with serving(tmp_path, max_bytes=4000) as server:
        for i in range(100):
            await server.bus.publish(Message(text=f"event {i:04d} " + "x" * 40))
            if i % 10 == 9:
                await trio.sleep(0.01)  # let the writer take a batch: rotation is per batch
        status, body = await get(server.port, "/v1/events?after=95&limit=2")
        page = json.loads(body)
        assert status == 200
        assert [e["seq"] for e in page["events"]] == [96, 97]
        assert page["next_cursor"] == 97 and page["head_cursor"] == 100
        assert page["replay_complete"] is False
        oldest = page["oldest_available_cursor"]
        assert oldest > 0  # rotation dropped the first events
        status, body = await get(server.port, "/v1/events?after=0")
        stale = json.loads(body)
        assert status == 410 and stale["error"] == "stale_cursor"
        assert stale["details"]["oldest_available_cursor"] == oldest
        assert stale["details"]["head_cursor"] == 100
        status, body = await get(server.port, f"/v1/events?after={oldest}&limit=1000")
        seqs = [e["seq"] for e in json.loads(body)["events"]]
        assert seqs == list(range(oldest + 1, 101))
        assert (await get(server.port, "/v1/events?after=abc"))[0] == 400
        assert (await get(server.port, "/v1/events?limit=5000"))[0] == 400


async def test_websocket_receives_events_and_answers_ping(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, open_websocket_url(server.ws) as ws:
        await until(lambda: len(server.hub.clients) == 1)
        for i in range(5):
            await server.bus.publish(Message(text=str(i)))
        got = [json.loads(await ws.get_message()) for _ in range(5)]
        assert [g["fields"]["text"] for g in got] == ["0", "1", "2", "3", "4"]
        assert [g["seq"] for g in got] == sorted(g["seq"] for g in got)
        with trio.fail_after(2):
            await ws.ping(b"hello")  # returns when the pong arrives
        _, body = await get(server.port, "/healthz")
        assert json.loads(body)["event_stream"]["connected_clients"] == 1
    await trio.lowlevel.checkpoint()


async def test_websocket_replays_since_then_goes_live(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        for i in range(20):
            await server.bus.publish(Message(text=str(i)))
        await until(lambda: server.bus.written_seq == server.bus.last_seq)
        async with open_websocket_url(server.ws + "?since=10") as ws:
            for i in range(20, 25):
                await server.bus.publish(Message(text=str(i)))
            seqs = [json.loads(await ws.get_message())["seq"] for _ in range(15)]
        assert seqs == list(range(11, 26))


async def test_websocket_close_is_answered(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        async with open_websocket_url(server.ws) as ws:
            await ws.aclose(code=1000, reason="bye")
            assert ws.closed is not None and ws.closed.code == 1000
        await until(lambda: not server.hub.clients)


async def test_slow_client_is_dropped_and_others_get_everything(tmp_path: Path) -> None:
    async with serving(tmp_path, websocket={"queue_bytes": 131072}) as server:
        received: list[int] = []
        total = 3000  # ~3 MB: more than the kernel buffers of the client that never reads

        async def reader() -> None:
            async with open_websocket_url(server.ws) as ws:
                while len(received) < total:
                    received.append(json.loads(await ws.get_message())["seq"])

        slow = await trio.open_tcp_stream("127.0.0.1", server.port)  # never reads
        await slow.send_all(
            b"GET /ws/events HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
            b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            with trio.fail_after(10):
                while len(server.hub.clients) < 2:  # both handshakes done
                    await trio.sleep(0.001)
            for i in range(total):
                await server.bus.publish(Message(text=f"{i:05d} " + "y" * 1000))
                # the good reader shares this loop (the R3 bench runs readers in another process
                # at full speed): keep it within 50 events (~50 KB, under queue_bytes) of the
                # publisher, however slowly this machine runs it; the stuck one falls behind
                with trio.fail_after(10):
                    while i - len(received) > 50:
                        await trio.sleep(0.001)
        assert received == sorted(received) and len(set(received)) == total
        assert server.hub.dropped_slow == 1
        assert len(server.hub.clients) == 0
        await slow.aclose()


async def test_thousand_malformed_frames_leave_the_server_healthy(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        for i in range(1000):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(
                    b"GET /ws/events HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                # unmasked client frame with a reserved opcode: a protocol error
                await stream.send_all(bytes((0x83 if i % 2 else 0x8F, 0x02)) + b"ab")
                with trio.move_on_after(2):
                    while await stream.receive_some(4096):
                        pass
        assert server.hub.protocol_errors == 1000
        assert (await get(server.port, "/healthz"))[0] == 200
        async with open_websocket_url(server.ws) as ws:
            await until(lambda: len(server.hub.clients) == 1)
            await server.bus.publish(Message(text="still fine"))
            assert json.loads(await ws.get_message())["fields"]["text"] == "still fine"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/ws/events", b"", 400),
        (
            "/ws/events?since=abc",
            b"connection: upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            400,
        ),
        (
            "/ws/events?since=999999",
            b"connection: upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            400,
        ),
    ],
)
async def test_bad_handshakes_get_json_errors(
    tmp_path: Path, path: str, headers: bytes, status: int
) -> None:
    async with serving(tmp_path) as server:
        got, _, body = await http(
            server.port, f"GET {path} HTTP/1.1\r\nhost: x\r\n".encode() + headers + b"\r\n"
        )
        assert got == status
        assert json.loads(body)["error"] in ("bad_request", "invalid_cursor")


async def test_shutdown_closes_websockets_with_going_away(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, open_websocket_url(server.ws) as ws:
        await until(lambda: len(server.hub.clients) == 1)
        server.stop.set()
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:  # noqa: PT012
            while True:
                await ws.get_message()
        assert info.value.reason.code == 1001
        # trio-websocket 0.12 leaves its TCP stream open when the server closes first
        await ws._stream.aclose()


def test_frame_text_lengths() -> None:
    assert frame_text(b"hi") == b"\x81\x02hi"
    assert frame_text(b"a" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert frame_text(b"a" * 70000)[:2] == b"\x81\x7f"


async def test_idle_clients_are_closed_and_live_ones_kept(tmp_path: Path) -> None:
    limits = {"ping_interval_s": 0.1, "idle_timeout_s": 0.35}
    async with serving(tmp_path, websocket=limits) as server:
        silent = await trio.open_tcp_stream("127.0.0.1", server.port)
        await silent.send_all(
            b"GET /ws/events HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
            b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        async with open_websocket_url(server.ws) as live:  # answers pings by itself
            received = b""
            with trio.fail_after(3):
                while chunk := await silent.receive_some(65536):
                    received += chunk  # the 101, pings, then a close frame and EOF
            assert b"\x88" in received  # a close frame before EOF
            assert b"idle timeout" in received
            await until(lambda: len(server.hub.clients) == 1)  # the live one stays
            await server.bus.publish(Message(text="still here"))
            assert json.loads(await live.get_message())["fields"]["text"] == "still here"
        await silent.aclose()
