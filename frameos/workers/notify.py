"""A VM's own notify channels (SPEC §5.2): `NOTIFY_SOCKET` for a child, a virtio-serial port for
a QEMU guest. Both carry systemd's newline-separated `KEY=VALUE` lines:

    READY=1     a `notify` readiness probe passes (then `vm.ready`)
    STATUS=...  `vm.status` [vm, text]; the snapshot's `health.status_text`
    WATCHDOG=1  a liveness ping (with `watchdog_ms`: a missed one restarts the VM)
    STOPPING=1  the snapshot's `health.stopping` turns true and `vm.status` says so

state_dir/vms/NAME.notify  a datagram socket with SO_PASSCRED: each datagram carries its
                           sender's pid, believed only when that pid is in the VM's process
                           group (pgid == the VM's pid); the fds it carries (SCM_RIGHTS, up
                           to `MAX_FDS`) are held until the datagram is handled, then closed
state_dir/vms/NAME.serial  with `{notify_chardev}` in the command: a stream socket frameos
                           listens on before the launch; QEMU connects to it at start-up; the
                           peer (SO_PEERCRED) is believed the same way

Both are made before the launch (`NotifyChannels.open`, so nothing the VM says early is lost),
served by `serve` in the launch's nursery and removed after the exit (`close`). Everything is
bounded: a datagram or line of at most `MAX_MESSAGE` bytes (a longer one is dropped), at most
`RATE` messages a second (the rest wait in the kernel's buffer: a flooding VM slows itself
down, not the supervisor), `STATUS_CHARS` of status text. A message from outside the group is
dropped, counted (`dropped`) and said once (a `message` warn).

`systemd-notify` (and `sd_notify_barrier`) ends with a `BARRIER=1` datagram carrying a pipe's
write end and waits until it is closed: the sender stays alive until frameos has checked and
handled what it said, and is answered by the close. A sender found gone already (reaped) cannot
be placed in a group any more: it is believed only when this launch believed that pid before
(`KNOWN_PIDS` are kept), otherwise dropped with a line saying it exited before it could be
checked. A datagram that is only `BARRIER=1` says nothing to believe: its fd is closed whoever
sent it (a sender whose own barrier timed out, under load, has gone by then).
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from pathlib import Path

import trio

from frameos import events as ev
from frameos.workers import LaunchError
from frameos.workers.paths import VmPaths
from frameos.workers.probes import LaunchHealth, clean
from frameos.workers.publisher import Publisher

MAX_MESSAGE = 4096
RATE = 200  # messages a second, per channel
STATUS_CHARS = 200
MAX_CONNECTIONS = 4  # believed stream connections at once (QEMU makes one)
MAX_FDS = 16  # fds read with one datagram (a barrier sends 1); the kernel closes any more
KNOWN_PIDS = 64  # senders believed in this launch, remembered for one that is gone when read
_UCRED = struct.Struct("iII")  # pid, uid, gid
_FD = array.array("i").itemsize
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(MAX_FDS * _FD)
_CLOEXEC = socket.MSG_CMSG_CLOEXEC  # a received fd is never inherited by a launch


class NotifyChannels:
    """The notify socket (and, for a guest, the serial listener) of one launch."""

    def __init__(
        self, vm: str, datagram: socket.socket, stream: socket.socket | None, paths: list[Path]
    ) -> None:
        self.vm = vm
        self.datagram, self.stream, self.paths = datagram, stream, paths
        self.dropped = 0  # messages from outside the VM's group, oversize ones
        self._warned = False
        self._connections = 0

    @classmethod
    def open(cls, paths: VmPaths, *, serial: bool) -> NotifyChannels:
        """Bind the notify socket (and listen on the serial one); LaunchError when a path does
        not fit in a socket address or cannot be bound."""
        if serial:
            paths.check_socket(paths.serial_socket, "notify serial socket")
        datagram = _bound(socket.SOCK_DGRAM, paths.notify_address)
        try:
            datagram.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            stream = _bound(socket.SOCK_STREAM, paths.serial_socket) if serial else None
        except BaseException:
            datagram.close()
            raise
        if stream is not None:
            stream.listen(MAX_CONNECTIONS)
        files = [paths.notify_socket, *([paths.serial_socket] if serial else [])]
        return cls(paths.name, datagram, stream, files)

    def close(self) -> None:
        """Close the sockets and remove their files."""
        for sock in (self.datagram, self.stream):
            if sock is not None:
                sock.close()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def serve(self, pgid: int, health: LaunchHealth, publisher: Publisher) -> None:
        """Read both channels until cancelled (the exit of this launch); then what the VM said
        just before its exit (a STOPPING=1) is still read, without waiting."""
        reader = _Reader(self, pgid, health, publisher)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.datagrams)
                if self.stream is not None:
                    nursery.start_soon(reader.connections)
        finally:
            reader.drain()


class _Reader:
    def __init__(
        self, channels: NotifyChannels, pgid: int, health: LaunchHealth, publisher: Publisher
    ) -> None:
        self.channels, self.pgid, self.health, self.publisher = channels, pgid, health, publisher
        self.known: dict[int, None] = {}  # pids believed in this launch, oldest first

    async def datagrams(self) -> None:
        sock = trio.socket.from_stdlib_socket(self.channels.datagram)
        rate = _Rate(RATE)
        while True:
            await rate.take()
            self._datagram(*await sock.recvmsg(MAX_MESSAGE, _ANCILLARY, _CLOEXEC))

    def drain(self) -> None:
        """Read what is already queued (said just before the exit), without waiting."""
        for _ in range(RATE):
            try:
                message = self.channels.datagram.recvmsg(
                    MAX_MESSAGE, _ANCILLARY, socket.MSG_DONTWAIT | _CLOEXEC
                )
            except OSError:  # EAGAIN: nothing more
                return
            self._datagram(*message)

    def _datagram(
        self, data: bytes, ancillary: list[tuple[int, int, bytes]], flags: int, _: object
    ) -> None:
        """Check the sender, handle the lines, then close the fds it sent (a barrier's answer:
        its sender waits for that close, so it is still there to be checked)."""
        fds = _fds(ancillary)
        try:
            pid = _sender(ancillary)
            if data.strip() == b"BARRIER=1" and not flags & socket.MSG_TRUNC:
                pass  # says nothing to believe: closing its fd (below) is the whole answer
            elif flags & socket.MSG_TRUNC:
                self._drop(f"a notify datagram over {MAX_MESSAGE} bytes from pid {pid}")
            elif pid is None:
                self._drop("a notify datagram without its sender's credentials")
            elif (group := self._group(pid)) is None:
                self._drop(
                    f"a notify datagram from pid {pid}, which exited before it could be checked "
                    "(keep the sender alive until it is read: systemd-notify waits for its "
                    "barrier)"
                )
            elif not group:
                self._drop(f"a notify datagram from pid {pid}, not of the VM's process group")
            else:
                self._lines(data)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def connections(self) -> None:
        assert self.channels.stream is not None
        listener = trio.socket.from_stdlib_socket(self.channels.stream)
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                pid = _UCRED.unpack(creds)[0]
                if not self._believed(pid):
                    self._drop(f"a notify serial connection from pid {pid}, not of the VM's group")
                    conn.close()
                elif self.channels._connections >= MAX_CONNECTIONS:
                    conn.close()
                else:
                    nursery.start_soon(self._read_stream, conn)

    async def _read_stream(self, conn: trio.socket.SocketType) -> None:
        self.channels._connections += 1
        rate, pending, skipping = _Rate(RATE), b"", False
        try:
            with conn:
                while chunk := await conn.recv(MAX_MESSAGE):
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if not skipping:
                            await rate.take()
                            self._lines(line)
                        skipping = False
                    if len(pending) > MAX_MESSAGE:  # a line too long: dropped to its end
                        pending, skipping = b"", True
                        self._drop(f"a notify line over {MAX_MESSAGE} bytes")
        except OSError:  # the guest went away mid-line: nothing more to read
            pass
        finally:
            self.channels._connections -= 1

    def _believed(self, pid: int) -> bool:
        return bool(self._group(pid))

    def _group(self, pid: int) -> bool | None:
        """Whether `pid` is of the VM's process group; None when it is gone and was not
        believed before in this launch (who it was cannot be known any more)."""
        if pid == self.pgid:
            return True
        try:
            believed = os.getpgid(pid) == self.pgid
        except OSError:  # gone already (reaped): believed when it was before
            return True if pid in self.known else None
        if believed:
            self.known.pop(pid, None)
            self.known[pid] = None
            if len(self.known) > KNOWN_PIDS:
                del self.known[next(iter(self.known))]
        else:  # the pid is someone else's now
            self.known.pop(pid, None)
        return believed

    def _drop(self, what: str) -> None:
        self.channels.dropped += 1
        if not self.channels._warned:
            self.channels._warned = True
            self._say(
                ev.Message(
                    text=f"{self.channels.vm}: dropped {what} (only the VM's own process group "
                    "is believed; later drops are counted in its snapshot)"
                ),
                "warn",
            )

    def _lines(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            key, _, value = line.strip(b"\r").partition(b"=")
            if key == b"READY" and value == b"1":
                self.health.said_ready()
            elif key == b"WATCHDOG" and value == b"1":
                self.health.said_watchdog()
            elif key == b"STATUS":
                text = clean(value.decode("utf-8", "replace"), STATUS_CHARS)
                self.health.said_status(text)
                self._say(ev.VmStatus(vm=self.channels.vm, text=text))
            elif key == b"STOPPING" and value == b"1" and not self.health.stopping:
                self.health.said_stopping()
                self._say(ev.VmStatus(vm=self.channels.vm, text="stopping (STOPPING=1)"))

    def _say(self, event: ev.Event, severity: ev.Severity | None = None) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self.publisher.publish_nowait(event, severity)


class _Rate:
    """At most `limit` takes a second: past it, `take` waits for the next second."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.window = limit, 0, trio.current_time() + 1.0

    async def take(self) -> None:
        now = trio.current_time()
        if now >= self.window:
            self.count, self.window = 0, now + 1.0
        elif self.count >= self.limit:
            await trio.sleep_until(self.window)
            self.count, self.window = 0, self.window + 1.0
        self.count += 1


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return int(_UCRED.unpack(data[: _UCRED.size])[0])
    return None


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds a datagram carried (SCM_RIGHTS): now this process's, to be closed."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD])
    return list(fds)


def _bound(kind: int, address: Path | str) -> socket.socket:
    """A unix socket bound to a path, or to an abstract name (`@name`, a str)."""
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    path = Path(address) if not str(address).startswith("@") else None
    try:
        if path is None:
            sock.bind(b"\0" + os.fsencode(str(address)[1:]))
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a crashed instance
            sock.bind(os.fsencode(path))
    except OSError as exc:
        sock.close()
        raise LaunchError(f"cannot bind {address}: {exc.strerror or exc}") from None
    return sock
