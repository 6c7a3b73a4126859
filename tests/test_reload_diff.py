"""Reload by diff (SPEC §5.1, R2 `VmPool.apply`): the pure diff, then a pool applying it to
fake processes on the autojump clock, then to real processes checked in /proc."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio
import trio.testing

from frameos import events as ev
from frameos.config import FrameConfig
from frameos.workers import procfs
from frameos.workers.pool import VmPool
from frameos.workers.reload import ReloadDiff, classify
from frameos.workers.testing import FakeSpawner, RecordingPublisher
from frameos.workers.vm import VmState
from tests.conftest import require_tools
from tests.pool_helpers import QUICK, frame, of, vm

SIGINT = int(signal.SIGINT)


async def environ(pid: int) -> list[bytes]:
    """The process's environment; empty for a moment right after its exec, so read again."""
    with trio.fail_after(5):
        while not (data := Path(f"/proc/{pid}/environ").read_bytes()):
            await trio.sleep(0.005)
    return data.split(b"\0")


def before_and_after(tmp_path: Path) -> tuple[FrameConfig, FrameConfig]:
    old = frame(
        tmp_path,
        [vm("keep"), vm("tune"), vm("swap", env={"MODE": "a"}), vm("gone")],
        heartbeat_interval=5,
    )
    new = frame(
        tmp_path,
        [
            vm("fresh"),
            vm("keep"),
            vm(
                "tune",
                restart={"policy": "temporary"},
                timeouts={**QUICK, "sigterm_ms": 9000},
            ),
            vm("swap", env={"MODE": "b"}),
        ],
        heartbeat_interval=7,
    )
    return old, new


def test_classify_matches_vms_by_name(tmp_path: Path) -> None:
    old, new = before_and_after(tmp_path)
    assert classify(old, new) == ReloadDiff(
        added=["fresh"],
        removed=["gone"],
        restarted=["swap"],
        updated=["tune"],
        unchanged=["keep"],
        changed=[
            "heartbeat_interval",
            "vms[0]",
            "vms[2].restart.policy",
            "vms[2].timeouts.sigterm_ms",
            "vms[3].env.MODE",
            "vms[3]",
        ],
    )
    assert classify(old, old) == ReloadDiff(unchanged=["keep", "tune", "swap", "gone"])


def test_classify_process_keys(tmp_path: Path) -> None:
    old = frame(tmp_path, [vm("a")])
    for change, kind in [
        ({"command": ["y"]}, "restarted"),
        ({"cwd": str(tmp_path)}, "restarted"),
        ({"overlay_dir": str(tmp_path)}, "restarted"),
        ({"cooperative": {"method": "none"}}, "updated"),
        ({"bootstrap": {"steps": [{"name": "s", "command": ["true"]}]}}, "updated"),
    ]:
        diff = classify(old, frame(tmp_path, [vm("a", **change)]))
        assert getattr(diff, kind) == ["a"], change


async def test_apply_by_diff(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    pub = RecordingPublisher()
    old, new = before_and_after(tmp_path)
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer, {SIGINT: 0.1})
        pool = VmPool(old, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            before = {w.name: w.child for w in pool.workers}
            first = len(pub.events)
            diff = await pool.apply(new, run_id="reload-1")
            during = [e for e, _ in pub.events[first:]]
            assert diff == ReloadDiff(
                added=["fresh"],
                removed=["gone"],
                restarted=["swap"],
                updated=["tune"],
                unchanged=["keep"],
                changed=classify(old, new).changed,
            )
            assert pool.names == ["fresh", "keep", "tune", "swap"]
            after = {w.name: w.child for w in pool.workers}
            # unchanged and updated: the same process, never signalled
            for name in ("keep", "tune"):
                child = before[name]
                assert after[name] is child and child is not None and child.signals == []
            # restarted: the old one through its ladder, a new one with the new env
            old_swap = before["swap"]
            assert old_swap is not None and old_swap.signals[0] == SIGINT and old_swap.exited
            assert after["swap"] is not old_swap and after["swap"] is not None
            swap_env = spawner.launches[-2:]
            assert {launch[1]["FRAMEOS_VM"]: launch[1].get("MODE") for launch in swap_env} == {
                "swap": "b",
                "fresh": None,
            }
            # removed: through its ladder, and forgotten
            gone = before["gone"]
            assert gone is not None and gone.exited and gone.signals[0] == SIGINT
            # updated: the new policy decides the next exit; the ladder stays the launch's
            tune = pool.worker("tune")
            assert tune.tracker.config.policy == "temporary"
            assert tune.launched_vm.timeouts.sigterm_ms == 1000
            assert tune.vm.timeouts.sigterm_ms == 9000
            child = after["tune"]
            assert child is not None
            child.exit(1)
            await tune.wait_until(lambda: tune.state is VmState.FINISHED)
            await pool.stop("test")
    assert [e.reason for e in of(pub, ev.VmShutdownRequested, "gone")] == [
        "removed from the config by a reload"
    ]
    assert len(of(pub, ev.VmLaunched, "fresh")) == 1
    assert {getattr(e, "vm", None) for e in during} == {"gone", "swap", "fresh"}
    assert all(e.run_id == "reload-1" for e in during)


async def test_an_operators_stop_holds_across_a_reload(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    old = frame(tmp_path, [vm("a", env={"MODE": "a"})])
    new = frame(tmp_path, [vm("a", env={"MODE": "b"})])
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer, {SIGINT: 0.1})
        pool = VmPool(old, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.stop_vm("a")
            diff = await pool.apply(new)
            assert (diff.restarted, diff.updated) == ([], ["a"])
            assert pool.worker("a").state is VmState.STOPPED and len(spawner.launches) == 1
            await pool.start_vm("a")  # the new settings
            assert spawner.launches[-1][1]["MODE"] == "b"
            await pool.stop("test")


async def test_a_fixed_command_relaunches_a_vm_that_gave_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    old = frame(tmp_path, [vm("a", restart={"max_restarts": 0})])
    new = frame(tmp_path, [vm("a", command=["fixed"], restart={"max_restarts": 0})])
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer, {SIGINT: 0.1}, lifetime=0.5, code=1)
        pool = VmPool(old, pub, spawner=spawner, base_env={})
        worker = pool.worker("a")
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await worker.wait_until(lambda: worker.state is VmState.GAVE_UP)
            spawner.lifetime = None
            diff = await pool.apply(new)
            assert diff.restarted == ["a"]
            assert worker.state is VmState.RUNNING
            assert [launch[0] for launch in spawner.launches] == [["x"], ["fixed"]]
            await pool.stop("test")


async def test_apply_on_real_processes(tmp_path: Path) -> None:
    require_tools("qemu-img")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    real = {"command": sleeper, "cooperative": {"method": "signal", "signal": "SIGTERM"}}
    old = frame(
        tmp_path,
        [
            vm("same", **real),
            vm("env", env={"V": "1"}, **real),
            vm("gone", base_image=str(base), **real),
        ],
    )
    new = frame(
        tmp_path,
        [
            vm("same", restart={"policy": "transient"}, **real),
            vm("env", env={"V": "2"}, **real),
            vm("new", **real),
        ],
    )
    pub = RecordingPublisher()
    pool = VmPool(old, pub)
    with trio.fail_after(20):
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            pids = {w.name: w.pid for w in pool.workers}
            overlay = pool.worker("gone").paths.overlay
            assert overlay is not None and overlay.exists()
            assert all(pid is not None and procfs.is_alive(pid) for pid in pids.values())
            diff = await pool.apply(new)
            assert (diff.updated, diff.restarted, diff.removed, diff.added) == (
                ["same"],
                ["env"],
                ["gone"],
                ["new"],
            )
            now = {w.name: w.pid for w in pool.workers}
            assert now["same"] == pids["same"]
            assert now["env"] != pids["env"] and not procfs.is_alive(pids["env"] or 0)
            assert not procfs.is_alive(pids["gone"] or 0)
            assert not overlay.exists()
            assert all(pid is not None and procfs.is_alive(pid) for pid in now.values())
            env_pid = now["env"]
            assert env_pid is not None
            assert b"V=2" in await environ(env_pid)
            work.cancel_scope.cancel()
    assert not any(procfs.is_alive(pid or 0) for pid in now.values())
    (discarded,) = of(pub, ev.VmLayerDiscarded, "gone")[-1:]
    assert discarded.reason == "shutdown"


async def test_a_canceled_reload_leaves_what_it_stopped_stopped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    old = frame(tmp_path, [vm("swap", env={"V": "1"}), vm("gone")])
    new = frame(tmp_path, [vm("swap", env={"V": "2"}), vm("added")])
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer, {SIGINT: 0.5})
        pool = VmPool(old, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            gone = pool.worker("gone")
            with trio.move_on_after(0.2) as cancelled:
                await pool.apply(new)
            assert cancelled.cancelled_caught
            assert pool.names == ["swap", "added"]  # the pool took the new config at once
            swap = pool.worker("swap")
            await swap.wait_stopped()
            await gone.wait_stopped()
            assert (swap.state, swap.operator_stopped) == (VmState.STOPPED, True)
            assert gone.state is VmState.STOPPED
            assert spawner.children[0].exited and spawner.children[1].exited
            launched = [launch[1]["FRAMEOS_VM"] for launch in spawner.launches]
            assert sorted(launched) == ["added", "gone", "swap"]  # swap was not relaunched
            await pool.start_vm("swap")  # the new settings
            assert spawner.launches[-1][1]["V"] == "2"
            await pool.stop("test")
