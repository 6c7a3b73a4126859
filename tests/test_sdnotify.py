"""The sd_notify client against real datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from frameos.sdnotify import NotifySocket, monotonic_usec, socket_target, watchdog_usec


def receive_all(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking receiver."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


@pytest.fixture
def path_receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[str, socket.socket]]:
    name = f"frameos-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        yield "@" + name, sock


async def test_lines_go_in_one_datagram_to_a_path_socket(
    path_receiver: tuple[str, socket.socket],
) -> None:
    address, receiver = path_receiver
    notify = NotifySocket(address)
    assert await notify.send("READY=1", "STATUS=3/3 VMs running · 2 watchers")
    assert await notify.send("WATCHDOG=1")
    notify.close()
    assert receive_all(receiver) == [
        "READY=1\nSTATUS=3/3 VMs running · 2 watchers".encode(),
        b"WATCHDOG=1",
    ]
    assert (notify.sent, notify.failed) == (2, 0)


async def test_abstract_address(abstract_receiver: tuple[str, socket.socket]) -> None:
    address, receiver = abstract_receiver
    notify = NotifySocket.from_env({"NOTIFY_SOCKET": address})
    assert notify.enabled
    assert await notify.send("STOPPING=1")
    notify.close()
    assert receive_all(receiver) == [b"STOPPING=1"]


async def test_nothing_is_sent_when_notify_socket_is_unset() -> None:
    errors: list[str] = []
    for env in ({}, {"NOTIFY_SOCKET": ""}):
        notify = NotifySocket.from_env(env, on_error=errors.append)
        assert not notify.enabled
        assert not await notify.send("READY=1")
        assert (notify.sent, notify.failed) == (0, 0)
    assert errors == []


async def test_a_missing_socket_is_reported_once_and_never_raises(tmp_path: Path) -> None:
    errors: list[str] = []
    notify = NotifySocket(str(tmp_path / "absent"), on_error=errors.append)
    assert not await notify.send("READY=1")
    assert not await notify.send("WATCHDOG=1")
    assert notify.failed == 2
    assert len(errors) == 1
    assert str(tmp_path / "absent") in errors[0]
    assert "No such file" in errors[0]


async def test_a_refusing_socket_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "dead"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # bound, then closed: the path stays, nobody listens
    errors: list[str] = []
    notify = NotifySocket(str(path), on_error=errors.append)
    assert not await notify.send("READY=1")
    assert len(errors) == 1
    assert "refused" in errors[0]


@pytest.mark.parametrize("address", ["vsock:2:1234", "relative/path", "@"])
async def test_unsupported_address_forms_are_reported(address: str) -> None:
    errors: list[str] = []
    notify = NotifySocket(address, on_error=errors.append)
    assert not await notify.send("READY=1")
    assert len(errors) == 1
    assert "unsupported address form" in errors[0]


def test_socket_targets() -> None:
    assert socket_target("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_target("@org/sd") == "\0org/sd"
    assert socket_target("@") is None
    assert socket_target("vsock:2:1") is None


async def test_reconnects_when_systemd_recreates_its_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    notify = NotifySocket(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as first:
        first.bind(path)
        assert await notify.send("STATUS=one")
    os.unlink(path)
    assert not await notify.send("STATUS=lost")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
        second.bind(path)
        second.setblocking(False)
        assert await notify.send("STATUS=two")
        notify.close()
        assert receive_all(second) == [b"STATUS=two"]


async def test_a_full_socket_gives_up_within_the_timeout(
    path_receiver: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    address, _ = path_receiver  # never read: its queue fills up
    errors: list[str] = []
    notify = NotifySocket(address, on_error=errors.append, timeout_s=1.0)
    start = trio.current_time()
    for _ in range(10_000):
        if not await notify.send("WATCHDOG=1"):
            break
    notify.close()
    assert notify.failed == 1
    assert notify.sent > 0
    assert trio.current_time() - start == pytest.approx(1.0)
    assert errors == [f"systemd notify socket {address}: the socket took nothing for 1 s"]


def test_watchdog_usec_is_honoured_only_for_this_process() -> None:
    assert watchdog_usec({}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "20000000"}) == 20_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "42"}, pid=42) == 20_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_usec({"WATCHDOG_USEC": "1", "WATCHDOG_PID": str(os.getpid())}) == 1
    assert watchdog_usec({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "soon"}) is None


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.monotonic_ns() // 1000
    value = monotonic_usec()
    assert before <= value <= time.monotonic_ns() // 1000
