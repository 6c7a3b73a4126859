"""Processes the stop ladder can drive: our own children, orphans of a killed instance, fakes.

Every process frameos starts runs in its own process group (`start_new_session`), so signals go
to the whole group and no grandchild outlives it. `Child` is all the ladder needs; tests drive
it with a fake process, production with `OwnChild` (waits on the pidfd: no polling) or
`OrphanChild` (not our child: polls its leader's /proc entry, backing off to `ORPHAN_POLL_MAX_S`).

`kill_group` is the one bounded kill of the package (SIGKILL, with an optional SIGTERM rung
first for a helper's cleanup). `spawn(record=...)` holds the program at a gate until
`record_or_kill` has written its pidfile: nothing runs that no file names; a process that
cannot be recorded is killed at once, before its program ever ran.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from frameos.workers import LaunchError, pidfile, procfs
from frameos.workers.pidfile import PidRecord

ORPHAN_POLL_S = 0.002
RECORD_KILL_S = 1.0  # the bound on killing a process whose pidfile could not be written
ORPHAN_POLL_MAX_S = 0.05
# What starting a process raises for bad input (an env name with "=", a NUL byte, a missing
# program, a full disk, ...): the failure of that one launch, never of the supervisor.
SPAWN_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    TypeError,
    subprocess.SubprocessError,
)


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


class OwnChild:
    """A child this instance started, waited on through trio (a pidfd on Linux)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process

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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def kill_leftovers(self) -> None:
        self.signal_group(signal.SIGKILL)


class OrphanChild:
    """A process group left running by a killed instance: found by pidfile, its leader watched
    by polling /proc (one small read per round; no scan of /proc)."""

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
        # Not our child: no pidfd wait or SIGCHLD, so poll, quickly at first.
        pause = ORPHAN_POLL_S
        while self.record.alive():
            await trio.sleep(pause)
            pause = min(pause * 2, ORPHAN_POLL_MAX_S)

    def signal_group(self, sig: int) -> None:
        self.record.signal_group(sig)

    def kill_leftovers(self) -> None:
        self.record.signal_group(signal.SIGKILL)


async def kill_group(child: Child, bound_s: float, *, sigterm_s: float = 0.0) -> bool:
    """SIGKILL the group and wait for its leader, at most `bound_s`, shielded: for `finally:`
    and for the end of every stop. With `sigterm_s`, SIGTERM first and give the leader that
    long (a helper's cleanup; the stop ladder walks its own rungs, with events). Then SIGKILL
    what is left of the group. True when the leader has exited. The one bounded kill of the
    package."""
    if sigterm_s > 0:
        with trio.move_on_after(sigterm_s, shield=True):
            if not child.exited:
                child.signal_group(signal.SIGTERM)
                await child.wait()
    with trio.move_on_after(bound_s, shield=True):
        if not child.exited:
            child.signal_group(signal.SIGKILL)
            await child.wait()
    child.kill_leftovers()
    return child.exited


async def record_or_kill(child: Child, write: Callable[[], Awaitable[object]]) -> None:
    """Write `child`'s pidfile (`write`, run to completion even when cancelled: a thread that
    is not abandoned) before anything else. When that fails (ENOSPC, EACCES, ...), or a
    cancellation arrives first, the group is killed at once (shielded, bounded): a process
    frameos could not find after a crash must not run. A failed write raises LaunchError."""
    try:
        await write()
    except OSError as exc:
        await kill_group(child, RECORD_KILL_S)
        raise LaunchError(
            f"cannot write the pidfile of pid {child.pid} ({exc.strerror or exc}), so killed "
            f"pid {child.pid}: nothing may run untracked; free space in the state_dir"
        ) from None
    except BaseException:
        await kill_group(child, RECORD_KILL_S)
        raise


@dataclass(frozen=True)
class Tracking:
    """Where the pidfiles of a VM's helper processes (bootstrap steps, stop commands) go."""

    directory: Path
    vm: str
    kind: str  # step | command

    def write(self, child: Child) -> Path:
        """Record `child`'s group as `directory/PID.pid`; raises OSError when it cannot."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{child.pid}.pid"
        record = PidRecord(
            vm=self.vm,
            pid=child.pid,
            start_time=procfs.start_time(child.pid) or 0,
            pgid=child.pid,
            kind=self.kind,
            owner_pid=os.getpid(),
        )
        pidfile.write(path, record)
        return path


# The gate a recorded process waits at: a shell reads one line from its stdin (a pipe only
# frameos holds the write end of) and only then execs the program, with stdin on /dev/null.
# frameos writes the line once the pidfile is on disk; if frameos dies first, the shell reads
# EOF and exits without running the program. Same pid, same start time, same group after exec.
GATE_SHELL = "/bin/sh"
GATE_SCRIPT = 'IFS= read -r go || exit 125; exec "$@" </dev/null'
GATE_EXIT = 125  # the gate's status when frameos was gone before the pidfile was written


async def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    output: int | None = None,
    record: Callable[[OwnChild], Awaitable[object]] | None = None,
) -> OwnChild:
    """Start `argv` in a new session (its own process group) with stdin on /dev/null.

    `output` is a file descriptor for stdout and stderr (None: /dev/null). With `record` (the
    pidfile write), the program is held at a gate until `record(child)` returned: no moment
    exists at which the program runs and nothing on disk names it (record_or_kill: a failed
    or cancelled record kills the group, which never ran the program). Raises one of
    SPAWN_ERRORS when the program cannot be started (checked before the gate: a missing or
    non-executable program fails the launch, as without it), LaunchError when `record` fails.
    """
    if record is None:
        return OwnChild(await _open(argv, env, cwd, output, subprocess.DEVNULL))
    _check_program(argv, env, cwd)
    gate_read, gate_write = os.pipe()  # both close-on-exec: no other child inherits them
    try:
        try:
            gated = [GATE_SHELL, "-c", GATE_SCRIPT, "frameos-gate", *argv]
            child = OwnChild(await _open(gated, env, cwd, output, gate_read))
        finally:
            os.close(gate_read)
        await record_or_kill(child, partial(record, child))
        with contextlib.suppress(BrokenPipeError):  # killed meanwhile: its exit says so
            os.write(gate_write, b"go\n")
    finally:
        os.close(gate_write)
    return child


async def _open(
    argv: list[str], env: Mapping[str, str], cwd: Path | None, output: int | None, stdin: int
) -> trio.Process:
    return await trio.lowlevel.open_process(
        argv,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        stdin=stdin,
        stdout=output if output is not None else subprocess.DEVNULL,
        stderr=output if output is not None else subprocess.DEVNULL,
    )


def _check_program(argv: list[str], env: Mapping[str, str], cwd: Path | None) -> None:
    """Raise what exec would (FileNotFoundError, PermissionError, OSError ENOEXEC, ValueError)
    for a program the gate's shell could not run, so a bad command stays a failed launch: the
    shell would only exit 126/127 later. A file that is neither ELF nor `#!` is refused as the
    kernel refuses it (the shell would run it as a script). One stat and one small read."""
    if not argv or not argv[0]:
        raise ValueError("empty command")
    program = argv[0]
    if "\0" in program:
        raise ValueError("embedded null byte")
    if os.sep in program:
        path = os.path.join(cwd if cwd is not None else os.getcwd(), program)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        path = found
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except PermissionError:  # execute-only: exec needs no read permission; let the kernel judge
        return
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].split(maxsplit=1)[:1]
        if not interpreter or not os.access(interpreter[0], os.X_OK):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    elif not (head[:4] == b"\x7fELF" and head[4] in (1, 2) and head[5] in (1, 2) and head[6] == 1):
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), program)


async def run_captured(
    argv: list[str],
    on_output: Callable[[bytes], None],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    grace_s: float = 1.0,
    tracking: Tracking | None = None,
) -> int:
    """Run `argv` in its own group, feeding its stdout+stderr chunks to `on_output`.

    Returns the exit status (negative: killed by that signal). Raises one of SPAWN_ERRORS when
    it cannot start, LaunchError when its pidfile (`tracking`) cannot be written or when its
    leader outlived SIGKILL (stuck in the kernel: its pidfile is kept, so the next start stops
    it). Cancellation (a caller's deadline) terminates the whole group (SIGTERM, then SIGKILL,
    each bounded by `grace_s`).
    """
    read_end, write_end = os.pipe()
    recorded: list[Path] = []
    record: Callable[[OwnChild], Awaitable[object]] | None = None
    if tracking is not None:
        track = tracking

        async def record_in_thread(child: OwnChild) -> None:
            recorded.append(await trio.to_thread.run_sync(track.write, child))

        record = record_in_thread
    try:
        child = await spawn(argv, env=env, cwd=cwd, output=write_end, record=record)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        async with trio.lowlevel.FdStream(read_end) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, stream, on_output)
            try:
                await child.wait()
            finally:
                await kill_group(child, grace_s, sigterm_s=grace_s)
            # Drain, then force: the output ends at EOF unless something outside the group
            # kept the pipe open.
            nursery.cancel_scope.deadline = trio.current_time() + grace_s
    finally:
        if child.exited:  # else the record stays for the next start to stop it
            for path in recorded:
                pidfile.remove(path)
    code = child.returncode
    if code is None:
        raise LaunchError(
            f"pid {child.pid} is still there {grace_s * 2:g} s after SIGTERM and SIGKILL "
            f"(stuck in the kernel?); its pidfile is kept for the next start"
        )
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
