"""Orphans (SPEC §5): VMs a killed instance left running, found by pidfile and stopped through
the same ladder (with the settings recorded at their launch) before anything is launched anew.
A stale overlay is discarded as `orphan`; a stale QMP socket file is removed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import pydantic
import trio

from frameos import events as ev
from frameos.config import TimeoutsConfig
from frameos.workers import overlay, pidfile
from frameos.workers.child import ORPHAN_POLL_S, OrphanChild
from frameos.workers.cooperative import request_for
from frameos.workers.ladder import Ladder, Method
from frameos.workers.publisher import Publisher

ORPHAN_REASON = "orphan of a previous frameos instance"
METHODS: tuple[Method, ...] = ("qmp", "signal", "command", "none")


async def stop_orphan(vm: str, path: Path, publisher: Publisher) -> pidfile.PidRecord | None:
    """Stop what the pidfile at `path` names, if it still runs; remove the pidfile.

    Returns the record (None when there was no readable pidfile).
    """
    try:
        record = pidfile.read(path)
    except ValueError as exc:
        await publisher.publish(ev.Message(text=f"{vm}: {exc}; removed it"), "warn")
        pidfile.remove(path)
        return None
    if record is None:
        return None
    if record.alive() or record.leftovers():
        await publisher.publish(
            ev.Message(
                text=f"{vm}: pid {record.pid} was left running by a previous frameos "
                f"(pid {record.owner_pid}); stopping it through the ladder"
            ),
            "warn",
        )
        ladder = _ladder(vm, record, publisher)
        await ladder.run(ORPHAN_REASON)
        await _leftovers_gone(record, ladder.timeouts.sigkill_ms / 1000, publisher)
    pidfile.remove(path)
    return record


async def _leftovers_gone(record: pidfile.PidRecord, bound_s: float, publisher: Publisher) -> None:
    """SIGKILL lands asynchronously: before launching anew, see the old group gone (bounded)."""
    with trio.move_on_after(bound_s):
        while record.leftovers():  # noqa: ASYNC110  # not our children: /proc is all there is
            await trio.sleep(ORPHAN_POLL_S)
    if stuck := record.leftovers():
        pids = ", ".join(str(p.pid) for p in stuck)
        await publisher.publish(
            ev.Message(text=f"{record.vm}: pids {pids} of the previous instance survived SIGKILL"),
            "error",
        )


def _ladder(vm: str, record: pidfile.PidRecord, publisher: Publisher) -> Ladder:
    child = OrphanChild(record)
    try:
        timeouts = TimeoutsConfig.model_validate(record.timeouts)
    except pydantic.ValidationError:
        timeouts = TimeoutsConfig()
    method: Method = next((m for m in METHODS if m == record.method), "none")
    request = request_for(
        method,
        child,
        sig=record.signal,
        command=record.command,
        qmp_socket=Path(record.qmp_socket) if record.qmp_socket else None,
    )
    return Ladder(vm, child, method=method, request=request, timeouts=timeouts, publisher=publisher)


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
