"""The VM pool (frameos/workers/pool.py) at its edges, with fake VMs: a stop and a start before
the pool runs, a clean of a VM without an overlay, a start while the VM is still stopping."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.workers import OperationFailed
from frameos.workers.pool import VmPool
from frameos.workers.testing import FakeSpawner, RecordingPublisher
from frameos.workers.vm import VmState
from tests.test_pool_ops import frame, of, polite, vm


async def test_a_pool_that_never_ran_stops_at_once_and_starts_nothing(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=polite(outer), base_env={})
        with pytest.raises(OperationFailed, match=r"^the VM pool is not running$"):
            await pool.start_vm("a")
        await pool.stop("test")  # nothing to stop: returns
    assert pub.events == []


async def test_clean_of_a_vm_without_an_overlay_removes_its_stamp_only(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=polite(outer), base_env={})
        worker = pool.worker("a")
        assert worker.paths.overlay is None  # a process, not a qemu VM with a base image
        worker.paths.make_dirs()
        worker.paths.stamp.write_text("stamp\n")
        await pool.clean_vm("a")
    assert not worker.paths.stamp.exists()
    progress = [e for e, _ in pub.events if isinstance(e, ev.CleanupProgress)]
    assert [(e.kind, e.path, e.skipped_reason) for e in progress] == [
        ("stamp", str(worker.paths.stamp), None)
    ]


async def test_a_start_while_the_vm_stops_waits_for_the_stop_then_launches(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        # each fake VM takes 2 s to exit after the cooperative signal
        spawner = FakeSpawner(outer, {int(signal.SIGINT): 2.0})
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=spawner, base_env=dict(os.environ))
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            worker = pool.worker("a")
            await worker.wait_until(lambda: worker.state is VmState.RUNNING)
            first = spawner.children[0]
            work.start_soon(pool.stop_vm, "a")
            await worker.wait_until(lambda: worker.state is VmState.STOPPING)
            await pool.start_vm("a")
            assert first.exited  # the stop finished first
            assert worker.state is VmState.RUNNING and worker.pid == spawner.children[1].pid
            await pool.stop("test")
    launched = of(pub, ev.VmLaunched, "a")
    assert [e.pid for e in launched] == [first.pid, spawner.children[1].pid]
    done = of(pub, ev.VmShutdownComplete, "a")
    assert len(done) == 2  # the operator's stop, then the pool's
