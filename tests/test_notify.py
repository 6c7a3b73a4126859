"""Notify sockets (SPEC §5.2) with real children: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 from
the VM's own process group; what another process sends is dropped; a guest's serial port
(`{notify_chardev}`) read through SO_PEERCRED; bounds on paths and datagrams."""

from __future__ import annotations

import array
import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import VmConfig
from frameos.workers import LaunchError
from frameos.workers.notify import MAX_FDS, MAX_MESSAGE, NotifyChannels
from frameos.workers.paths import VmPaths
from frameos.workers.testing import RecordingPublisher
from frameos.workers.vm import VmState, VmWorker
from tests.conftest import require_tools, until

# A VM that says what systemd's sd_notify says: a status, READY=1 after a moment, watchdog
# pings, and STOPPING=1 when asked to stop (SIGINT).
CHILD = r"""
import os, signal, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = os.environ["NOTIFY_SOCKET"]
s.sendto(b"WATCHDOG=1", addr)
def stop(*_):
    s.sendto(b"STOPPING=1", addr)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
s.sendto(b"STATUS=warming \x1b[31mup", addr)
time.sleep(0.2)
s.sendto(b"READY=1\nSTATUS=serving", addr)
while True:
    s.sendto(b"WATCHDOG=1", addr)
    time.sleep(0.05)
"""


def vm(command: list[str], name: str = "n", **extra: Any) -> VmConfig:
    return VmConfig.model_validate(
        {
            "name": name,
            "command": command,
            "cooperative": {"method": "signal"},
            "timeouts": {"cooperative_ms": 5000},
            **extra,
        }
    )


def statuses(pub: RecordingPublisher) -> list[str]:
    return [e.text for e in pub.of("vm.status") if isinstance(e, ev.VmStatus)]


async def test_a_real_child_says_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = vm(
        [sys.executable, "-c", CHILD],
        health={"readiness": {"notify": True}},
        watchdog_ms=3000,  # from the launch: room for a slow interpreter start on a busy machine
    )
    worker = VmWorker(config, tmp_path, pub)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert not worker.ready
        assert worker.not_ready_reasons() == [
            "vm n: not ready (unknown: waiting for READY=1 on its notify socket)"
        ]
        with trio.fail_after(20):
            await worker.wait_until(lambda: worker.ready)
        assert (tmp_path / "vms" / "n.notify").exists()
        await until(lambda: "serving" in statuses(pub))
        snap = worker.health_snapshot()
        assert (snap.status, snap.status_text, snap.notify_dropped) == ("ready", "serving", 0)
        assert snap.readiness is not None and snap.readiness.detail == "READY=1"
        # watchdog pings keep it alive past watchdog_ms
        with trio.move_on_after(3.5):
            await worker.wait_until(lambda: worker.state is not VmState.RUNNING)
        assert worker.state is VmState.RUNNING and worker.attempt == 1
        await worker.stop("test")
    assert statuses(pub) == ["warming [31mup", "serving", "stopping (STOPPING=1)"]
    assert worker.health_snapshot().stopping
    (ready,) = pub.of("vm.ready")
    assert isinstance(ready, ev.VmReady) and ready.after_ms >= 200
    assert not (tmp_path / "vms" / "n.notify").exists()  # removed at the exit


async def test_a_datagram_from_another_process_is_dropped(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = vm(["sleep", "1000"], health={"readiness": {"notify": True}})
    worker = VmWorker(config, tmp_path, pub)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:  # this test's pid
            sender.sendto(b"READY=1", str(tmp_path / "vms" / "n.notify"))
            sender.sendto(b"READY=1", str(tmp_path / "vms" / "n.notify"))
            sender.sendto(b"x" * (MAX_MESSAGE + 1), str(tmp_path / "vms" / "n.notify"))
        await until(lambda: worker.notify_drops == 3)
        assert not worker.ready
        await worker.stop("test")
    warnings = [(e, sev) for e, sev in pub.events if isinstance(e, ev.Message)]
    assert len(warnings) == 1  # said once, counted after
    (message, severity) = warnings[0]
    assert severity == "warn"
    assert "not of the VM's process group" in message.text  # type: ignore[attr-defined]
    assert worker.health_snapshot().notify_dropped == 3


GUEST = r"""
import socket, sys, time
path = sys.argv[1].split("path=", 1)[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(b"STATUS=booting\nREA")
time.sleep(0.1)
s.sendall(b"DY=1\n")
time.sleep(1000)
"""


async def test_a_guest_serial_port_is_read_from_the_vm_process(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = vm(
        [sys.executable, "-c", GUEST, "{notify_chardev}"],
        health={"readiness": {"notify": True}},
    )
    worker = VmWorker(config, tmp_path, pub)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        # a connection from another process (this test) is closed and counted
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.connect(str(tmp_path / "vms" / "n.serial"))
            other.sendall(b"READY=1\n")
        with trio.fail_after(20):
            await worker.wait_until(lambda: worker.ready)
        assert statuses(pub) == ["booting"]
        assert worker.notify_drops == 1
        await worker.stop("test")
    assert not (tmp_path / "vms" / "n.serial").exists()


def test_notify_chardev_placeholder(tmp_path: Path) -> None:
    from frameos.workers.paths import substitute

    paths = VmPaths.of(vm(["qemu"]), tmp_path)
    assert substitute(["-chardev", "{notify_chardev}"], paths) == [
        "-chardev",
        f"socket,id=frameos-notify,path={tmp_path}/vms/n.serial",
    ]


def test_a_serial_socket_path_too_long_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    paths = VmPaths.of(vm(["x"]), deep)
    with pytest.raises(LaunchError, match=r"notify serial socket path .* unix socket paths must"):
        NotifyChannels.open(paths, serial=True)


SAY_READY = (
    "import os, socket, sys, time; a = os.environ['NOTIFY_SOCKET']; "
    "a = '\\0' + a[1:] if a.startswith('@') else a; "
    "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'STATUS=deep\\nREADY=1', a); "
    "time.sleep(1000)"
)


async def test_a_long_state_dir_gives_an_abstract_notify_socket(tmp_path: Path) -> None:
    """A state dir too deep for a socket path: NOTIFY_SOCKET is an abstract socket named after
    it (`@…`, as sd_notify reads it), and the VM is believed as before."""
    deep = tmp_path / ("d" * 100)
    pub = RecordingPublisher()
    worker = VmWorker(
        vm([sys.executable, "-c", SAY_READY], health={"readiness": {"notify": True}}), deep, pub
    )
    assert worker.paths.notify_address.startswith("@frameos-notify-")
    async with trio.open_nursery() as nursery:
        assert await nursery.start(worker.run) is not None
        with trio.fail_after(20):
            await worker.wait_until(lambda: worker.ready)
        await worker.stop("test")
    assert statuses(pub) == ["deep"]
    assert worker.notify_drops == 0


async def test_systemd_notify_run_by_the_vm_is_believed(tmp_path: Path) -> None:
    require_tools("systemd-notify")
    pub = RecordingPublisher()
    script = "sleep 0.2; systemd-notify --ready --status=hello; exec sleep 1000"
    worker = VmWorker(
        vm(["sh", "-c", script], health={"readiness": {"notify": True}}), tmp_path, pub
    )
    before = open_fds()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(20):
            await worker.wait_until(lambda: worker.ready)
        await worker.stop("test")
    # D6: its BARRIER=1 (a datagram with a pipe's fd) is answered, not counted as a drop
    assert worker.notify_drops == 0, [e for e in pub.of("message")]
    assert open_fds() == before  # the barrier's fd closed, the sockets too
    assert statuses(pub) == ["hello"]


async def test_the_rate_bound_waits_for_the_next_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from frameos.workers.notify import _Rate

    rate = _Rate(3)
    start = trio.current_time()
    times = []
    for _ in range(7):
        await rate.take()
        times.append(round(trio.current_time() - start, 3))
    assert times == [0, 0, 0, 1.0, 1.0, 1.0, 2.0]


class Said:
    """Stands in for a launch's health: records what the notify socket said, and whether the
    pipe the sender passed along was still open (not yet answered) when READY=1 was handled."""

    def __init__(self, hung_up: Any = None) -> None:
        self.stopping = False
        self.lines: list[str] = []
        self.hung_up_at_ready: bool | None = None
        self._hung_up = hung_up

    def said_ready(self) -> None:
        self.lines.append("READY=1")
        if self._hung_up is not None:
            self.hung_up_at_ready = self._hung_up()

    def said_watchdog(self) -> None:
        self.lines.append("WATCHDOG=1")

    def said_status(self, text: str) -> None:
        self.lines.append(f"STATUS={text}")

    def said_stopping(self) -> None:
        self.stopping = True


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def hung_up(read_end: int) -> bool:
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


async def test_a_barrier_fd_is_held_until_the_datagram_is_handled_then_closed(
    tmp_path: Path,
) -> None:
    """D6: the fd of `BARRIER=1` (systemd-notify) is received, not truncated by the kernel: the
    sender is still waiting (so still there to be checked) while its datagram is handled, and
    the close that answers it comes after. Every received fd is closed: none leaks, also when
    more than MAX_FDS are sent (the kernel closes the rest) or the datagram is dropped."""
    paths = VmPaths.of(vm(["x"]), tmp_path)
    paths.notify_socket.parent.mkdir()
    before = open_fds()
    read_end, write_end = os.pipe()
    said = Said(lambda: hung_up(read_end))
    pub = RecordingPublisher()
    channels = NotifyChannels.open(paths, serial=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(str(paths.notify_socket))
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]))]
        sender.sendmsg([b"READY=1\nBARRIER=1"], rights)
        os.close(write_end)  # only frameos holds it now
        many = [os.open("/dev/null", os.O_RDONLY) for _ in range(MAX_FDS + 4)]
        sender.sendmsg(
            [b"STATUS=many"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", many))]
        )
        for fd in many:
            os.close(fd)
        async with trio.open_nursery() as nursery:
            # this test's own group is the VM's
            nursery.start_soon(channels.serve, os.getpgid(0), said, pub)
            await until(lambda: said.lines == ["READY=1", "STATUS=many"])
            assert hung_up(read_end)  # answered, after it was handled
            nursery.cancel_scope.cancel()
        # from outside the group: a READY=1 is dropped, a bare barrier after it answered (it
        # says nothing to believe); the fds of both closed
        outsider = os.open("/dev/null", os.O_RDONLY)
        sender.sendmsg(
            [b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [outsider]))]
        )
        os.close(outsider)
        barrier_read, barrier_write = os.pipe()
        sender.sendmsg(
            [b"BARRIER=1"],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [barrier_write]))],
        )
        os.close(barrier_write)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channels.serve, 1, said, pub)  # init's group: not this test's
            await until(lambda: hung_up(barrier_read))  # both read: the barrier came second
            nursery.cancel_scope.cancel()
        assert channels.dropped == 1  # the READY=1 alone
        os.close(barrier_read)
    channels.close()
    os.close(read_end)
    assert said.hung_up_at_ready is False  # still open while READY=1 was handled
    assert said.lines == ["READY=1", "STATUS=many"]
    assert open_fds() == before  # every fd received was closed


def test_a_sender_gone_before_it_is_read_is_believed_only_when_known(
    tmp_path: Path,
) -> None:
    """D6: a sender already reaped when its datagram is read cannot be placed in a group: a pid
    this launch believed before is believed still; an unknown one is dropped, saying why."""
    from frameos.workers.notify import _UCRED, _Reader

    (tmp_path / "vms").mkdir()
    channels = NotifyChannels.open(VmPaths.of(vm(["x"]), tmp_path), serial=False)
    said, pub = Said(), RecordingPublisher()
    reader = _Reader(channels, os.getpgid(0), said, pub)  # type: ignore[arg-type]

    def creds(pid: int) -> list[tuple[int, int, bytes]]:
        return [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, _UCRED.pack(pid, 0, 0))]

    known = subprocess.Popen(["sleep", "1000"])  # in this test's group, alive
    reader._datagram(b"STATUS=first", creds(known.pid), 0, None)
    stranger = subprocess.Popen(["true"])
    for child in (known, stranger):
        child.kill()
        child.wait()  # reaped: getpgid fails for both now
    reader._datagram(b"READY=1", creds(known.pid), 0, None)
    reader._datagram(b"STATUS=who", creds(stranger.pid), 0, None)
    channels.close()
    assert said.lines == ["STATUS=first", "READY=1"]
    assert channels.dropped == 1
    (warning,) = [e.text for e in pub.of("message") if isinstance(e, ev.Message)]
    assert f"pid {stranger.pid}, which exited before it could be checked" in warning


LATE = r"""
import os, signal, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = os.environ["NOTIFY_SOCKET"]
def stop(*_):
    s.sendto(b"STATUS=booted late", addr)
    s.sendto(b"READY=1", addr)
    s.sendto(b"STOPPING=1", addr)
    time.sleep(0.3)  # the ladder is running: the socket is read through it
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
s.sendto(b"STATUS=booting", addr)
time.sleep(1000)
"""


async def test_a_late_ready_during_the_stop_ladder_changes_no_health(tmp_path: Path) -> None:
    """D9: once the stop has begun, READY=1 turns into no `vm.health` and no `vm.ready`, while
    STATUS= and STOPPING=1 are still said."""
    pub = RecordingPublisher()
    config = vm([sys.executable, "-c", LATE], health={"readiness": {"notify": True}})
    worker = VmWorker(config, tmp_path, pub)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await until(lambda: "booting" in statuses(pub), timeout=20)
        await worker.stop("test")
    assert statuses(pub) == ["booting", "booted late", "stopping (STOPPING=1)"]
    assert pub.of("vm.health") == [] and pub.of("vm.ready") == []
    assert not worker.ready and worker.notify_drops == 0
    snap = worker.health_snapshot()
    assert snap.readiness is not None and snap.readiness.status == "unknown"
