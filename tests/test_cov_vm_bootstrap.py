"""`bootstrap_vm` (frameos/workers/vm.py rebootstrap, through the pool) at its edges: a VM
without bootstrap steps, a second bootstrap while one runs (busy), and a VM that exits while its
bootstrap runs (the bootstrap's process killed, the operation failed saying why). Fake VMs,
real bootstrap steps (sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from frameos.workers import OperationFailed, VmBusy
from frameos.workers.pool import VmPool
from frameos.workers.testing import RecordingPublisher
from frameos.workers.vm import BootState
from tests.conftest import until
from tests.test_pool_ops import boot_vm, frame, of, polite, vm


async def test_a_vm_without_bootstrap_steps_has_nothing_to_run(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a")])
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env=dict(os.environ))
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.start_vm("a")
            before = pool.snapshot("a").bootstrap
            await pool.bootstrap_vm("a")  # succeeds: nothing to do
            assert pool.snapshot("a").bootstrap == before
            await pool.stop("test")
    assert of(pub, ev.BootstrapStarted, "a") == []


async def test_a_bootstrap_while_one_runs_is_busy_and_an_exit_fails_it(tmp_path: Path) -> None:
    marker, pidfile = tmp_path / "bootstrapped", tmp_path / "step.pid"
    # the launch's bootstrap is quick; the one asked for again hangs (until killed)
    step = f"test -e {marker} && {{ echo $$ > {pidfile}; exec sleep 600; }}; touch {marker}"
    pub = RecordingPublisher()
    config = frame(tmp_path, [boot_vm("a", ["sh", "-c", step], restart={"policy": "temporary"})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env=dict(os.environ))
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.start_vm("a")
            worker = pool.worker("a")
            assert worker.boot is BootState.OK
            failures: list[str] = []

            async def again() -> None:
                with pytest.raises(OperationFailed) as info:
                    await pool.bootstrap_vm("a")
                failures.append(str(info.value))

            work.start_soon(again)
            await until(lambda: worker.boot is BootState.RUNNING and pidfile.exists())
            with pytest.raises(VmBusy, match=r"^vm a: a bootstrap is already running; wait"):
                await pool.bootstrap_vm("a")
            step_pid = int(pidfile.read_text())
            spawner.children[0].exit(3)  # the VM crashes while its bootstrap runs
            await until(lambda: bool(failures))
            assert failures == ["vm a exited during its bootstrap"]
            await until(lambda: not os.path.exists(f"/proc/{step_pid}"))  # the step was killed
            await pool.stop("test")
    assert len(spawner.children) == 1  # temporary: not relaunched
