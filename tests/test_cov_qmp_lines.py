"""The QMP client on what a broken or strange QEMU may send (frameos/workers/qmp.py): blank
lines between messages, a command with arguments, a reply that is not JSON, a line past the
bound, and a socket path no socket can have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from frameos.workers import ChannelError, ChannelUnavailable
from frameos.workers import qmp as qmp_module
from frameos.workers.qmp import QmpConnection
from tests.test_qmp import GREETING, _lines, serve


async def test_blank_lines_are_skipped_and_arguments_are_sent(tmp_path: Path) -> None:
    path, seen = tmp_path / "vm.qmp", []

    async def script(stream: trio.SocketStream, seen: list[bytes]) -> None:
        await stream.send_all(b"\r\n" + GREETING)
        for _ in range(2):
            for message in await _lines(stream):
                seen.append(json.dumps(message).encode())
                await stream.send_all(b"\r\n\r\n" + b'{"return": {"ok": 1}}\r\n')

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, path, script, seen)
        conn = await QmpConnection.connect(path)
        assert await conn.execute("device_del", {"id": "nic0"}) == {"ok": 1}
        await conn.aclose()
    assert json.loads(seen[-1]) == {"execute": "device_del", "arguments": {"id": "nic0"}}


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"<html>oops</html>\r\n", "QMP sent something that is not JSON"),
        (b"x" * 200, "QMP sent a line longer than 64 bytes"),
        (b"[1, 2]\r\n", "QMP sent a non-object"),
    ],
)
async def test_a_reply_that_is_not_qmp_is_one_channel_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: bytes, says: str
) -> None:
    monkeypatch.setattr(qmp_module, "MAX_LINE", 64)
    path, seen = tmp_path / "vm.qmp", []

    async def script(stream: trio.SocketStream, seen: list[bytes]) -> None:
        await stream.send_all(reply)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, path, script, seen)
        with trio.fail_after(5), pytest.raises(ChannelError, match=says):
            await QmpConnection.connect(path)
        nursery.cancel_scope.cancel()


async def test_a_socket_path_too_long_is_an_error_not_an_absent_qemu(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 200)
    with pytest.raises(ChannelError, match="AF_UNIX path too long") as info:
        await QmpConnection.connect(path)
    assert not isinstance(info.value, ChannelUnavailable)  # waiting for QEMU would not help
