"""What /proc says about a process: its start time, whether it is alive, its group's members.

A pid alone is not an identity: pids are reused. A process is named by (pid, start time), the
start time being field 22 of /proc/PID/stat (clock ticks since boot), so a reused pid is never
signalled. A zombie counts as gone: it has exited and only waits for a parent to reap it (an
orphan's new parent, PID 1, may never do so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GONE_STATES = frozenset("ZXx")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that identify a process and its group."""

    pid: int
    state: str
    pgid: int
    start_time: int

    @property
    def alive(self) -> bool:
        return self.state not in GONE_STATES


def read_stat(pid: int) -> ProcStat | None:
    """Parse /proc/PID/stat, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the
    # last ')'. What follows starts at field 3 (state); field 5 is pgrp, field 22 starttime.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(pid, rest[0].decode(), int(rest[2]), int(rest[19]))
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process is gone."""
    stat = read_stat(pid)
    return stat.start_time if stat is not None else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, if given, started at `started`."""
    stat = read_stat(pid)
    if stat is None or not stat.alive:
        return False
    return started is None or stat.start_time == started


def group_exists(pgid: int) -> bool:
    """True while the process group `pgid` has any member (zombies included): a kill(0) probe,
    one system call, no /proc scan."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but is not ours to signal
    return True


def reused_leader(pgid: int, leader_start: int) -> bool:
    """True when a process with pid `pgid` runs that started at another time than the group's
    recorded leader: the number was handed out again, so the group is not ours (one read)."""
    stat = read_stat(pgid)
    return stat is not None and stat.start_time != leader_start


def group_members(pgid: int) -> list[ProcStat]:
    """Live (non-zombie) processes whose process group is `pgid`; scans all of /proc (slow:
    call it off the event loop, and only when `group_exists` said yes)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = read_stat(int(name))
        if stat is not None and stat.pgid == pgid and stat.alive:
            members.append(stat)
    return members


def orphan_group(pgid: int, leader_start: int) -> list[ProcStat]:
    """The live members of a group a previous instance started, or [] when it is not ours.

    The group's leader had pid == pgid and started at `leader_start`. While any member lives,
    the kernel does not hand that pid out again; so a live process with pid == pgid and another
    start time means the group died and the number was reused: not ours.
    """
    if not group_exists(pgid) or reused_leader(pgid, leader_start):
        return []
    members = group_members(pgid)
    for member in members:
        if member.pid == pgid and member.start_time != leader_start:
            return []
    return members


def live_groups() -> dict[int, list[ProcStat]]:
    """Every live (non-zombie) process of the host by process group: one scan of /proc for any
    number of groups (slow: call it off the event loop)."""
    groups: dict[int, list[ProcStat]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None and stat.alive:
                groups.setdefault(stat.pgid, []).append(stat)
    return groups
