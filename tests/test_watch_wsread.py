"""The view's read-only websocket client (frameos/watch/wsread.py): against the real /ws/events
(a replay and live events handed on in order, several to a read; a refused handshake's status
and body; the server's pings answered, so an idle view is not dropped) and against a scripted
server for what the real one never sends (a message in fragments split across reads, a close
frame, EOF)."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Pong, Request, TextMessage

from frameos.events import Message as MessageEvent
from frameos.watch import wsread
from tests.api_helpers import ADMIN, bearer, serving_api
from tests.conftest import require_tools, until
from tests.test_server import serving

AUTH = [(k.encode(), v.encode()) for k, v in bearer(ADMIN).items()]


def seqs(batches: list[list[bytes]]) -> list[int]:
    return [json.loads(m)["seq"] for batch in batches for m in batch]


async def test_a_replay_and_live_events_in_order_several_to_a_read(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as served:
        for index in range(300):
            served.bus.publish_nowait(MessageEvent(text=f"before {index}"), "info")
        await until(lambda: served.bus.last_seq >= 300)
        head = served.bus.last_seq
        url = f"ws{served.url.removeprefix('http')}/ws/events?since=0"
        batches: list[list[bytes]] = []
        async with wsread.connect(url, AUTH, connect_timeout=5, close_timeout=1) as ws:
            with trio.fail_after(10):
                async for batch in ws:
                    batches.append(batch)
                    if seqs(batches)[-1] == head:
                        break
                for index in range(200):
                    served.bus.publish_nowait(MessageEvent(text=f"live {index}"), "info")
                async for batch in ws:
                    batches.append(batch)
                    if seqs(batches)[-1] == head + 200:
                        break
        assert seqs(batches) == list(range(1, head + 201))  # nothing missed, nothing twice
        assert len(batches) < head + 200  # several messages came in one read


async def test_a_refused_handshake_gives_its_status_and_body(tmp_path: Path) -> None:
    async with serving_api(tmp_path, loopback=False) as served:
        url = f"ws{served.url.removeprefix('http')}/ws/events"
        with pytest.raises(wsread.Rejected) as info:
            async with wsread.connect(url, [], connect_timeout=5, close_timeout=1):
                pass  # pragma: no cover
        assert info.value.status_code == 401
        assert json.loads(info.value.body)["error"] == "missing_authorization"


async def test_nothing_listening_is_a_one_line_reason() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(wsread.WsError, match=r"^connection refused$"):
            async with wsread.connect(
                f"ws://127.0.0.1:{port}/ws/events", [], connect_timeout=5, close_timeout=1
            ):
                pass  # pragma: no cover


async def test_pings_are_answered_so_an_idle_view_stays(tmp_path: Path) -> None:
    limits = {"ping_interval_s": 0.05, "idle_timeout_s": 0.2}
    async with (
        serving(tmp_path, websocket=limits) as server,
        wsread.connect(server.ws, [], connect_timeout=5, close_timeout=1) as ws,
    ):
        with trio.move_on_after(1.0):  # 5 idle timeouts with nothing to read but pings
            async for _ in ws:  # pragma: no cover  (no event is published)
                pass
        assert len(server.hub.clients) == 1  # still there
        await server.bus.publish(MessageEvent(text="still here"))
        with trio.fail_after(5):
            batch = await anext(ws)
        assert json.loads(batch[0])["fields"]["text"] == "still here"


Script = Callable[[trio.SocketStream, WSConnection], Awaitable[None]]


Raw = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def handshake_bytes(stream: trio.SocketStream) -> bytes:
    """The client's whole upgrade request."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    return data


async def against(raw: Raw, *, scheme: str = "ws") -> tuple[list[bytes], BaseException]:
    """A one-connection server that reads the upgrade request and runs `raw` on it; what the
    reader handed on, and the WsError that ended it."""
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def handler(stream: trio.SocketStream) -> None:
            await raw(stream, await handshake_bytes(stream))

        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"{scheme}://127.0.0.1:{port}/ws/events?since=3"
        with pytest.raises(wsread.WsError) as info:  # noqa: PT012
            async with wsread.connect(url, [], connect_timeout=5, close_timeout=1) as ws:
                with trio.fail_after(10):
                    async for batch in ws:
                        got.extend(batch)
        nursery.cancel_scope.cancel()
    return got, info.value


async def scripted(script: Script) -> tuple[list[bytes], str]:
    """A one-connection websocket server running `script` after the handshake; the messages
    the reader handed on, and the WsError that ended it."""

    async def raw(stream: trio.SocketStream, request: bytes) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        conn.receive_data(request)
        assert any(isinstance(e, Request) for e in conn.events())
        await stream.send_all(conn.send(AcceptConnection()))
        await script(stream, conn)

    got, why = await against(raw)
    return got, str(why)


async def test_fragments_across_reads_are_one_message_and_a_close_ends_it() -> None:
    async def script(stream: trio.SocketStream, conn: WSConnection) -> None:
        data = conn.send(TextMessage("héllo", message_finished=False))
        data += conn.send(Message("wörld", message_finished=True))  # a continuation frame
        data += conn.send(TextMessage("second"))
        for index in range(len(data)):  # one byte at a time
            await stream.send_all(data[index : index + 1])
            await trio.lowlevel.checkpoint()
        await stream.send_all(conn.send(CloseConnection(code=1001, reason="going away")))
        conn.receive_data(await stream.receive_some(65536))
        assert any(isinstance(e, CloseConnection) for e in conn.events())  # answered

    got, why = await scripted(script)
    assert got == ["héllowörld".encode(), b"second"]
    assert why == "the server closed the connection (1001: going away)"


async def test_a_ping_is_answered_and_eof_ends_it() -> None:
    pongs: list[bytes] = []

    async def script(stream: trio.SocketStream, conn: WSConnection) -> None:
        from wsproto.events import Ping

        await stream.send_all(conn.send(Ping(b"are you there")) + conn.send(TextMessage("x")))
        with trio.fail_after(5):
            while not pongs:
                conn.receive_data(await stream.receive_some(65536))
                pongs.extend(bytes(e.payload) for e in conn.events() if isinstance(e, Pong))
        await stream.aclose()

    got, why = await scripted(script)
    assert pongs == [b"are you there"]
    assert got == [b"x"]
    assert why == "the connection closed"


async def test_the_messages_in_the_read_that_ends_it_are_handed_on_first() -> None:
    async def script(stream: trio.SocketStream, conn: WSConnection) -> None:
        last = conn.send(TextMessage("one")) + conn.send(TextMessage("two"))
        await stream.send_all(last + conn.send(CloseConnection(code=1001)))  # one write
        conn.receive_data(await stream.receive_some(65536))

    got, why = await scripted(script)
    assert got == [b"one", b"two"]  # then the view says it is disconnected, showing them
    assert why == "the server closed the connection (1001)"


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA (ca.pem) and a certificate it signed for 127.0.0.1 (srv.pem, srv.key), by openssl."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, key, csr, cert = (directory / n for n in ("ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        ["req", "-x509", *ec, "-keyout", str(directory / "ca.key"), "-out", str(ca), "-days",
         "1", "-subj", "/CN=frameos test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign"],
        ["req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(directory / "ca.key"),
         "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext)],
    ):  # fmt: skip
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    return ca, cert, key


async def test_wss_verifies_the_server_and_reads_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tools("openssl")
    ca, cert, key = certificates(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        with contextlib.suppress(trio.BrokenResourceError):
            while not any(isinstance(e, Request) for e in conn.events()):
                conn.receive_data(await stream.receive_some(65536))
            await stream.send_all(conn.send(AcceptConnection()) + conn.send(TextMessage("tls")))
            await stream.send_all(conn.send(CloseConnection(code=1000)))
            await stream.receive_some(65536)

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_ssl_over_tcp, handler, 0, server_tls, host="127.0.0.1")
        listeners = await nursery.start(serve)
        url = f"wss://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}/ws"
        with pytest.raises(wsread.WsError) as unknown:  # the system's CAs do not know it
            async with wsread.connect(url, [], connect_timeout=5, close_timeout=1):
                pass  # pragma: no cover
        assert str(unknown.value).startswith("certificate verify failed: ")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # now they do
        got: list[bytes] = []
        with pytest.raises(wsread.WsError, match=r"closed the connection \(1000\)"):  # noqa: PT012
            async with wsread.connect(url, [], connect_timeout=5, close_timeout=1) as ws:
                async for batch in ws:
                    got.extend(batch)
        assert got == [b"tls"]
        nursery.cancel_scope.cancel()
