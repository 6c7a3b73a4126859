"""The QMP client against a scripted server on a real unix socket, and the cooperative requests
(qmp, signal, command, none)."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from frameos.workers import ChannelError, ChannelUnavailable
from frameos.workers.cooperative import request_for, run_command
from frameos.workers.qmp import QmpConnection, system_powerdown
from frameos.workers.testing import FakeChild

GREETING = b'{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}}\r\n'
EVENT = b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}\r\n'
Script = Callable[[trio.SocketStream, list[bytes]], Awaitable[None]]


async def _lines(stream: trio.SocketStream) -> list[dict[str, object]]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


async def qemu_like(stream: trio.SocketStream, seen: list[bytes]) -> None:
    """Greets, acks capabilities, then sends an event *before* the powerdown reply."""
    await stream.send_all(GREETING)
    for _ in range(2):
        for message in await _lines(stream):
            seen.append(str(message["execute"]).encode())
            if message["execute"] == "system_powerdown":
                await stream.send_all(EVENT)
            await stream.send_all(b'{"return": {}}\r\n')


async def serve(
    path: Path,
    script: Script,
    seen: list[bytes],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)
    listener = trio.SocketListener(sock)
    task_status.started()
    async with listener:
        stream = await listener.accept()
        async with stream:
            await script(stream, seen)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "vm.qmp"


async def test_handshake_and_powerdown_skip_events(sock_path: Path) -> None:
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, sock_path, qemu_like, seen)
        await system_powerdown(sock_path)
    assert seen == [b"qmp_capabilities", b"system_powerdown"]


async def test_missing_socket_is_unavailable(sock_path: Path) -> None:
    with pytest.raises(ChannelUnavailable, match="No such file"):
        await system_powerdown(sock_path)


async def test_refused_socket_is_unavailable(sock_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))  # bound, never listening: connections are refused
    try:
        with pytest.raises(ChannelUnavailable, match="refused"):
            await system_powerdown(sock_path)
    finally:
        sock.close()


async def test_regular_file_is_unavailable(sock_path: Path) -> None:
    sock_path.write_text("not a socket")
    with pytest.raises(ChannelUnavailable):
        await system_powerdown(sock_path)


async def _error_reply(stream: trio.SocketStream, seen: list[bytes]) -> None:
    await stream.send_all(GREETING)
    await _lines(stream)
    await stream.send_all(EVENT + b'{"error": {"class": "CommandNotFound", "desc": "nope"}}\n')


async def _garbage(stream: trio.SocketStream, seen: list[bytes]) -> None:
    await stream.send_all(b"this is not json\n")


async def _hangs_up(stream: trio.SocketStream, seen: list[bytes]) -> None:
    await stream.send_all(GREETING)
    await _lines(stream)  # reads qmp_capabilities, closes without a reply


async def _no_greeting(stream: trio.SocketStream, seen: list[bytes]) -> None:
    await stream.send_all(b'{"return": {}}\n')


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (_error_reply, "CommandNotFound: nope"),
        (_garbage, "not JSON"),
        (_hangs_up, "closed the connection"),
        (_no_greeting, "no greeting"),
    ],
)
async def test_protocol_errors(sock_path: Path, script: Script, match: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, sock_path, script, [])
        with pytest.raises(ChannelError, match=match):
            await QmpConnection.connect(sock_path)


# --- the cooperative requests -----------------------------------------------------------------


async def test_signal_request_signals_the_group() -> None:
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)
        await request_for("signal", child, sig="SIGUSR1")()
        assert child.signals == [10]


async def test_none_and_qmp_without_socket_are_unavailable() -> None:
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)
        with pytest.raises(ChannelUnavailable, match="none"):
            await request_for("none", child)()
        with pytest.raises(ChannelUnavailable, match="QMP socket"):
            await request_for("qmp", child)()


async def test_command_request(tmp_path: Path) -> None:
    marker = tmp_path / "asked"
    env = dict(os.environ)
    await run_command([sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"], env, None)
    assert marker.read_text() == "x"
    with pytest.raises(ChannelError, match=r"exited with 3: boom"):
        await run_command(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], env, None
        )
    with pytest.raises(ChannelUnavailable, match="cannot start"):
        await run_command([str(tmp_path / "missing")], env, None)
