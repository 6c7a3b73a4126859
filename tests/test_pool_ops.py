"""Single-VM operations of the pool (R2, SPEC §5.1): start, stop, restart, bootstrap, clean and
the snapshot. Fake processes on the autojump clock where time matters (an operator's stop
outlasting the backoff), real processes and /proc where the kernel does."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.workers import OperationCanceled, OperationFailed, VmBusy, pidfile, procfs
from frameos.workers import pool as pool_module
from frameos.workers.launch import rotate_if_large
from frameos.workers.paths import procs_dir
from frameos.workers.pool import VmPool
from frameos.workers.testing import FakeChild, FakeSpawner, RecordingPublisher
from frameos.workers.vm import BootState, VmState
from tests.conftest import until
from tests.pool_helpers import frame, of, polite, vm


class GatedSpawner(FakeSpawner):
    """A spawner whose launches wait for `gate` (a launch in flight, e.g. a slow qemu-img)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__(nursery, {int(signal.SIGINT): 0.1})
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path | None,
        log: Path,
        record: Callable[[FakeChild], None],
    ) -> FakeChild:
        self.waiting.set()
        await self.gate.wait()
        return await super().__call__(argv, env, cwd, log, record)


# --- an operator's stop holds; start brings it back ------------------------------------------


async def test_an_operators_stop_holds_past_the_backoff_until_start(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", restart={"policy": "permanent", "backoff_initial_ms": 100})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            first = spawner.children[0]
            await pool.stop_vm("a")
            worker = pool.worker("a")
            assert (worker.state, worker.operator_stopped) == (VmState.STOPPED, True)
            assert first.signals[0] == int(signal.SIGINT)  # through the ladder
            await trio.sleep(600)  # far past any backoff: nothing relaunches it
            assert len(spawner.launches) == 1
            assert pool.not_ready_reasons() == []  # stopped on purpose, not a failure
            await pool.start_vm("a")
            assert (worker.state, worker.operator_stopped) == (VmState.RUNNING, False)
            second = spawner.children[1]
            assert second.pid != first.pid and worker.pid == second.pid
            assert worker.attempt == 2
            await pool.stop("test")
    assert [e.pid for e in of(pub, ev.VmLaunched, "a")] == [first.pid, second.pid]
    assert not of(pub, ev.VmRestartScheduled, "a")


async def test_a_vm_that_gave_up_starts_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", restart={"max_restarts": 1, "backoff_initial_ms": 100})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer, lifetime=0.05, code=1)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            worker = pool.worker("a")
            await worker.wait_until(lambda: worker.state is VmState.GAVE_UP)
            assert len(spawner.launches) == 2
            assert pool.snapshot("a").last_exit is not None
            spawner.lifetime = None  # fixed: the next one stays up
            await pool.start_vm("a")
            assert worker.state is VmState.RUNNING
            assert len(spawner.launches) == 3
            # the operator's start opened a new window: a crash restarts, it does not give up
            spawner.children[-1].exit(1)
            await worker.wait_until(lambda: len(spawner.launches) == 4)
            assert worker.state is VmState.RUNNING
            await pool.stop("test")
    assert len(of(pub, ev.VmGaveUp, "a")) == 1


async def test_a_finished_vm_starts_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", restart={"policy": "temporary"})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer, lifetime=1, code=0)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            worker = pool.worker("a")
            await worker.wait_until(lambda: worker.state is VmState.FINISHED)
            await pool.start_vm("a")
            assert [worker.state, len(spawner.launches)] == [VmState.RUNNING, 2]
            await pool.stop("test")


async def test_start_of_a_running_vm_changes_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.start_vm("a")
            assert len(spawner.launches) == 1
            await pool.stop("test")


# --- a stop wins over a start in flight -------------------------------------------------------


async def test_a_stop_cancels_a_start_in_flight(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = GatedSpawner(outer)
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=spawner, base_env={})
        worker = pool.worker("a")
        async with trio.open_nursery() as work:
            spawner.gate.set()
            await work.start(pool.run)
            await pool.stop_vm("a")
            spawner.gate = trio.Event()
            spawner.waiting = trio.Event()
            outcome: list[BaseException] = []

            async def start() -> None:
                try:
                    await pool.start_vm("a")
                except OperationCanceled as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as ops:
                ops.start_soon(start)
                await spawner.waiting.wait()  # the launch is in flight
                ops.start_soon(pool.stop_vm, "a")
                await trio.sleep(1)
                spawner.gate.set()  # the launch completes; the stop's ladder takes it down
            assert len(outcome) == 1 and "a stop of the VM won" in str(outcome[0])
            assert (worker.state, worker.operator_stopped) == (VmState.STOPPED, True)
            assert spawner.children[-1].exited
            assert spawner.children[-1].signals[0] == int(signal.SIGINT)  # its ladder
            await pool.stop("test")


async def test_a_cancelled_launch_leaves_the_vm_stopped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = GatedSpawner(outer)
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=spawner, base_env={})
        worker = pool.worker("a")
        async with trio.open_nursery() as work:
            spawner.gate.set()
            await work.start(pool.run)
            await pool.stop_vm("a")
            spawner.gate = trio.Event()
            cancelled = False
            scope = trio.CancelScope()

            async def cancel_the_start() -> None:
                await spawner.waiting.wait()  # the launch is in flight
                outer.start_soon(_open_later, spawner.gate)
                scope.cancel(reason="run 2 (stop) won")  # the caller's own (the runs service's)

            outer.start_soon(cancel_the_start)
            with scope:
                try:
                    await pool.start_vm("a")
                except trio.Cancelled:
                    cancelled = True
                    raise
            assert cancelled and scope.cancelled_caught
            assert (worker.state, worker.operator_stopped) == (VmState.STOPPED, True)
            assert len(spawner.children) == 1  # the canceled launch left no process
            assert not worker.paths.pidfile.exists()
            await pool.stop("test")
    assert [e.reason for e in of(pub, ev.VmShutdownRequested, "a")] == [
        "operator",
        "run 2 (stop) won",
    ]


async def _open_later(gate: trio.Event) -> None:
    await trio.sleep(0.5)
    gate.set()


# --- restart, bootstrap, clean -----------------------------------------------------------------


async def test_restart_runs_the_ladder_then_launches(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(frame(tmp_path, [vm("a")]), pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.restart_vm("a")
            assert len(spawner.children) == 2
            assert spawner.children[0].exited and not spawner.children[1].exited
            assert pool.worker("a").state is VmState.RUNNING
            await pool.stop("test")
    names = pub.vm_names("a")
    first_launch = names.index("vm.launched")
    second_launch = names.index("vm.launched", first_launch + 1)
    assert "vm.shutdown_complete" in names[first_launch:second_launch]


async def test_a_failed_launch_fails_the_start(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", command=["/nonexistent/qemu"])])
    pool = VmPool(config, pub, base_env={})
    async with trio.open_nursery() as work:
        await work.start(pool.run)
        with pytest.raises(OperationFailed, match="launch failed: command '/nonexistent/qemu'"):
            await pool.restart_vm("a")
        await pool.stop("test")


def boot_vm(name: str, step: list[str], **kw: object) -> dict[str, object]:
    return vm(
        name,
        bootstrap={"steps": [{"name": "setup", "command": step, "timeout_ms": 20000}]},
        **kw,
    )


async def test_bootstrap_runs_again_whatever_its_stamp(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [boot_vm("a", ["sh", "-c", "echo set up"])])
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env=dict(os.environ))
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.start_vm("a")  # waits for the launch's bootstrap
            assert pool.worker("a").boot is BootState.OK
            await pool.bootstrap_vm("a")  # the stamp matches: run anyway
            snapshot = pool.snapshot("a")
            assert snapshot.bootstrap.status == "ok"
            assert [(s.name, s.status) for s in snapshot.bootstrap.steps] == [("setup", "success")]
            await pool.stop_vm("a")
            with pytest.raises(OperationFailed, match="is stopped, not running: start it first"):
                await pool.bootstrap_vm("a")
            await pool.stop("test")
    completed = of(pub, ev.BootstrapCompleted, "a")
    assert [e.status for e in completed] == ["success", "success"]


async def test_a_failed_bootstrap_fails_the_operation(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [boot_vm("a", ["sh", "-c", "echo broken; exit 3"])])
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env=dict(os.environ))
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            with pytest.raises(OperationFailed, match="bootstrap failed: step 'setup' failed"):
                await pool.start_vm("a")
            with pytest.raises(OperationFailed, match="exited with status 3"):
                await pool.bootstrap_vm("a")
            snapshot = pool.snapshot("a")
            assert snapshot.bootstrap.status == "failed"
            assert snapshot.bootstrap.steps[0].status == "failed"
            await pool.stop("test")


async def test_clean_removes_overlay_and_stamp_only_while_stopped(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"")
    config = frame(tmp_path, [vm("a", base_image=str(base))])
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env={})
        worker = pool.worker("a")
        overlay, stamp = worker.paths.overlay, worker.paths.stamp
        assert overlay is not None
        worker.paths.make_dirs()
        overlay.write_bytes(b"x" * 10_000)
        await pool.clean_vm("a")  # never started: stopped
        assert not overlay.exists() and not stamp.exists()
        progress = [e for e, _ in pub.events if isinstance(e, ev.CleanupProgress)]
        assert [(e.kind, e.skipped_reason) for e in progress] == [
            ("overlay", None),
            ("stamp", "not there"),
        ]
        assert progress[0].bytes >= 10_000 and progress[0].path == str(overlay)
        worker.state = VmState.RUNNING  # as if it ran
        with pytest.raises(VmBusy, match="clean works only on a stopped VM"):
            await pool.clean_vm("a")


# --- the snapshot and the run id ---------------------------------------------------------------


async def test_snapshot(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    pub = RecordingPublisher()
    config = frame(
        tmp_path, [vm("a", env={"API_KEY": "s3cr3t-k", "db_password": "s3cr3t-p", "MODE": "fast"})]
    )
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        assert pool.names == ["a"]
        with pytest.raises(KeyError):
            pool.worker("nope")
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await trio.sleep(2)
            running = pool.snapshot("a")
            assert running.state == "running" and running.pid == spawner.children[0].pid
            assert running.uptime_s == 2.0 and running.attempt == 1 and running.last_exit is None
            assert running.config["env"] == {"API_KEY": "***", "db_password": "***", "MODE": "fast"}
            assert running.output_log == str(tmp_path / "vms" / "a.log")
            await pool.stop_vm("a")
            stopped = pool.snapshot("a")
            assert (stopped.state, stopped.pid, stopped.operator_stopped) == ("stopped", None, True)
            assert stopped.last_exit is not None and stopped.last_exit.exit_code == 0
            await pool.stop("test")
    assert "s3cr3t" not in running.model_dump_json()


@pytest.mark.skipif(
    "run_id" not in ev.Event.model_fields, reason="Event.run_id lands with the runs service"
)
async def test_every_event_of_an_operation_carries_its_run_id(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(frame(tmp_path, [vm("a"), vm("b")]), pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            before = len(pub.events)
            await pool.stop_vm("a", run_id="run-stop")
            stopped = pub.events[before:]
            before = len(pub.events)
            await pool.start_vm("a", run_id="run-start")
            started = pub.events[before:]
            await pool.stop("test")
    assert stopped and {getattr(e, "run_id", None) for e, _ in stopped} == {"run-stop"}
    assert started and {getattr(e, "run_id", None) for e, _ in started} == {"run-start"}
    assert all(getattr(e, "run_id", None) is None for e in of(pub, ev.VmLaunched, "b"))


# --- real processes ----------------------------------------------------------------------------


def alive(pid: int | None) -> bool:
    return pid is not None and procfs.is_alive(pid)


async def test_real_stop_holds_and_start_brings_it_back(tmp_path: Path) -> None:
    config = frame(
        tmp_path,
        [
            vm(
                "real",
                command=[sys.executable, "-c", "import time; time.sleep(600)"],
                cooperative={"method": "signal", "signal": "SIGTERM"},
                restart={"policy": "permanent", "backoff_initial_ms": 100},
            )
        ],
    )
    pool = VmPool(config, RecordingPublisher())
    worker = pool.worker("real")
    with trio.fail_after(20):
        async with trio.open_nursery() as work:
            first = await work.start(pool.run)
            assert isinstance(first, int) and worker.pid is not None and alive(worker.pid)
            old = worker.pid
            await pool.stop_vm("real")
            assert not alive(old) and worker.state is VmState.STOPPED
            await pool.start_vm("real")
            assert worker.pid is not None and worker.pid != old and alive(worker.pid)
            new = worker.pid
            await pool.restart_vm("real")
            assert not alive(new) and alive(worker.pid)
            last = worker.pid
            work.cancel_scope.cancel()
    assert not alive(last)
    assert not worker.paths.pidfile.exists()


async def test_real_stop_during_a_bootstrap_kills_the_step_and_the_vm(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    step = ["sh", "-c", f"touch {armed}; exec sleep 600"]
    config = frame(
        tmp_path,
        [
            boot_vm(
                "real",
                step,
                command=[sys.executable, "-c", "import time; time.sleep(600)"],
                cooperative={"method": "signal", "signal": "SIGTERM"},
            )
        ],
    )
    pool = VmPool(config, RecordingPublisher())
    worker = pool.worker("real")
    outcome: list[BaseException] = []

    async def start() -> None:
        try:
            await pool.start_vm("real")
        except OperationCanceled as exc:
            outcome.append(exc)

    with trio.fail_after(20):
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.stop_vm("real")
            async with trio.open_nursery() as ops:
                ops.start_soon(start)
                await worker.wait_until(lambda: worker.boot is BootState.RUNNING)
                await until(lambda: armed.exists() and bool(pidfile.records(procs_dir(tmp_path))))
                (record,) = [pidfile.read(p) for p in pidfile.records(procs_dir(tmp_path))]
                assert record is not None and alive(record.pid)
                vm_pid = worker.pid
                await pool.stop_vm("real")
            assert len(outcome) == 1
            assert not alive(vm_pid) and not alive(record.pid)
            assert worker.state is VmState.STOPPED and worker.operator_stopped
            assert pidfile.records(procs_dir(tmp_path)) == []
            work.cancel_scope.cancel()


def test_rotate_if_large_copies_then_truncates(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"old\n" * 100)
        assert not rotate_if_large(log, limit=400)  # at the bound: kept
        os.write(fd, b"x")
        assert rotate_if_large(log, limit=400)
        assert (tmp_path / "a.log.1").read_bytes() == b"old\n" * 100 + b"x"
        os.write(fd, b"new\n")  # the writer's open descriptor goes on at the new end
        assert log.read_bytes() == b"new\n"
    finally:
        os.close(fd)
    assert not rotate_if_large(tmp_path / "missing.log")


async def test_a_running_vms_output_is_rotated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "LOG_MAX_BYTES", 100_000)
    monkeypatch.setattr(pool_module, "LOG_CHECK_S", 0.01)
    chatty = (
        "import sys, time; sys.stdout.write('x' * 200_000); sys.stdout.flush(); time.sleep(600)"
    )
    config = frame(
        tmp_path,
        [vm("chatty", command=[sys.executable, "-c", chatty], cooperative={"method": "none"})],
    )
    pool = VmPool(config, RecordingPublisher())
    log = Path(pool.snapshot("chatty").output_log)
    assert log == tmp_path / "vms" / "chatty.log"
    with trio.fail_after(20):
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            rotated = log.with_name("chatty.log.1")
            # the rotation (a worker thread) copies, then truncates: wait for both
            await until(
                lambda: (
                    rotated.exists()
                    and rotated.stat().st_size == 200_000
                    and log.stat().st_size == 0
                )
            )
            work.cancel_scope.cancel()


async def test_real_cancelled_start_during_its_bootstrap_stops_the_vm(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    config = frame(
        tmp_path,
        [
            boot_vm(
                "real",
                ["sh", "-c", f"touch {armed}; exec sleep 600"],
                command=[sys.executable, "-c", "import time; time.sleep(600)"],
                cooperative={"method": "signal", "signal": "SIGTERM"},
            )
        ],
    )
    pub = RecordingPublisher()
    pool = VmPool(config, pub)
    worker = pool.worker("real")
    with trio.fail_after(20):
        async with trio.open_nursery() as work:
            await work.start(pool.run)  # its first bootstrap hangs: the start_vm below waits
            scope = trio.CancelScope()
            seen: list[int] = []

            async def cancel_during_the_bootstrap() -> None:
                await until(lambda: armed.exists() and bool(pidfile.records(procs_dir(tmp_path))))
                (record,) = [pidfile.read(p) for p in pidfile.records(procs_dir(tmp_path))]
                assert record is not None and worker.pid is not None
                seen.extend([worker.pid, record.pid])
                scope.cancel(reason="run 2 (stop) won")

            work.start_soon(cancel_during_the_bootstrap)
            with scope:
                await pool.start_vm("real")
            assert scope.cancelled_caught and len(seen) == 2
            assert not any(alive(pid) for pid in seen)  # the VM and its bootstrap step
            assert (worker.state, worker.operator_stopped) == (VmState.STOPPED, True)
            assert pidfile.records(procs_dir(tmp_path)) == []
            work.cancel_scope.cancel()
    (requested,) = of(pub, ev.VmShutdownRequested, "real")
    assert requested.reason == "the start was canceled: run 2 (stop) won"


async def test_the_supervisors_cancellation_is_the_pools_one_stop_path(tmp_path: Path) -> None:
    """The supervisor stops the pool by cancelling its work nursery (it never called `stop`):
    from then on no operation starts a VM (`_closed` used to be set only by `stop`)."""
    pub = RecordingPublisher()
    failures: list[str] = []
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(frame(tmp_path, [vm("a"), vm("b")]), pub, spawner=spawner, base_env={})

        async def start_b_while_stopping() -> None:
            await trio.testing.wait_all_tasks_blocked()  # a's ladder waits on its exit
            assert pool.worker("a").state is VmState.STOPPING
            try:
                await pool.start_vm("b")
            except OperationFailed as exc:
                failures.append(str(exc))

        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.stop_vm("b")
            outer.start_soon(start_b_while_stopping)
            work.cancel_scope.cancel()  # the supervisor's way
    assert failures == ["frameos is stopping: no VM is started now"]
    assert len(spawner.children) == 2  # a and b's first launch; no relaunch of b
    assert pool.worker("b").state is VmState.STOPPED
    assert [e.outcome for e in of(pub, ev.VmShutdownComplete, "a")] == ["graceful"]
