"""A small sd_notify(3) client on trio's sockets (SPEC §9), with no dependency.

`NOTIFY_SOCKET` names systemd's datagram socket: a path (`/run/systemd/notify`) or an abstract
address (`@name`, sent as a leading NUL). Lines that belong together (`READY=1` and its
`STATUS=`) go in one datagram, as systemd applies a datagram at once. With `NOTIFY_SOCKET` unset
nothing is ever sent. A send never raises and never waits long: a missing or refusing socket,
or a full one, is reported once through `on_error` and the message is dropped.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

SEND_TIMEOUT_S = 1.0


def watchdog_usec(env: Mapping[str, str], pid: int | None = None) -> int | None:
    """`WATCHDOG_USEC` if meant for this process (`WATCHDOG_PID` unset or ours), else None."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec if usec > 0 else None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd expects in `MONOTONIC_USEC=`."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_target(address: str) -> str | None:
    """The AF_UNIX address for a `NOTIFY_SOCKET` value, or None when its form is unsupported."""
    if address.startswith("/"):
        return address
    if address.startswith("@") and len(address) > 1:
        return "\0" + address[1:]
    return None


class NotifySocket:
    """One connection to systemd's notification socket; sends datagrams of `KEY=VALUE` lines."""

    def __init__(
        self,
        address: str | None,
        *,
        on_error: Callable[[str], None] | None = None,
        timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.address = address or None
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self._on_error = on_error
        self._reported = False
        self._sock: trio.socket.SocketType | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, on_error: Callable[[str], None] | None = None
    ) -> NotifySocket:
        return cls(env.get("NOTIFY_SOCKET"), on_error=on_error)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    async def send(self, *lines: str) -> bool:
        """Send `lines` as one datagram; True when systemd's socket took it. Never raises.

        Nothing is sent (False) when disabled. On cancellation the datagram may not be sent.
        """
        if self.address is None or not lines:
            return False
        data = "\n".join(lines).encode()
        with trio.move_on_after(self.timeout_s):
            try:
                sock = await self._connected(self.address)
                await sock.send(data)
            except OSError as exc:
                self._drop_socket()
                return self._failure(exc.strerror or str(exc))
            self.sent += 1
            return True
        self._drop_socket()
        return self._failure(f"the socket took nothing for {self.timeout_s:g} s")

    async def _connected(self, address: str) -> trio.socket.SocketType:
        # Connected, so a full receiver makes us wait (bounded) instead of spinning on EAGAIN.
        if self._sock is None:
            target = socket_target(address)
            if target is None:
                raise OSError(f"unsupported address form {address!r} (expected /path or @name)")
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                await sock.connect(target)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        # Reconnect next time: systemd may have re-created its socket (daemon-reexec).
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _failure(self, reason: str) -> bool:
        self.failed += 1
        if not self._reported and self._on_error is not None:
            self._reported = True
            self._on_error(f"systemd notify socket {self.address}: {reason}")
        return False

    def close(self) -> None:
        self._drop_socket()
