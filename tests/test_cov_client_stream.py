"""The client's event sources (frameos/client/stream.py) against the real server in-process:
a cursor the log no longer keeps (410) on both reads, the websocket refused (polling instead),
and the helpers that word a lost connection."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from frameos.client import stream
from frameos.client.api import Api, ClientError
from frameos.client.discover import Target
from frameos.envelope import Envelope
from frameos.events import Message
from tests.test_server import Server, serving


def target(server: Server) -> Target:
    return Target(server.url, None, None, (), None, None)


async def rotated(server: Server, count: int = 300) -> None:
    """Publish until the first events are rotated away (the log keeps 2 small files; rotation
    is per written batch, so each batch of 10 is let through before the next)."""
    for i in range(count):
        await server.bus.publish(Message(text=f"{i:04d} " + "r" * 120))
        if i % 10 == 9:
            with trio.fail_after(10):
                while server.bus.written_seq < i + 1:
                    await trio.sleep(0.001)


async def test_a_page_cursor_the_log_no_longer_keeps_resumes_at_the_oldest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(tmp_path, max_bytes=8192, ring_size=2) as server:
        await rotated(server)
        seen: list[int] = []
        async with Api(target(server)) as api:
            last, stopped = await stream.read_http(api, 0, lambda e: seen.append(e.seq) is not None)
            head = await stream.head(api)  # the log no longer starts at 1: a 410 names the head
        assert not stopped and last == head == 300
        assert seen == list(range(seen[0], 301)) and seen[0] > 1
        warning = f"events after 0 are no longer retained; from {seen[0]} on"
        assert warning in capsys.readouterr().err


async def test_a_websocket_cursor_the_log_no_longer_keeps_resumes_at_the_oldest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(tmp_path, max_bytes=8192, ring_size=2) as server:
        await rotated(server)
        seen: list[int] = []

        def handle(envelope: Envelope) -> bool:
            seen.append(envelope.seq)
            return envelope.seq == 300

        async with Api(target(server)) as api:
            with trio.fail_after(10):
                assert await stream.follow_ws(api, 0, handle) == 300
        assert seen == list(range(seen[0], 301)) and seen[0] > 1
        assert "events after 0 are no longer retained" in capsys.readouterr().err


async def test_a_refused_websocket_falls_back_to_polling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "POLL_S", 0.01)
    async with serving(tmp_path, websocket={"max_clients": 1}) as server:
        for i in range(3):
            await server.bus.publish(Message(text=f"before {i}"))
        async with (
            Api(target(server)) as api,
            trio.open_nursery() as nursery,
        ):
            holder_in = trio.Event()

            async def hold_the_only_place() -> None:
                await stream.follow_ws(api, 0, lambda e: holder_in.set() is not None)

            nursery.start_soon(hold_the_only_place)
            with trio.fail_after(10):
                await holder_in.wait()
            seen: list[int] = []
            idles = 0

            async def on_idle() -> bool:
                nonlocal idles
                idles += 1
                if idles == 1:
                    await server.bus.publish(Message(text="while polling"))
                return False

            def handle(envelope: Envelope) -> bool:
                seen.append(envelope.seq)
                return b"while polling" in envelope.line

            with trio.fail_after(10):
                last = await stream.follow_ws(api, 1, handle, idle_s=0.02, on_idle=on_idle)
            nursery.cancel_scope.cancel()
        assert seen == [2, 3, 4] and last == 4 and idles >= 1
        assert "/ws/events refused (HTTP 503): polling /v1/events instead" in (
            capsys.readouterr().err
        )


async def test_an_instance_that_stays_gone_is_reported_unreachable(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    idle_calls = 0

    async def on_idle() -> bool:
        nonlocal idle_calls
        idle_calls += 1
        raise ClientError("not yet")  # an unreachable instance is "not yet", never the end

    gone = Target(f"http://127.0.0.1:{port}", None, None, (), None, None)
    async with Api(gone) as api:
        with pytest.raises(ClientError, match="is frameos running"):
            await stream.follow_ws(api, 0, lambda e: True, on_idle=on_idle)
    assert idle_calls > 3


def test_why_a_connection_was_lost_in_words() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    wrapped = HandshakeError()
    wrapped.__cause__ = refused
    assert stream._why(wrapped) == "connection refused"
    assert stream._why(OSError(113, "No route to host")) == "no route to host"
    assert stream._why(ConnectionClosed(None)) == "the websocket closed"  # type: ignore[arg-type]
    assert stream._why(HandshakeError()) == "HandshakeError"
