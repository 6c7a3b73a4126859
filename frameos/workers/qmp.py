"""A minimal QMP client: the handshake and one command, over the VM's unix socket.

QEMU greets with `{"QMP": ...}`, wants `qmp_capabilities` before anything else, and may send
asynchronous events (`{"event": ..., "timestamp": ...}`) at any time, even between a command
and its reply: replies are the lines with `return` or `error`; everything else is skipped.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import trio

from frameos.workers import ChannelError, ChannelUnavailable

MAX_LINE = 256 * 1024
_UNAVAILABLE = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK, errno.EACCES, errno.ENOTDIR)


class QmpConnection:
    """One QMP session: `connect` (greeting + capabilities), then `execute`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, path: Path) -> QmpConnection:
        """Open the socket and negotiate; ChannelUnavailable when nobody listens there."""
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError as exc:
            if exc.errno in _UNAVAILABLE:
                raise ChannelUnavailable(f"QMP socket {path}: {exc.strerror or exc}") from None
            raise ChannelError(f"QMP socket {path}: {exc}") from None
        conn = cls(stream)
        try:
            greeting = await conn._read_message()
            if "QMP" not in greeting:
                raise ChannelError(f"QMP socket {path}: no greeting (got {_short(greeting)})")
            await conn.execute("qmp_capabilities")
        except BaseException:
            await conn.aclose()
            raise
        return conn

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send a command, return its `return` value; ChannelError on an `error` reply."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        await self._send(json.dumps(message).encode() + b"\r\n")
        while True:
            reply = await self._read_message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                error = reply["error"]
                raise ChannelError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
            # an asynchronous event (POWERDOWN, SHUTDOWN, ...): not our reply

    async def aclose(self) -> None:
        with trio.move_on_after(1, shield=True):
            await self.stream.aclose()

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            raise ChannelError(f"QMP connection lost while sending: {exc}") from None

    async def _read_message(self) -> dict[str, Any]:
        line = await self._read_line()
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            raise ChannelError(f"QMP sent something that is not JSON: {_short(line)}") from None
        if not isinstance(message, dict):
            raise ChannelError(f"QMP sent a non-object: {_short(message)}")
        return message

    async def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).strip()
                del self._buffer[: end + 1]
                if line:
                    return line
                continue
            if len(self._buffer) > MAX_LINE:
                raise ChannelError(f"QMP sent a line longer than {MAX_LINE} bytes")
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, OSError) as exc:
                raise ChannelError(f"QMP connection lost: {exc}") from None
            if not chunk:
                raise ChannelError("QMP closed the connection before replying")
            self._buffer += chunk


async def system_powerdown(path: Path) -> None:
    """Ask the guest to power down (ACPI) through QMP; returns once QEMU accepted the command.

    Raises ChannelUnavailable (no socket, refused) or ChannelError (protocol). Cancellation
    closes the connection.
    """
    conn = await QmpConnection.connect(path)
    try:
        await conn.execute("system_powerdown")
    finally:
        await conn.aclose()


def _short(value: object) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
