"""The first rung of the stop ladder: asking the guest to stop (SPEC §5).

`request_for` turns a method into a coroutine function the ladder calls once. It returns when
the request was delivered (the ladder then waits for the process to exit) and raises
ChannelUnavailable when there is no one to ask, ChannelError when asking failed.

    qmp      qmp_capabilities, then system_powerdown on the VM's QMP socket
    signal   the configured signal (SIGINT by default) to the VM's process group
    command  an argv run on the host (e.g. `ssh guest poweroff`); exit 0 means delivered
    none     nothing to ask: straight to SIGTERM
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from frameos.config import CooperativeMethod
from frameos.workers import ChannelError, ChannelUnavailable, LaunchError, qmp
from frameos.workers.child import SPAWN_ERRORS, Child, Tracking, run_captured

Request = Callable[[], Awaitable[None]]
COMMAND_GRACE_S = 1.0
TAIL_BYTES = 2048


def request_for(
    method: CooperativeMethod,
    child: Child,
    *,
    sig: str = "SIGINT",
    command: list[str] | None = None,
    qmp_socket: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    tracking: Tracking | None = None,
) -> Request:
    """The cooperative request of `method` for `child`."""
    if method == "qmp":
        if qmp_socket is None:
            return _unavailable("method qmp needs a QMP socket ({qmp_socket} in the command)")
        return lambda: _qmp(qmp_socket)
    if method == "signal":
        return lambda: _signal(child, sig)
    if method == "command" and command:
        return lambda: run_command(command, env or os.environ, cwd, tracking)
    return _unavailable("cooperative.method is none: nothing to ask")


def _unavailable(why: str) -> Request:
    async def request() -> None:
        raise ChannelUnavailable(why)

    return request


async def _qmp(path: Path) -> None:
    await qmp.system_powerdown(path)


async def _signal(child: Child, name: str) -> None:
    if child.exited:
        return
    child.signal_group(signal.Signals[name])


async def run_command(
    argv: list[str], env: Mapping[str, str], cwd: Path | None, tracking: Tracking | None = None
) -> None:
    """Run the stop command to completion; ChannelError (with its output's tail) unless exit 0.

    Its process group is recorded under `tracking` while it runs. Cancellation (the rung's
    deadline) terminates the command's process group.
    """
    tail = bytearray()

    def keep_tail(chunk: bytes) -> None:
        tail.extend(chunk)
        del tail[:-TAIL_BYTES]

    try:
        code = await run_captured(
            argv, keep_tail, env=env, cwd=cwd, grace_s=COMMAND_GRACE_S, tracking=tracking
        )
    except LaunchError as exc:
        raise ChannelUnavailable(f"stop command {argv[0]!r}: {exc}") from None
    except SPAWN_ERRORS as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ChannelUnavailable(f"stop command {argv[0]!r} cannot start: {why}") from None
    if code != 0:
        output = tail.decode(errors="replace").strip()
        raise ChannelError(f"stop command {argv[0]!r} exited with {code}: {output}")
