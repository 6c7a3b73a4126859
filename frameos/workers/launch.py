"""Starting a VM's process: the spawner, its log file, and what a failed launch says.

The spawner opens the log, starts the process in its own session and has its pidfile written
before the program runs (child.spawn's gate, child.record_or_kill); the file work runs in
threads, since creating a file can cost the event loop milliseconds, times hundreds of VMs.
Tests pass a fake spawner (testing.FakeSpawner) with the same signature.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from frameos.config import VmConfig
from frameos.workers import LaunchError
from frameos.workers.child import SPAWN_ERRORS, Child, spawn

LOG_MAX_BYTES = 8 * 1024 * 1024
LAUNCH_ERRORS: tuple[type[Exception], ...] = (LaunchError, *SPAWN_ERRORS)

# (argv, env, cwd, log file, record): start the process, then `record(child)` (its pidfile)
# before returning; a process that cannot be recorded is killed and the launch fails.
Spawner = Callable[
    [list[str], Mapping[str, str], Path | None, Path, Callable[[Child], None]], Awaitable[Child]
]


async def default_spawner(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path | None,
    log_path: Path,
    record: Callable[[Child], None],
) -> Child:
    """Open the log, start the process, write its pidfile. The file work runs in threads:
    creating a file can cost the event loop milliseconds, times hundreds of VMs."""
    log = await trio.to_thread.run_sync(_open_log, log_path)
    try:

        async def record_in_thread(child: Child) -> None:
            await trio.to_thread.run_sync(record, child)

        # held at the gate until its pidfile is written (child.spawn)
        return await spawn(argv, env=env, cwd=cwd, output=log, record=record_in_thread)
    finally:
        os.close(log)


def _open_log(path: Path) -> int:
    """The VM's stdout/stderr file, appended to (rotated first when past LOG_MAX_BYTES)."""
    rotate_if_large(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def rotate_if_large(path: Path, limit: int = LOG_MAX_BYTES) -> bool:
    """Past `limit` bytes, copy the output file to NAME.log.1 (replacing it) and truncate it.

    Copy-and-truncate, not rename: a running VM keeps writing to its open descriptor (opened
    with O_APPEND, so it writes at the new end). What it writes between the copy and the
    truncation is lost (a few lines at most, as with logrotate's copytruncate). Blocking: call
    in a thread. True when it rotated.
    """
    try:
        if os.stat(path).st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    rotated = path.with_name(path.name + ".1")
    tmp = path.with_name(f".{path.name}.1.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, rotated)
    os.truncate(path, 0)
    return True


def why(exc: BaseException, vm: VmConfig) -> str:
    missing = isinstance(exc, FileNotFoundError)
    if missing and vm.cwd is not None and str(getattr(exc, "filename", "")) == str(vm.cwd):
        return f"cwd {vm.cwd} does not exist"
    if missing:
        return f"command {vm.command[0]!r} not found; check the VM's command (argv[0])"
    if isinstance(exc, PermissionError):
        return f"command {vm.command[0]!r} is not executable (permission denied)"
    if isinstance(exc, OSError):
        return f"cannot start {vm.command[0]!r}: {exc.strerror or exc}"
    if isinstance(exc, LaunchError):
        return str(exc)
    return (
        f"cannot start {vm.command[0]!r}: {exc}; check the VM's command and env "
        f"(no NUL bytes, no '=' or empty env names)"
    )
