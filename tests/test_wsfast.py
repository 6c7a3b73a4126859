"""WsClient's backlog: bounded in deliveries and bytes, robust when a client is dropped."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing
import wsproto.events
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState

from frameos.config import validate_config
from frameos.envelope import encode
from frameos.events import Message
from frameos.server import wsfast
from frameos.server.wsfast import WsClient, WsHub, frame_text


def client_pair(**limits: Any) -> tuple[WsHub, WsClient, socket.socket]:
    hub = WsHub(None, validate_config({"websocket": limits}, "x").websocket)  # type: ignore[arg-type]
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    client = WsClient(hub, stream, WSConnection(ConnectionType.SERVER), "test")
    return hub, client, peer


def drain(peer: socket.socket) -> int:
    peer.setblocking(False)
    total = 0
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return total
        if not chunk:
            return total
        total += len(chunk)


async def test_a_client_dropped_while_its_sender_waits_does_not_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wsfast, "STALL_S", 0.01)
    hub, client, peer = client_pair()
    frame = frame_text(b"x" * 150)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_sender)
        while not client.backlog:  # fill the socket until a backlog forms
            client.send(frame * 10)
        await trio.sleep(0.05)  # the sender now waits for writability; no progress since
        for _ in range(100):  # more deliveries than queue_depth, and stalled: dropped
            client.send(frame)
        assert client.closed and hub.dropped_slow == 1
        drain(peer)  # the socket turns writable while the sender is parked
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    client.stream.socket.close()
    peer.close()


async def test_a_stuck_client_over_queue_depth_goes_when_its_stall_ends_with_no_more_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # R3: the stuck reader is dropped STALL_S after its socket last took bytes, not at some
    # later event (after a burst that can be the next ping, 20 s on, its backlog held meanwhile)
    hub, client, peer = client_pair(queue_depth=2)
    frame = frame_text(b"s" * 150)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_sender)
        while not client.backlog:  # the kernel's buffer is full
            client.send(frame * 10)
        stuck_at = trio.current_time()
        for _ in range(3):  # over queue_depth, but not stalled yet: kept
            client.send(frame)
        assert not client.closed
        with trio.fail_after(wsfast.STALL_S * 5):
            await client.gone.wait()
        assert hub.dropped_slow == 1 and "behind" in client.close_reason
        assert trio.current_time() - stuck_at == pytest.approx(wsfast.STALL_S, abs=0.01)
        assert not client.backlog  # nothing held for a client that is gone
        nursery.cancel_scope.cancel()
    client.stream.socket.close()
    peer.close()


async def test_a_client_under_queue_depth_is_kept_however_long_it_stalls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub, client, peer = client_pair(queue_depth=64)
    frame = frame_text(b"k" * 150)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_sender)
        while not client.backlog:
            client.send(frame * 10)
        await trio.sleep(wsfast.STALL_S * 30)  # stalled, but only one delivery queued
        assert not client.closed and hub.dropped_slow == 0
        received = drain(peer)  # it reads again: the sender writes the rest
        with trio.fail_after(1):
            while client.backlog:
                await trio.sleep(0.01)
                received += drain(peer)
        assert not client.closed and received > 0
        nursery.cancel_scope.cancel()
    client.stream.socket.close()
    peer.close()


async def test_one_burst_larger_than_the_socket_buffer_keeps_a_healthy_client() -> None:
    hub, client, peer = client_pair()
    hub.clients.add(client)
    batch = [encode(Message(text=f"{i:05d} " + "y" * 140), i, 1.0) for i in range(1, 5001)]
    expected = sum(len(frame_text(e.json)) for e in batch)
    received = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_sender)
        hub.deliver(batch)  # one delivery of ~800 KB: more than the kernel takes at once
        assert not client.closed
        with trio.fail_after(5):
            while received < expected:
                await trio.sleep(0.001)
                received += drain(peer)
        nursery.cancel_scope.cancel()
    assert received == expected and hub.dropped_slow == 0
    client.stream.socket.close()
    peer.close()


async def test_bytes_bound_drops_a_stuck_client() -> None:
    hub, client, peer = client_pair(queue_bytes=65536, queue_depth=100000)
    frame = frame_text(b"z" * 1000)
    while not client.closed:
        client.send(frame)
    assert hub.dropped_slow == 1 and "bytes behind" in client.close_reason
    client.stream.socket.close()
    peer.close()


async def test_a_client_over_queue_depth_that_keeps_draining_is_kept() -> None:
    hub, client, peer = client_pair(queue_depth=2)
    frame = frame_text(b"d" * 150)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_sender)
        while not client.backlog:
            client.send(frame * 50)
        for _ in range(10):
            for _ in range(6):  # ~460 KB in 6 deliveries: more than the socket takes...
                client.send(frame * 500)
            assert len(client.backlog) > 2 or client.closed
            drain(peer)  # ...but the reader keeps taking bytes
            await trio.sleep(0.005)
        assert not client.closed and hub.dropped_slow == 0
        nursery.cancel_scope.cancel()
    client.stream.socket.close()
    peer.close()


class _OverflowingBus:
    """A bus whose subscription reports a drop (the hub's own queue overflowed)."""

    written_seq = 0

    def __init__(self, hub_stopping: trio.Event) -> None:
        self.hub_stopping = hub_stopping

    def subscribe(self, name: str, depth: int) -> Any:
        bus = self

        class Sub:
            dropped = 0

            async def __aiter__(self) -> Any:
                await bus.hub_stopping.wait()
                self.dropped = 5
                yield [encode(Message(text="after the gap"), 9, 1.0)]

        return Sub()

    def unsubscribe(self, sub: object) -> None:
        pass


async def test_a_hub_overflow_during_the_stop_does_not_admit_clients_again() -> None:
    stopping = trio.Event()
    hub = WsHub(_OverflowingBus(stopping), validate_config({}, "x").websocket)  # type: ignore[arg-type]
    hub_ran = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            await hub.run()
            hub_ran.set()

        nursery.start_soon(run)
        hub.close_all()  # the stop
        stopping.set()  # ...and the hub's queue overflows meanwhile
        with trio.fail_after(5):
            await hub_ran.wait()
    assert hub.hub_dropped == 5 and hub.delivered_seq == 9
    assert hub.closing  # new clients still get 503 shutting_down


# --- error paths of one client's socket and protocol -----------------------------------------


def masked(opcode: int, payload: bytes) -> bytes:
    """One final client frame (clients must mask; the zero key leaves the payload as is)."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def open_client(**limits: Any) -> tuple[WsHub, WsClient, socket.socket]:
    """A client past its handshake (wsproto OPEN), as `WsHub.serve` makes it."""
    hub, client, peer = client_pair(**limits)
    client.conn.receive_data(
        b"GET /ws/events HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    list(client.conn.events())
    client.conn.send(wsproto.events.AcceptConnection())
    return hub, client, peer


async def test_a_write_to_a_peer_that_is_gone_drops_the_client() -> None:
    _hub, client, peer = client_pair()
    peer.close()
    client.send(frame_text(b"to nobody"))
    assert client.closed and client.close_reason.startswith("write failed")
    client.send(frame_text(b"after"))  # a closed client takes nothing, and raises nothing
    assert not client.backlog
    client.stream.socket.close()


async def test_a_backlog_whose_peer_goes_away_is_dropped_by_the_sender() -> None:
    hub, client, peer = client_pair()
    frame = frame_text(b"g" * 150)
    while not client.backlog:
        client.send(frame * 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_sender)
        peer.close()  # unread bytes: the kernel resets; the socket turns writable with an error
        with trio.fail_after(5):
            await client.gone.wait()
        nursery.cancel_scope.cancel()
    assert client.close_reason.startswith("write failed") and not client.backlog
    assert hub.dropped_slow == 0  # gone, not slow
    client.stream.socket.close()


async def test_a_flush_into_a_full_socket_keeps_the_backlog_whole() -> None:
    _hub, client, peer = client_pair()
    frame = frame_text(b"f" * 150)
    while not client.backlog:
        client.send(frame * 10)
    client.send(frame)
    queued = (len(client.backlog), client.backlog_bytes)
    client._flush()  # the kernel takes nothing: nothing is lost or reordered
    assert (len(client.backlog), client.backlog_bytes) == queued and not client.closed
    client.stream.socket.close()
    peer.close()


async def test_a_batch_the_hub_already_delivered_is_not_sent_again() -> None:
    hub, client, peer = client_pair()
    hub.clients.add(client)
    batch = [encode(Message(text=f"once {i}"), i, 1.0) for i in (1, 2)]
    hub.deliver(batch)
    hub.deliver(batch)  # the same batch again (a second wiring of the hub)
    hub.deliver(batch[1:])
    peer.setblocking(False)
    assert peer.recv(65536) == b"".join(frame_text(e.json) for e in batch)
    assert hub.frames_sent == 2 and hub.delivered_seq == 2
    client.stream.socket.close()
    peer.close()


async def test_the_reader_ends_the_client_when_its_stream_is_closed_under_it() -> None:
    _hub, client, peer = open_client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run_reader)
        await trio.testing.wait_all_tasks_blocked()
        await client.stream.aclose()  # the connection task closed it: the read fails
        with trio.fail_after(5):
            await client.gone.wait()
    assert client.close_reason == "connection lost"
    peer.close()


async def test_pongs_and_client_messages_are_accepted_and_ignored() -> None:
    hub, client, peer = open_client()
    peer.sendall(masked(0xA, b"unsolicited") + masked(0x1, b"hello") + masked(0x2, b"\x00"))
    peer.shutdown(socket.SHUT_WR)
    with trio.fail_after(5):
        await client.run_reader()
    assert hub.client_messages == 2 and hub.protocol_errors == 0
    assert client.close_reason == "peer closed the connection"
    client.stream.socket.close()
    peer.close()


async def test_a_frame_after_the_close_handshake_is_a_protocol_error() -> None:
    hub, client, peer = open_client()
    client.close(1001, "going")
    client._process(masked(0x8, b"\x03\xe9"))  # the client's answer: the handshake is done
    assert client.conn.state is ConnectionState.CLOSED
    client.close(1000, "twice")  # closing a closed client changes nothing
    client._process(masked(0x1, b"late"))  # wsproto refuses data on a closed connection
    assert hub.protocol_errors == 1 and client.close_reason.startswith("protocol error")
    client.stream.socket.close()
    peer.close()


async def test_a_partial_upgrade_head_is_refused_with_400() -> None:
    hub = WsHub(None, validate_config({}, "x").websocket)  # type: ignore[arg-type]
    ours, peer = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    await hub.serve(stream, b"GET /ws/events HTTP/1.1\r\nhost: x\r\n")
    answer = peer.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"incomplete" in answer and hub.active == 0 and not hub.clients
    peer.close()


async def test_the_keepalive_skips_a_client_that_is_closing_or_closed(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A client closed by either side stays in `hub.clients` until its connection task ends;
    the keepalive's ping must not reach wsproto then (it raised LocalProtocolError, which took
    the whole front door down)."""
    hub, client, peer = open_client()
    hub.clients.add(client)
    client.close(1001, "going")  # our close frame is out: LOCAL_CLOSING
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run_keepalive)
        await trio.sleep(hub.limits.ping_interval_s * 1.5)
        client._process(masked(0x8, b"\x03\xe9"))  # the client's answer: CLOSED
        assert client.conn.state is ConnectionState.CLOSED
        await trio.sleep(hub.limits.ping_interval_s)
        nursery.cancel_scope.cancel()
    assert client.close_reason == "going"
    client.stream.socket.close()
    peer.close()
