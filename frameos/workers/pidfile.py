"""Pidfiles: how a restarted frameos finds the VMs a killed instance left behind (SPEC §5).

One JSON file per process group frameos starts: `vms/NAME.pid` per running VM, and
`procs/PID.pid` per bootstrap step, cooperative stop command or exec probe (`kind` says which).
Each is written (atomically) right after the spawn, before anything can be awaited, and removed
once the group is gone; if it cannot be written the group is killed at once (child.record_or_kill).
It names the process by pid *and* start time, so a reused pid is never taken
for the VM, and it keeps what the stop ladder needs (method, signal, command, QMP socket,
timeouts) so the orphan is stopped the way it was configured when it was started.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import get_args

from frameos.config import CooperativeMethod
from frameos.workers import procfs


@dataclass(frozen=True)
class PidRecord:
    """What a pidfile holds."""

    vm: str
    pid: int
    start_time: int
    pgid: int
    method: CooperativeMethod = "none"
    signal: str = "SIGINT"
    command: list[str] | None = None
    qmp_socket: str | None = None
    overlay: str | None = None
    timeouts: dict[str, int] = field(default_factory=dict)
    owner_pid: int = 0
    kind: str = "vm"  # vm | step | command | probe

    def alive(self) -> bool:
        """True while the recorded leader runs (same pid, same start time, not a zombie)."""
        return procfs.is_alive(self.pid, self.start_time)

    def group_alive(self) -> bool:
        """True while the recorded group has a member (maybe only zombies): cheap, no scan."""
        return procfs.group_exists(self.pgid) and not procfs.reused_leader(
            self.pgid, self.start_time
        )

    def leftovers(self) -> list[procfs.ProcStat]:
        """Live processes of the recorded group (leader included), [] when none or not ours.

        Scans /proc: run it in a thread, after `group_alive` said yes."""
        return procfs.orphan_group(self.pgid, self.start_time)

    def signal_group(self, sig: int) -> None:
        """Signal the recorded group, unless its number now names someone else's group."""
        if procfs.reused_leader(self.pgid, self.start_time):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)


def write(path: Path, record: PidRecord) -> None:
    """Write atomically: a crash mid-write leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(record), sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read(path: Path) -> PidRecord | None:
    """The record at `path`; None when absent. Anything else that is not a well-typed record (an
    unreadable file, a directory, invalid UTF-8 or JSON, a field of the wrong type, a pid that
    is not positive) raises ValueError naming the file and what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # EACCES, EISDIR, EIO, ...; invalid UTF-8
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"pidfile {path} cannot be read ({why})") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        record = PidRecord(**data)
        _check(record)
        if record.method not in get_args(CooperativeMethod):  # still stoppable: ask nothing
            record = replace(record, method="none")
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"pidfile {path} is not a frameos pidfile ({exc})") from None
    return record


_OPTIONAL_STR = ("qmp_socket", "overlay")


def _check(record: PidRecord) -> None:
    """Field types as declared (json gives any type for any key): TypeError naming the field."""
    for name in ("pid", "start_time", "pgid", "owner_pid"):
        value = getattr(record, name)
        if type(value) is not int or value < 0:
            raise TypeError(f"{name} must be a non-negative integer, not {value!r}")
    if record.pid < 1 or record.pgid < 2:  # killpg(0) or (1) would reach us or everyone
        raise TypeError(f"pid {record.pid} / pgid {record.pgid} cannot name a process group")
    for name in ("vm", "method", "signal", "kind"):
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"{name} must be a string, not {getattr(record, name)!r}")

    for name in _OPTIONAL_STR:
        if getattr(record, name) is not None and not isinstance(getattr(record, name), str):
            raise TypeError(f"{name} must be a string or null, not {getattr(record, name)!r}")
    command = record.command
    if command is not None and not (
        isinstance(command, list) and all(isinstance(arg, str) for arg in command)
    ):
        raise TypeError(f"command must be a list of strings or null, not {command!r}")
    timeouts = record.timeouts
    if not isinstance(timeouts, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in timeouts.items()
    ):
        raise TypeError(f"timeouts must map names to integers, not {timeouts!r}")


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def records(directory: Path) -> list[Path]:
    """The pidfiles in `directory` ([] when it does not exist). ValueError (naming the fix)
    when it cannot be listed."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ValueError(
            f"cannot list the pidfiles in {directory} ({exc.strerror or exc}); make it a "
            f"directory frameos can read"
        ) from None
    return [directory / name for name in names if name.endswith(".pid")]
