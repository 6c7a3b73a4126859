"""Stopping by nesting (interface F), launch failures that stay one VM's failure (issue 8 #1,
#2), and tracked helper processes (issue 8 #4): fake processes on the autojump clock where time
matters, real processes and /proc where the kernel does."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import VmConfig
from frameos.workers import pidfile, procfs
from frameos.workers.bootstrap import BootstrapContext, run_bootstrap
from frameos.workers.child import Tracking
from frameos.workers.orphans import stop_helpers
from frameos.workers.paths import VmPaths, procs_dir
from frameos.workers.pool import VmPool
from frameos.workers.testing import FakeSpawner, RecordingPublisher
from frameos.workers.vm import BootState, VmState, VmWorker
from tests.pool_helpers import frame, of

SIGINT = int(signal.SIGINT)
QUICK = {"cooperative_ms": 1000, "sigterm_ms": 1000, "sigkill_ms": 1000}


def vm(name: str, **kw: object) -> dict[str, object]:
    return {"name": name, "command": ["x"], "cooperative": {"method": "signal"}, **kw}


def texts(pub: RecordingPublisher) -> list[str]:
    return [e.text for e, _ in pub.events if isinstance(e, ev.Message)]


# --- shutdown by nesting ---------------------------------------------------------------------


async def test_cancelling_the_pool_runs_every_ladder(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", timeouts=QUICK), vm("b", timeouts=QUICK)])
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer, {SIGINT: 0.3})
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await trio.sleep(1)
            work.cancel_scope.cancel(reason="test stops")
    for name in ("a", "b"):
        (requested,) = of(pub, ev.VmShutdownRequested, name)
        assert (requested.reason, requested.deadline_ms) == ("test stops", 3000)
        (done,) = of(pub, ev.VmShutdownComplete, name)
        assert (done.outcome, done.total_ms, done.changed) == ("graceful", 300, True)
        (exited,) = of(pub, ev.VmExited, name)
        assert exited.expected
    assert all(child.signals == [SIGINT] for child in spawner.children)
    assert [w.state for w in pool.workers] == [VmState.STOPPED, VmState.STOPPED]
    assert not list((tmp_path / "vms").glob("*.pid"))


async def test_a_cancelled_ladder_climbs_every_rung_within_its_budget(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer)  # honours SIGKILL only
        pool = VmPool(frame(tmp_path, [vm("a", timeouts=QUICK)]), pub, spawner=spawner)
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            work.cancel_scope.cancel()
            start = trio.current_time()
        assert trio.current_time() - start == pytest.approx(2.0)
    (done,) = of(pub, ev.VmShutdownComplete, "a")
    assert (done.outcome, done.total_ms) == ("forced", 2000)
    assert [e.signal for e in of(pub, ev.VmShutdownEscalated, "a")] == ["SIGTERM", "SIGKILL"]
    assert [e.timeout_ms for e in of(pub, ev.VmShutdownEscalated, "a")] == [1000, 1000]
    assert of(pub, ev.VmShutdownRequested, "a")[0].reason == "frameos is stopping"


async def test_force_cuts_the_ladders_short(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer)
        pool = VmPool(frame(tmp_path, [vm("a", timeouts=QUICK)]), pub, spawner=spawner)
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            outer.start_soon(pool.stop, "operator")
            await trio.sleep(0.5)
            pool.force()
            start = trio.current_time()
            await pool.stop("operator")
            assert trio.current_time() == start  # the SIGKILL landed at once
    (child,) = spawner.children
    assert child.returncode == -int(signal.SIGKILL)
    (complete,) = of(pub, ev.VmShutdownComplete, "a")  # a forced ladder still completes
    assert complete.outcome == "forced"
    assert any("interrupted during cooperative after 500 ms" in t for t in texts(pub))


def test_boot_state_transitions_are_checked(tmp_path: Path) -> None:
    worker = VmWorker(VmConfig(name="a", command=["x"]), tmp_path, RecordingPublisher())
    assert worker.boot is BootState.NONE
    with pytest.raises(RuntimeError, match="illegal bootstrap transition none → running"):
        worker.set_boot(BootState.RUNNING)
    worker.set_boot(BootState.PENDING)
    worker.set_boot(BootState.RUNNING)
    worker.set_boot(BootState.FAILED)
    worker.set_boot(BootState.PENDING)


# --- launch failures are one VM's failure ----------------------------------------------------


def bad(name: str, **update: object) -> VmConfig:
    """A VM that `check` rejects (or will): built without validation, as a loader bug might."""
    good = VmConfig.model_validate(
        {"name": name, "command": ["sleep", "600"], "restart": {"max_restarts": 0}}
    )
    return good.model_copy(update=update)


@pytest.mark.parametrize(
    ("update", "why"),
    [
        ({"env": {"A=B": "x"}}, "illegal environment variable name"),
        ({"env": {"A": "x\0y"}}, "null byte"),
        ({"command": ["sleep\0", "600"]}, "null byte"),
        ({"command": ["/nonexistent/prog"]}, "not found"),
        ({"command": ["{tmp}/data"]}, "not executable"),
        ({"command": ["{tmp}/garbage"]}, "exec format error"),
    ],
)
async def test_a_launch_error_is_that_vms_failure(
    tmp_path: Path, update: dict[str, object], why: str
) -> None:
    (tmp_path / "data").write_text("data\n")
    (tmp_path / "garbage").write_bytes(b"\x7fELF garbage")
    (tmp_path / "garbage").chmod(0o755)
    if "command" in update:
        command = update["command"]
        assert isinstance(command, list)
        update = {"command": [c.replace("{tmp}", str(tmp_path)) for c in command]}
    pub = RecordingPublisher()
    config = frame(tmp_path, [])
    config = config.model_copy(
        update={"vms": [VmConfig(name="good", command=["sleep", "600"]), bad("bad", **update)]}
    )
    pool = VmPool(config, pub)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            good, broken = pool.workers
            assert good.state is VmState.RUNNING
            assert good.child is not None and procfs.is_alive(good.child.pid)
            pid = good.child.pid
            while broken.state is not VmState.GAVE_UP:  # no event to await
                await trio.sleep(0.01)
            await pool.stop("test")
    (failure,) = [t for t in texts(pub) if t.startswith("bad: launch 1 failed")]
    assert why in failure.lower()
    assert not procfs.group_exists(pid)
    assert of(pub, ev.VmShutdownComplete, "good")[0].outcome in ("graceful", "forced")


async def test_a_pidfile_that_cannot_be_written_kills_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = pidfile.write

    def full_disk(path: Path, record: pidfile.PidRecord) -> None:
        if path.name == "a.pid":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, record)

    monkeypatch.setattr(pidfile, "write", full_disk)
    pub = RecordingPublisher()
    worker = VmWorker(bad("a"), tmp_path, pub)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(worker.run) is None
            await worker.stop("test")
    (failure,) = [t for t in texts(pub) if "launch 1 failed" in t]
    assert "No space left on device" in failure
    match = re.search(r"killed pid (\d+)", failure)
    assert match is not None
    pid = int(match.group(1))
    assert not procfs.group_exists(pid)
    assert not procfs.is_alive(pid)
    assert not (tmp_path / "vms" / "a.pid").exists()
    assert worker.state is VmState.STOPPED


# --- helper processes are tracked ------------------------------------------------------------


def boot_ctx(tmp_path: Path, pub: RecordingPublisher, command: list[str]) -> BootstrapContext:
    config = VmConfig.model_validate(
        {
            "name": "a",
            "command": ["x"],
            "bootstrap": {"steps": [{"name": "wait", "command": command, "timeout_ms": 30000}]},
        }
    )
    return BootstrapContext(config, VmPaths.of(config, tmp_path), {}, pub, 1)


async def test_a_running_step_is_recorded_until_it_ends(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    ctx = boot_ctx(tmp_path, pub, ["sleep", "30"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_bootstrap, ctx)
            while not pidfile.records(procs_dir(tmp_path)):
                await trio.sleep(0.01)
            (path,) = pidfile.records(procs_dir(tmp_path))
            record = pidfile.read(path)
            assert record is not None
            assert (record.vm, record.kind, record.pgid) == ("a", "step", record.pid)
            assert record.alive()
            nursery.cancel_scope.cancel()
    assert not record.group_alive()
    assert pidfile.records(procs_dir(tmp_path)) == []


async def test_a_step_whose_pidfile_cannot_be_written_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(path: Path, record: pidfile.PidRecord) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pidfile, "write", full_disk)
    pub = RecordingPublisher()
    with trio.fail_after(10):
        assert not await run_bootstrap(boot_ctx(tmp_path, pub, ["sleep", "30"]))
    (step,) = [e for e, _ in pub.events if isinstance(e, ev.BootstrapStep)]
    assert step.detail is not None and "No space left on device" in step.detail
    pid = int(re.findall(r"killed pid (\d+)", step.detail)[0])
    assert not procfs.group_exists(pid)


async def test_helpers_left_by_a_killed_instance_are_killed(tmp_path: Path) -> None:
    # a step that outlived its frameos: its own group, a grandchild too
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code], start_new_session=True)
    try:
        Tracking(procs_dir(tmp_path), "a", "step").write(_Pid(proc.pid))
        pub = RecordingPublisher()
        with trio.fail_after(10):
            await stop_helpers(tmp_path, pub)
            assert await proc.wait() == -signal.SIGKILL
        assert not procfs.group_exists(proc.pid)
        assert pidfile.records(procs_dir(tmp_path)) == []
        assert any("a: step pid" in t and "killing its process group" in t for t in texts(pub))
        # through the ladder (issue 8), forced: its events say so, with the 1 s budget
        assert pub.vm_names("a") == [
            "vm.shutdown_requested",
            "vm.shutdown_escalated",
            "vm.shutdown_complete",
        ]
        (requested,) = of(pub, ev.VmShutdownRequested, "a")
        assert requested.reason == f"step pid {proc.pid} of a previous frameos instance"
        assert requested.deadline_ms == 1000
        assert of(pub, ev.VmShutdownComplete, "a")[0].outcome == "forced"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class _Pid:
    def __init__(self, pid: int) -> None:
        self.pid = pid


# --- cheap recovery --------------------------------------------------------------------------


async def test_orphans_share_one_proc_scan_per_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 orphans whose parent never reaps them (the test itself: they stay zombies, so their
    groups answer the kill(0) probe): /proc is scanned a few times in all, not per orphan."""
    scans: list[int] = []
    real_scan = procfs.live_groups

    def counted() -> dict[int, list[procfs.ProcStat]]:
        scans.append(1)
        return real_scan()

    def forbidden(pgid: int) -> list[procfs.ProcStat]:
        raise AssertionError("a /proc scan per orphan")

    monkeypatch.setattr(procfs, "live_groups", counted)
    monkeypatch.setattr(procfs, "group_members", forbidden)
    (tmp_path / "vms").mkdir()
    procs = [
        await trio.lowlevel.open_process(["sleep", "60"], start_new_session=True) for _ in range(20)
    ]
    try:
        for i, proc in enumerate(procs):
            started = procfs.start_time(proc.pid)
            assert started is not None
            pidfile.write(
                tmp_path / "vms" / f"old{i}.pid",
                pidfile.PidRecord(
                    vm=f"old{i}",
                    pid=proc.pid,
                    start_time=started,
                    pgid=proc.pid,
                    method="signal",
                    timeouts={"cooperative_ms": 2000, "sigterm_ms": 1000, "sigkill_ms": 1000},
                ),
            )
        pub = RecordingPublisher()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                pool = VmPool(frame(tmp_path, []), pub)
                await nursery.start(pool.run)  # the orphans are stopped before it starts
                await pool.stop("test")
        assert all(procfs.read_stat(p.pid).state == "Z" for p in procs)  # type: ignore[union-attr]
        assert len(of(pub, ev.VmCooperativeSucceeded, "old0")) == 1
        assert len([e for e, _ in pub.events if isinstance(e, ev.VmShutdownComplete)]) == 20
        assert 1 <= len(scans) <= 10
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_a_reload_does_not_change_a_running_vms_ladder(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    launched = frame(tmp_path, [vm("a", timeouts=QUICK)])
    reloaded = frame(tmp_path, [vm("a", timeouts={**QUICK, "sigterm_ms": 9000})])
    async with trio.open_nursery() as outer:
        pool = VmPool(launched, pub, spawner=FakeSpawner(outer), base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            diff = await pool.apply(reloaded)
            assert (diff.updated, diff.changed) == (["a"], ["vms[0].timeouts.sigterm_ms"])
            await pool.stop("after a reload")
            work.cancel_scope.cancel()
    (requested,) = of(pub, ev.VmShutdownRequested, "a")
    assert requested.deadline_ms == 3000
    assert [e.timeout_ms for e in of(pub, ev.VmShutdownEscalated, "a")] == [1000, 1000]


async def test_a_ladder_begun_after_force_goes_straight_to_sigkill(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A second stop signal can arrive before the ladders begin (the work nursery is cancelled
    a moment after the first): it must not be lost."""
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", timeouts={**QUICK, "sigterm_ms": 30000})])
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer)  # honours nothing but SIGKILL
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            pool.force()  # before any ladder
            start = trio.current_time()
            work.cancel_scope.cancel()
    assert trio.current_time() - start < 1
    assert spawner.children[0].signals[0] == int(signal.SIGKILL)
    assert [e.signal for e in of(pub, ev.VmShutdownEscalated, "a")] == ["SIGKILL"]
    (complete,) = of(pub, ev.VmShutdownComplete, "a")
    assert complete.outcome == "forced"
