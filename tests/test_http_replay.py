"""The websocket seam with real sockets: replay of any length, then live, no gap, no duplicate;
concurrent replays; the client cap (issue 9)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import trio

from frameos.envelope import encode
from frameos.errors import EventLogError
from frameos.eventlog import EventLog, Page
from frameos.events import Message
from frameos.server import wsfast
from frameos.server.replay import PAGE
from tests.test_frontdoor import UPGRADE, close_code, one_error, talk, until_eof, upgraded
from tests.test_server import Server, serving


def write_log(tmp_path: Path, count: int) -> None:
    """A log of `count` events written directly (what a long-running frameos leaves)."""
    with (tmp_path / "events.jsonl").open("wb") as handle:
        for start in range(1, count + 1, 10_000):
            handle.write(
                b"".join(
                    encode(Message(text=f"old {seq}"), seq, 1_700_000_000.0 + seq).line
                    for seq in range(start, min(count, start + 9_999) + 1)
                )
            )


class FrameReader:
    """Server frames (unmasked) from a raw socket, read in small pieces when `slow`."""

    def __init__(self, stream: trio.SocketStream, rest: bytes, *, slow: bool = False) -> None:
        self.stream, self.buffer, self.pos = stream, bytearray(rest), 0
        self.slow, self.reads = slow, 0

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(4096 if self.slow else 1 << 20)
        assert chunk, "the server closed the stream"
        del self.buffer[: self.pos]
        self.pos = 0
        self.buffer += chunk
        self.reads += 1
        if self.slow and self.reads % 50 == 0:
            await trio.sleep(0.002)  # a reader slower than the replay can send

    def _next(self) -> tuple[int, bytes] | None:
        buffer, pos = self.buffer, self.pos
        if len(buffer) - pos < 2:
            return None
        opcode, size, at = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F, pos + 2
        if size == 126:
            if len(buffer) - pos < 4:
                return None
            size, at = struct.unpack_from("!H", buffer, pos + 2)[0], pos + 4
        elif size == 127:
            if len(buffer) - pos < 10:
                return None
            size, at = struct.unpack_from("!Q", buffer, pos + 2)[0], pos + 10
        if len(buffer) < at + size:
            return None
        self.pos = at + size
        return opcode, bytes(buffer[at : at + size])

    async def seqs(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            frame = self._next()
            if frame is None:
                await self._more()
            elif frame[0] == 0x1:
                out.append(json.loads(frame[1])["seq"])
        return out


async def open_stream(server: Server, query: str) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(
        f"GET /ws/events{query} HTTP/1.1\r\nhost: x\r\n".encode() + UPGRADE + b"\r\n"
    )
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 101 "), data
    return stream, data.partition(b"\r\n\r\n")[2]


async def publish_live(server: Server, count: int, started: trio.Event) -> None:
    await started.wait()
    for i in range(count):
        await server.bus.publish(Message(text=f"live {i}"))
        if i % 20 == 0:
            await trio.sleep(0.005)


async def test_a_100k_replay_to_a_slow_reader_then_live_has_no_gap(tmp_path: Path) -> None:
    old, live = 100_000, 300
    write_log(tmp_path, old)
    async with serving(tmp_path) as server:
        stream, rest = await open_stream(server, "?since=0")
        reader = FrameReader(stream, rest, slow=True)
        received: list[int] = []
        started = trio.Event()

        async def read_all() -> None:
            received.extend(await reader.seqs(1000))
            started.set()  # live events arrive while most of the replay is still to come
            received.extend(await reader.seqs(old + live - 1000))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                nursery.start_soon(publish_live, server, live, started)
        assert received == list(range(1, old + live + 1))
        assert server.hub.dropped_slow == 0
        await stream.aclose()


async def test_eight_concurrent_replays_each_get_everything(tmp_path: Path) -> None:
    old, live = 20_000, 200
    write_log(tmp_path, old)
    async with serving(tmp_path) as server:
        results: dict[int, list[int]] = {}
        started = trio.Event()
        started.set()  # live events while the replays run

        async def client(index: int) -> None:
            stream, rest = await open_stream(server, f"?since={index * 1000}")
            async with stream:
                reader = FrameReader(stream, rest, slow=index % 2 == 0)
                results[index] = await reader.seqs(old + live - index * 1000)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(8):
                    nursery.start_soon(client, index)
                nursery.start_soon(publish_live, server, live, started)
        assert sorted(results) == list(range(8))
        for index, seqs in results.items():
            assert seqs == list(range(index * 1000 + 1, old + live + 1)), index


async def test_client_cap_refuses_with_503_and_frees_on_close(tmp_path: Path) -> None:
    async with serving(tmp_path, websocket={"max_clients": 3}) as server:
        held = [await upgraded(server.port) for _ in range(3)]
        request = b"GET /ws/events HTTP/1.1\r\nhost: x\r\n" + UPGRADE + b"\r\n"
        error = one_error(await talk(server.port, request), 503)
        assert error["error"] == "too_many_clients"
        assert error["details"] == {"max_clients": 3}
        assert server.hub.rejected_full == 1
        stream, _ = held.pop()
        await stream.aclose()
        with trio.fail_after(5):
            while server.hub.active >= 3:
                await trio.sleep(0.01)
        again, _ = await upgraded(server.port)  # room again
        status = await talk(
            server.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        assert status.startswith(b"HTTP/1.1 200 ")
        for stream, _ in [*held, (again, b"")]:
            await stream.aclose()


@pytest.mark.parametrize("since", [10, 21])
async def test_a_replay_from_the_log_ahead_of_the_hub_sends_nothing_twice(
    tmp_path: Path, since: int
) -> None:
    """The bus writes a batch to the file before the hub's task takes it: a log page (or the
    cursor itself) can reach seqs the hub has not delivered yet. The client must get each of
    them once (issue 9, C1)."""
    async with serving(tmp_path, ring_size=2) as server:  # a tiny ring: the replay reads pages
        hub = server.hub
        for i in range(20):
            await server.bus.publish(Message(text=str(i)))
        with trio.fail_after(5):
            while hub.delivered_seq < 20:
                await trio.sleep(0.01)
        deliver, held = hub.deliver, []
        hub.deliver = held.append  # type: ignore[method-assign]  # the hub falls behind...
        for i in range(20, 22):
            await server.bus.publish(Message(text=str(i)))
        with trio.fail_after(5):
            while sum(len(batch) for batch in held) < 2:  # ...with 21 and 22 in the file
                await trio.sleep(0.01)
        assert server.bus.written_seq == 22 and hub.delivered_seq == 20
        stream, rest = await open_stream(server, f"?since={since}")
        async with stream:
            with trio.fail_after(5):
                while not hub.clients:  # replayed from the log, then joined
                    await trio.sleep(0.01)
            hub.deliver = deliver  # type: ignore[method-assign]  # the hub catches up
            for batch in held:
                deliver(batch)
            await server.bus.publish(Message(text="live"))
            with trio.fail_after(5):
                received = await FrameReader(stream, rest).seqs(23 - since)
        assert received == list(range(since + 1, 24))


def failing_reads(monkeypatch: pytest.MonkeyPatch, good: int) -> None:
    """The log's reads fail (EMFILE, EIO) after `good` of them."""
    real, calls = wsfast.read_page, [0]

    async def read_page(log: EventLog, after: int, limit: int = PAGE) -> Page:
        calls[0] += 1
        if calls[0] > good:
            raise EventLogError(f"event log {log.path}: cannot read (too many open files)")
        return await real(log, after, limit)

    monkeypatch.setattr(wsfast, "read_page", read_page)


async def test_an_unreadable_log_refuses_the_cursor_with_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_reads(monkeypatch, good=0)
    async with serving(tmp_path) as server:
        for i in range(3):
            await server.bus.publish(Message(text=str(i)))
        request = b"GET /ws/events?since=1 HTTP/1.1\r\nhost: x\r\n" + UPGRADE + b"\r\n"
        error = one_error(await talk(server.port, request), 503)
        assert error["error"] == "log_unavailable" and "too many open files" in error["message"]
        answer = await talk(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")  # still serving


async def test_an_unreadable_log_mid_replay_closes_that_client_with_1011(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_log(tmp_path, 3000)
    failing_reads(monkeypatch, good=1)  # the cursor's page, then the next read fails
    async with serving(tmp_path, ring_size=2) as server:
        stream, rest = await open_stream(server, "?since=0")
        async with stream:
            data = rest + await until_eof(stream)
        assert close_code(data) == 1011
        answer = await talk(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")  # still serving
