"""Notify channels (frameos/workers/notify.py) at their bounds, on real sockets with this test's
own process group standing in for the VM's: a serial line over the size bound dropped to its
end (the next line still read), connections past MAX_CONNECTIONS closed at once, a datagram
without its sender's credentials dropped with a warning that says so."""

from __future__ import annotations

import array
import os
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.workers.notify import MAX_CONNECTIONS, MAX_MESSAGE, NotifyChannels, _Reader
from frameos.workers.paths import VmPaths
from frameos.workers.testing import RecordingPublisher
from tests.conftest import until
from tests.test_notify import Said, vm


def channels_in(tmp_path: Path, *, serial: bool) -> tuple[NotifyChannels, VmPaths]:
    paths = VmPaths.of(vm(["x"]), tmp_path)
    paths.notify_socket.parent.mkdir(exist_ok=True)
    return NotifyChannels.open(paths, serial=serial), paths


def warnings(pub: RecordingPublisher) -> list[str]:
    return [e.text for e in pub.of("message") if isinstance(e, ev.Message)]


async def test_a_serial_line_over_the_bound_is_dropped_to_its_end_and_the_next_read(
    tmp_path: Path,
) -> None:
    channels, paths = channels_in(tmp_path, serial=True)
    said, pub = Said(), RecordingPublisher()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channels.serve, os.getpgid(0), said, pub)
            await trio.testing.wait_all_tasks_blocked()
            guest.connect(str(paths.serial_socket))
            guest.sendall(b"STATUS=" + b"x" * (3 * MAX_MESSAGE) + b"\nREADY=1\nSTATUS=up\n")
            await until(lambda: said.lines == ["READY=1", "STATUS=up"])
            nursery.cancel_scope.cancel()
    channels.close()
    assert channels.dropped == 1
    (warning,) = warnings(pub)
    assert warning == (
        f"n: dropped a notify line over {MAX_MESSAGE} bytes (only the VM's own process group "
        "is believed; later drops are counted in its snapshot)"
    )


async def test_serial_connections_past_the_bound_are_closed_at_once(tmp_path: Path) -> None:
    channels, paths = channels_in(tmp_path, serial=True)
    said, pub = Said(), RecordingPublisher()
    guests = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CONNECTIONS)]
    extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channels.serve, os.getpgid(0), said, pub)
            for index, guest in enumerate(guests):
                guest.connect(str(paths.serial_socket))
                guest.sendall(f"STATUS=guest {index}\n".encode())
                await until(lambda i=index: f"STATUS=guest {i}" in said.lines)
            extra.connect(str(paths.serial_socket))
            extra.setblocking(False)
            with trio.fail_after(10):
                await trio.lowlevel.wait_readable(extra)
            assert extra.recv(16) == b""  # closed by frameos: one more than QEMU ever makes
            guests[0].sendall(b"READY=1\n")  # the first ones are still read
            await until(lambda: "READY=1" in said.lines)
            nursery.cancel_scope.cancel()
    finally:
        for sock in (*guests, extra):
            sock.close()
        channels.close()
    assert channels.dropped == 0  # from the VM's group: closed, not counted as a stranger


async def test_a_datagram_without_its_senders_credentials_is_dropped(tmp_path: Path) -> None:
    channels, _ = channels_in(tmp_path, serial=False)
    said, pub = Said(), RecordingPublisher()
    reader = _Reader(channels, os.getpgid(0), said, pub)  # type: ignore[arg-type]
    read_end, write_end = os.pipe()
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]).tobytes())]
    reader._datagram(b"READY=1", rights, 0, None)
    channels.close()
    assert said.lines == [] and channels.dropped == 1
    (warning,) = warnings(pub)
    assert warning.startswith("n: dropped a notify datagram without its sender's credentials")
    # the fd it carried was closed, as every received fd is
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(write_end)
    os.close(read_end)
