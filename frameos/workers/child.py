"""Processes the stop ladder can drive: our own children, orphans of a killed instance, fakes.

Every VM runs in its own process group (`start_new_session`), so signals go to the whole group
and no grandchild outlives the VM. `Child` is all the ladder needs; tests drive it with a fake
process, production with `OwnChild` (waits on the pidfd: no polling) or `OrphanChild` (not our
child, so it polls /proc at `ORPHAN_POLL_S`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import trio

from frameos.workers.pidfile import PidRecord

ORPHAN_POLL_S = 0.01


class Child(Protocol):
    """A process (and its group) that can be signalled and waited for."""

    @property
    def pid(self) -> int: ...

    @property
    def exited(self) -> bool:
        """True once the leader has exited."""

    @property
    def returncode(self) -> int | None:
        """The exit status once known (negative: killed by that signal); None for orphans."""

    async def wait(self) -> None:
        """Return once the leader has exited. Cancellation leaves the process as it is."""

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the whole process group; a gone process is not an error."""

    def kill_leftovers(self) -> None:
        """SIGKILL whatever is left of the group after the leader exited."""


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class OwnChild:
    """A child this instance started, waited on through trio (a pidfd on Linux)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.started_at = trio.current_time()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> None:
        await self.process.wait()

    def signal_group(self, sig: int) -> None:
        # pgid == pid (a new session). After the leader is reaped the number stays reserved
        # while any member of its group lives, so this never reaches a stranger that matters.
        _killpg(self.process.pid, sig)

    def kill_leftovers(self) -> None:
        _killpg(self.process.pid, signal.SIGKILL)


class OrphanChild:
    """A VM left running by a killed instance: found by pidfile, watched by polling /proc."""

    def __init__(self, record: PidRecord) -> None:
        self.record = record

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def exited(self) -> bool:
        return not self.record.alive()

    @property
    def returncode(self) -> int | None:
        return None  # not our child: its status went to its new parent

    async def wait(self) -> None:
        # Not our child: no pidfd wait or SIGCHLD, so poll /proc (a short, cheap read).
        while self.record.alive():  # noqa: ASYNC110
            await trio.sleep(ORPHAN_POLL_S)

    def signal_group(self, sig: int) -> None:
        if self.record.leftovers():
            _killpg(self.record.pgid, sig)

    def kill_leftovers(self) -> None:
        self.signal_group(signal.SIGKILL)


async def spawn(
    argv: list[str], *, env: Mapping[str, str], cwd: Path | None, output: int | None = None
) -> OwnChild:
    """Start `argv` in a new session (its own process group) with stdin on /dev/null.

    `output` is a file descriptor for stdout and stderr (None: /dev/null). Raises OSError when
    the program cannot be started.
    """
    process = await trio.lowlevel.open_process(
        argv,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=output if output is not None else subprocess.DEVNULL,
        stderr=output if output is not None else subprocess.DEVNULL,
    )
    return OwnChild(process)


async def terminate_group(child: Child, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL it after `grace_s`; shielded and bounded, for `finally:`.

    Returns once the leader has exited or the bound (grace + grace) passed.
    """
    with trio.move_on_after(grace_s * 2, shield=True):
        if not child.exited:
            child.signal_group(signal.SIGTERM)
            with trio.move_on_after(grace_s):
                await child.wait()
        if not child.exited:
            child.signal_group(signal.SIGKILL)
            await child.wait()
    child.kill_leftovers()


async def run_captured(
    argv: list[str],
    on_output: Callable[[bytes], None],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    grace_s: float = 1.0,
) -> int:
    """Run `argv` in its own group, feeding its stdout+stderr chunks to `on_output`.

    Returns the exit status (negative: killed by that signal). Raises OSError when it cannot
    start. Cancellation (a caller's deadline) terminates the whole group, bounded by `grace_s`.
    """
    read_end, write_end = os.pipe()
    try:
        child = await spawn(argv, env=env, cwd=cwd, output=write_end)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    async with trio.lowlevel.FdStream(read_end) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(_pump, stream, on_output)
        try:
            await child.wait()
        finally:
            await terminate_group(child, grace_s)
        # Drain, then force: the output ends at EOF unless something outside the group kept
        # the pipe open.
        nursery.cancel_scope.deadline = trio.current_time() + grace_s
    code = child.returncode
    assert code is not None, "terminate_group returned before the process exited"
    return code


async def _pump(stream: trio.lowlevel.FdStream, on_output: Callable[[bytes], None]) -> None:
    async for chunk in stream:
        on_output(bytes(chunk))


def signal_name(number: int) -> str:
    """`SIGTERM` for 15; `signal 77` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
