"""The view's websocket client (frameos/watch/wsread.py) against servers that answer the
handshake oddly or not at all, on real sockets: raw HTTP bytes written by a scripted server
(an answer split across reads, a refusal whose body is cut, a close before any answer, an
answer that is not HTTP, TLS asked of a plain port), a message over the size bound, a pong
nobody asked for, and a connect that times out or is cancelled."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Pong, Request, TextMessage

from frameos.watch import wsread
from tests.test_watch_wsread import against


def accept(request: bytes) -> tuple[WSConnection, bytes]:
    """The server's side of a real handshake: its connection, and the 101 answer's bytes."""
    conn = WSConnection(ConnectionType.SERVER)
    conn.receive_data(request)
    assert any(isinstance(e, Request) and e.target == "/ws/events?since=3" for e in conn.events())
    return conn, conn.send(AcceptConnection())


async def test_a_101_split_across_reads_is_one_handshake() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        conn, answer = accept(request)
        for piece in (answer[:10], answer[10:30], answer[30:]):
            await stream.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()  # the client has read this piece
        await stream.send_all(conn.send(TextMessage("after the handshake")))
        await stream.aclose()

    got, why = await against(raw)
    assert got == [b"after the handshake"]
    assert str(why) == "the connection closed"


async def test_a_refusal_whose_body_is_cut_keeps_what_came() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 500\r\n\r\n" + b'{"error": "bad_to'
        )
        await stream.aclose()

    _, why = await against(raw)
    assert isinstance(why, wsread.Rejected)
    assert (why.status_code, why.body) == (401, b'{"error": "bad_to')


async def test_a_close_before_any_answer_is_said_as_such() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        await stream.aclose()

    _, why = await against(raw)
    assert type(why) is wsread.WsError
    assert str(why) == "the connection closed during the handshake"


async def test_an_informational_answer_other_than_101_is_a_refusal_without_a_body() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await trio.sleep_forever()

    _, why = await against(raw)
    assert isinstance(why, wsread.Rejected)
    assert (why.status_code, why.body) == (100, b"")
    assert str(why) == "the handshake was refused with HTTP 100"


async def test_an_answer_that_is_not_http_is_a_protocol_error_in_its_words() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await trio.sleep_forever()

    _, why = await against(raw)
    assert type(why) is wsread.WsError
    assert isinstance(why.__cause__, wsread.RemoteProtocolError)
    assert str(why) == "Bad HTTP message"  # wsproto's words, one line


async def test_tls_asked_of_a_plain_port_is_a_tls_error() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async def plain_http(stream: trio.SocketStream) -> None:  # a ClientHello is no request
        await stream.receive_some(65536)
        await raw(stream, b"")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, plain_http, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(wsread.WsError, match=r"^TLS: WRONG_VERSION_NUMBER$"):
            async with wsread.connect(
                f"wss://127.0.0.1:{port}/ws/events", [], connect_timeout=5, close_timeout=1
            ):
                pass  # pragma: no cover
        nursery.cancel_scope.cancel()


async def test_a_message_over_the_bound_ends_the_connection_after_the_ones_before() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        conn, answer = accept(request)
        await stream.send_all(answer + conn.send(TextMessage("small")))
        piece = "x" * 65_536
        for _ in range(wsread.MAX_MESSAGE // len(piece) + 1):  # never finished
            await stream.send_all(conn.send(TextMessage(piece, message_finished=False)))
        await trio.sleep_forever()

    got, why = await against(raw)
    assert got == [b"small"]
    assert str(why) == f"a message over {wsread.MAX_MESSAGE} bytes"


async def test_a_pong_nobody_asked_for_is_ignored() -> None:
    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        conn, answer = accept(request)
        await stream.send_all(answer + conn.send(Pong(b"unasked")) + conn.send(TextMessage("m")))
        await stream.aclose()

    got, why = await against(raw)
    assert got == [b"m"]
    assert str(why) == "the connection closed"


async def test_an_instance_that_takes_the_connection_and_never_answers_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # the kernel takes the connection; nobody answers the request
        port = sock.getsockname()[1]
        with pytest.raises(wsread.WsError, match=r"^no answer within 5s$"):
            async with wsread.connect(
                f"ws://127.0.0.1:{port}/ws/events", [], connect_timeout=5, close_timeout=1
            ):
                pass  # pragma: no cover
        with pytest.raises(wsread.WsError, match=r"^no answer within 0s$"):  # before any socket
            async with wsread.connect(
                f"ws://127.0.0.1:{port}/ws/events", [], connect_timeout=0, close_timeout=1
            ):
                pass  # pragma: no cover


async def test_a_connect_cancelled_before_it_connects_is_a_cancellation_not_an_error() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        async with wsread.connect(
            "ws://127.0.0.1:9/ws/events", [], connect_timeout=5, close_timeout=1
        ):
            pass  # pragma: no cover
    assert scope.cancelled_caught  # the caller's cancellation, not "disconnected (…)"


def test_a_chain_of_causes_that_loops_is_not_walked_for_ever() -> None:
    first, second = RuntimeError("first"), RuntimeError("second")
    first.__cause__, second.__context__ = second, first  # each the other's cause
    assert wsread._reason(first) == "first"  # no OSError within reach: its own words
