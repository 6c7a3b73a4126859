"""Orphans (SPEC §5): what a killed instance left running, found by pidfile and stopped before
anything is launched anew. VMs go through the same ladder, with the settings recorded at their
launch; bootstrap steps and stop commands (`state_dir/procs/`) go through it forced (its
SIGKILL rung, 1 s, with its events under the VM's name). A stale overlay is discarded as
`orphan`; a stale QMP socket file is removed.

Cheap at scale: whether an orphan still runs is one read of its leader's /proc entry and one
kill(0) probe of its group. Only a group that answers the probe after its leader is gone (its
other members, or zombies a parent does not reap) needs /proc scanned: `ProcScan` does that in
a thread, once per polling round for all the orphans that ask.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import pydantic
import trio

from frameos import events as ev
from frameos.config import TimeoutsConfig
from frameos.workers import overlay, pidfile, procfs
from frameos.workers.child import (
    ORPHAN_POLL_MAX_S,
    ORPHAN_POLL_S,
    OrphanChild,
    Tracking,
)
from frameos.workers.cooperative import request_for
from frameos.workers.ladder import Ladder
from frameos.workers.paths import procs_dir
from frameos.workers.publisher import Publisher

ORPHAN_REASON = "orphan of a previous frameos instance"
# A leftover bootstrap step or stop command: the ladder's SIGKILL rung, bounded by 1 s.
HELPER_TIMEOUTS = TimeoutsConfig(sigkill_ms=1_000)


class ProcScan:
    """One /proc scan per round, shared by every task that asks while it runs."""

    def __init__(self) -> None:
        self._round: trio.Event | None = None
        self._groups: dict[int, list[procfs.ProcStat]] = {}

    async def live_groups(self) -> dict[int, list[procfs.ProcStat]]:
        """The live processes by group, from a scan begun at or after this call. The scan runs
        in a thread and is not abandoned on cancellation (it takes milliseconds)."""
        if self._round is not None:
            await self._round.wait()
            return self._groups
        self._round = done = trio.Event()
        try:
            self._groups = await trio.to_thread.run_sync(procfs.live_groups)
        finally:
            self._round = None
            done.set()
        return self._groups


SCAN = ProcScan()


async def live_members(record: pidfile.PidRecord) -> list[procfs.ProcStat]:
    """The live processes of the recorded group: [] at once when the probe finds no group."""
    if not record.group_alive():
        return []
    if record.alive():
        return [procfs.ProcStat(record.pid, "R", record.pgid, record.start_time)]
    return (await SCAN.live_groups()).get(record.pgid, [])


async def stop_orphan(vm: str, path: Path, publisher: Publisher) -> pidfile.PidRecord | None:
    """Stop what the pidfile at `path` names, if it still runs; remove the pidfile.

    Returns the record (None when there was no readable pidfile).
    """
    record = await _read(path, publisher, vm)
    if record is None:
        return None
    if await live_members(record):
        await publisher.publish(
            ev.Message(
                text=f"{vm}: pid {record.pid} was left running by a previous frameos "
                f"(pid {record.owner_pid}); stopping it through the ladder"
            ),
            "warn",
        )
        ladder = _ladder(vm, record, publisher, procs_dir(path.parent.parent))
        await ladder.run(ORPHAN_REASON)
        await _leftovers_gone(record, ladder.timeouts.sigkill_ms / 1000, publisher)
    await _forget(path, publisher, vm)
    return record


async def _read(
    path: Path, publisher: Publisher, vm: str | None = None
) -> pidfile.PidRecord | None:
    """The record at `path`, or None: absent, or not a record. Never an exception: a bad file
    is reported (a warn `message` naming it and the fix) and removed when it can be."""
    try:
        return pidfile.read(path)
    except ValueError as exc:
        prefix = f"{vm}: " if vm else ""
        text = f"{prefix}{exc}; removing it: check by hand that no process it named still runs"
        await publisher.publish(ev.Message(text=text), "warn")
        await _forget(path, publisher, vm)
    return None


async def _forget(path: Path, publisher: Publisher, vm: str | None = None) -> bool:
    """Remove the pidfile; a warn `message` when it cannot be (False)."""
    try:
        pidfile.remove(path)
    except OSError as exc:  # a directory named *.pid, a read-only state_dir, ...
        prefix = f"{vm}: " if vm else ""
        text = f"{prefix}cannot remove {path} ({exc.strerror or exc}); remove it by hand"
        await publisher.publish(ev.Message(text=text), "warn")
        return False
    return True


async def _leftovers_gone(record: pidfile.PidRecord, bound_s: float, publisher: Publisher) -> None:
    """SIGKILL lands asynchronously: before launching anew, see the old group gone (bounded)."""
    pause = ORPHAN_POLL_S
    with trio.move_on_after(bound_s):
        while await live_members(record):
            await trio.sleep(pause)
            pause = min(pause * 2, ORPHAN_POLL_MAX_S)
    if stuck := await live_members(record):
        pids = ", ".join(str(p.pid) for p in stuck)
        await publisher.publish(
            ev.Message(text=f"{record.vm}: pids {pids} of the previous instance survived SIGKILL"),
            "error",
        )


def _ladder(vm: str, record: pidfile.PidRecord, publisher: Publisher, procs: Path) -> Ladder:
    child = OrphanChild(record)
    try:
        timeouts = TimeoutsConfig.model_validate(record.timeouts)
    except pydantic.ValidationError:
        timeouts = TimeoutsConfig()
    request = request_for(
        record.method,
        child,
        sig=record.signal,
        command=record.command,
        qmp_socket=Path(record.qmp_socket) if record.qmp_socket else None,
        tracking=Tracking(procs, vm, "command"),
    )
    return Ladder(
        vm, child, method=record.method, request=request, timeouts=timeouts, publisher=publisher
    )


async def discard_overlay(
    vm: str, path: Path | None, reason: Literal["shutdown", "orphan"], publisher: Publisher
) -> None:
    """Remove an overlay and publish `vm.layer_discarded` (nothing when it is not there)."""
    if path is None:
        return
    reclaimed = overlay.discard(path)
    if reclaimed is not None:
        await publisher.publish(
            ev.VmLayerDiscarded(
                vm=vm, overlay_path=str(path), reclaimed_bytes=reclaimed, reason=reason
            )
        )


def remove_stale_socket(path: Path) -> None:
    """A socket file left behind would make QEMU's bind fail."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        if path.is_socket():
            path.unlink()


async def clean_up_after(
    vm: str, path: Path, overlay_path: Path | None, publisher: Publisher
) -> None:
    """Everything a previous instance may have left of one VM: process, overlay, socket."""
    record = await stop_orphan(vm, path, publisher)
    if record is not None and record.overlay and Path(record.overlay) != overlay_path:
        await discard_overlay(vm, Path(record.overlay), "orphan", publisher)
    await discard_overlay(vm, overlay_path, "orphan", publisher)
    if record is not None and record.qmp_socket:
        remove_stale_socket(Path(record.qmp_socket))


async def stop_helpers(state_dir: Path, publisher: Publisher) -> None:
    """Stop the bootstrap steps and stop commands a killed instance left running (a forced
    ladder each, all at once), and forget their pidfiles. Call before anything is launched."""
    try:
        paths = pidfile.records(procs_dir(state_dir))
    except ValueError as exc:
        await publisher.publish(ev.Message(text=str(exc)), "warn")
        return
    if paths:
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(_stop_helper, path, publisher)


async def _stop_helper(path: Path, publisher: Publisher) -> None:
    record = await _read(path, publisher)
    if record is not None and await live_members(record):
        await publisher.publish(
            ev.Message(
                text=f"{record.vm}: {record.kind} pid {record.pid} was left running by a previous "
                f"frameos (pid {record.owner_pid}); killing its process group (forced ladder)"
            ),
            "warn",
        )
        child = OrphanChild(record)
        ladder = Ladder(
            record.vm,
            child,
            method="none",
            request=request_for("none", child),
            timeouts=HELPER_TIMEOUTS,
            publisher=publisher,
            forced=True,  # a helper has no way to be asked, and nothing to save
        )
        await ladder.run(f"{record.kind} pid {record.pid} of a previous frameos instance")
        await _leftovers_gone(record, HELPER_TIMEOUTS.sigkill_ms / 1000, publisher)
    if record is not None:
        await _forget(path, publisher, record.vm)
