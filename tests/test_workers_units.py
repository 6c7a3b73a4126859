"""The small parts of the workers package: /proc, pidfiles, paths and environment, overlays,
and the pool's health figures, readiness and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from frameos.config import VmConfig
from frameos.state import WorkerCounts
from frameos.workers import LaunchError, overlay, pidfile, procfs
from frameos.workers import child as child_module
from frameos.workers.child import kill_group
from frameos.workers.paths import VmPaths, child_env, substitute
from frameos.workers.pool import VmPool
from frameos.workers.testing import FakeChild, FakeSpawner, RecordingPublisher
from frameos.workers.vm import VmWorker
from tests.pool_helpers import frame


def test_proc_stat_of_self_and_of_nothing() -> None:
    stat = procfs.read_stat(os.getpid())
    assert stat is not None
    assert (stat.pid, stat.pgid, stat.alive) == (os.getpid(), os.getpgid(0), True)
    assert procfs.is_alive(os.getpid(), stat.start_time)
    assert not procfs.is_alive(os.getpid(), stat.start_time + 1)  # a reused pid
    assert procfs.read_stat(99_999_999) is None
    assert not procfs.is_alive(99_999_999)


def test_a_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while procfs.is_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    stat = procfs.read_stat(proc.pid)
    assert stat is not None
    assert stat.state == "Z"  # exited, not yet reaped
    assert not procfs.is_alive(proc.pid)
    proc.wait()


def test_orphan_group_sees_members_and_refuses_a_reused_leader() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        started = procfs.start_time(proc.pid)
        assert started is not None
        deadline = time.monotonic() + 5
        while len(procfs.group_members(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(procfs.orphan_group(proc.pid, started)) == 2
        assert procfs.orphan_group(proc.pid, started + 1) == []
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_pidfile_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.pid"
    record = pidfile.PidRecord(
        vm="a", pid=4321, start_time=2, pgid=4321, method="qmp", timeouts={"sigkill_ms": 1000}
    )
    pidfile.write(path, record)
    assert pidfile.read(path) == record
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a frameos pidfile"):
        pidfile.read(path)
    pidfile.remove(path)
    assert pidfile.read(path) is None


def test_paths_placeholders_and_socket_length(tmp_path: Path) -> None:
    vm = VmConfig(
        name="a",
        command=["q", "-drive", "file={overlay}", "-qmp", "unix:{qmp_socket},server=on"],
        base_image=tmp_path / "base.qcow2",
    )
    paths = VmPaths.of(vm, tmp_path)
    assert substitute(vm.command, paths) == [
        "q",
        "-drive",
        f"file={tmp_path}/overlays/a.qcow2",
        "-qmp",
        f"unix:{tmp_path}/vms/a.qmp,server=on",
    ]
    assert vm.cooperative_method == "qmp"
    no_base = VmPaths.of(VmConfig(name="a", command=["q", "{overlay}"]), tmp_path)
    with pytest.raises(LaunchError, match="no base_image"):
        substitute(["q", "{overlay}"], no_base)
    deep = VmPaths.of(vm, tmp_path / ("x" * 120))
    with pytest.raises(LaunchError, match="under 108 bytes"):
        deep.check_socket()


def test_child_env_drops_private_variables() -> None:
    base = {
        "PATH": "/bin",
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "3",
        "HOME": "/root",
    }
    assert child_env(base, {"A": "b"}) == {"PATH": "/bin", "HOME": "/root", "A": "b"}


async def test_overlay_errors(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="does not exist"):
        await overlay.prepare(tmp_path / "missing.qcow2", tmp_path / "o.qcow2")
    assert overlay.discard(tmp_path / "missing.qcow2") is None


# --- the pool ---------------------------------------------------------------------------------


async def test_pool_health_readiness_and_metrics(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    config = frame(
        tmp_path,
        [
            {"name": "up", "command": ["x"], "cooperative": {"method": "signal"}},
            {"name": "crashy", "command": ["x"], "restart": {"max_restarts": 0}},
        ],
    )
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, {int(signal.SIGINT): 0})
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        assert await nursery.start(pool.run) == 2
        (crashy,) = [
            child
            for child, launch in zip(spawner.children, spawner.launches, strict=True)
            if launch[1]["FRAMEOS_VM"] == "crashy"
        ]
        crashy.exit(1)  # max_restarts 0: gives up
        await trio.sleep(1)
        assert pool.counts() == WorkerCounts(total=2, running=1, failed=1)
        assert pool.not_ready_reasons() == ["vm crashy: gave up"]
        registry = CollectorRegistry()
        registry.register(pool.collector())
        text = generate_latest(registry).decode()
        assert 'frameos_vm_state{state="running",vm="up"} 1.0' in text
        assert 'frameos_vm_state{state="gave_up",vm="crashy"} 1.0' in text
        assert 'frameos_vm_restarts_total{vm="crashy"} 0.0' in text
        assert 'frameos_vm_uptime_seconds{vm="up"} 1.0' in text
        await pool.stop("test")
    assert pool.counts() == WorkerCounts(total=2, running=0, failed=0)
    assert pub.names().count("vm.shutdown_complete") == 2


async def test_pool_stops_orphans_of_vms_no_longer_configured(tmp_path: Path) -> None:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        (tmp_path / "vms").mkdir()
        started = procfs.start_time(proc.pid)
        assert started is not None
        pidfile.write(
            tmp_path / "vms" / "removed.pid",
            pidfile.PidRecord(
                vm="removed",
                pid=proc.pid,
                start_time=started,
                pgid=proc.pid,
                method="none",
                timeouts={"cooperative_ms": 0, "sigterm_ms": 2000, "sigkill_ms": 1000},
            ),
        )
        pub = RecordingPublisher()
        pool = VmPool(frame(tmp_path, []), pub)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)  # the orphans are stopped before it starts
                await pool.stop("test")
        assert not procfs.is_alive(proc.pid)
        assert pub.vm_names("removed") == [
            "vm.shutdown_requested",
            "vm.cooperative_attempted",
            "vm.cooperative_timed_out",
            "vm.shutdown_escalated",
            "vm.shutdown_complete",
        ]
        assert not (tmp_path / "vms" / "removed.pid").exists()
    finally:
        proc.kill()
        await proc.wait()


def test_stop_command_placeholders(tmp_path: Path) -> None:
    vm = VmConfig.model_validate(
        {
            "name": "a",
            "command": ["q"],
            "cooperative": {"method": "command", "command": ["stop-vm", "{qmp_socket}"]},
        }
    )
    worker = VmWorker(vm, tmp_path, RecordingPublisher(), base_env={})
    assert worker._stop_command() == ["stop-vm", f"{tmp_path}/vms/a.qmp"]


async def test_real_launch_failures_say_what_to_fix(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    vm = VmConfig.model_validate(
        {
            "name": "a",
            "command": ["true"],
            "cwd": str(tmp_path / "no"),
            "restart": {"policy": "temporary"},
        }
    )
    worker = VmWorker(vm, tmp_path, pub, base_env={})
    async with trio.open_nursery() as nursery:
        assert await nursery.start(worker.run) is None
        await worker.stop("test")
    (message,) = pub.of("message")
    assert getattr(message, "text", "") == f"a: launch 1 failed: cwd {tmp_path}/no does not exist"


def test_demo_configs_are_valid_and_children_refuse_bad_usage() -> None:
    from frameos.workers.demo import demo_config

    config = demo_config({})
    assert [vm.name for vm in config.vms] == ["demo-polite", "demo-stubborn"]
    out = subprocess.run(
        [sys.executable, "-m", "frameos.workers.demo", "bogus"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 2
    assert "usage" in out.stderr


# --- the one bounded kill; a helper that outlives it ------------------------------------------


@pytest.mark.parametrize(
    ("exits_on", "signals", "took"), [({15: 0.3}, [15], 0.3), ({}, [15, 9], 1)]
)
async def test_kill_group_with_a_sigterm_rung(
    autojump_clock: trio.testing.MockClock,
    exits_on: dict[int, float],
    signals: list[int],
    took: float,
) -> None:
    """terminate_group's SIGTERM→SIGKILL is now kill_group's optional first rung (one helper)."""
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, exits_on)
        start = trio.current_time()
        assert await kill_group(child, 1, sigterm_s=1)
        assert trio.current_time() - start == pytest.approx(took)
    assert child.signals == signals
    assert child.leftover_kills == 1


class StuckChild(FakeChild):
    """A leader whose wait returns while it still runs (what outliving SIGKILL looks like)."""

    async def wait(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_helper_that_outlives_sigkill_is_a_reported_failure(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No AssertionError (an internal fault): a LaunchError the step reports, pidfile kept."""
    async with trio.open_nursery() as nursery:
        stuck = StuckChild(nursery, unkillable=True)

        async def fake_spawn(argv: list[str], *, record: object, **_: object) -> FakeChild:
            assert callable(record)
            await record(stuck)
            return stuck

        monkeypatch.setattr(child_module, "spawn", fake_spawn)
        monkeypatch.setattr(procfs, "start_time", lambda pid: 1)
        tracking = child_module.Tracking(tmp_path / "procs", "a", "step")
        with pytest.raises(LaunchError, match="still there 2 s after SIGTERM and SIGKILL"):
            await child_module.run_captured(
                ["x"], lambda _: None, env={}, cwd=None, tracking=tracking
            )
    assert [p.name for p in pidfile.records(tmp_path / "procs")] == [f"{stuck.pid}.pid"]


GOOD = {"vm": "x", "pid": 4321, "start_time": 2, "pgid": 4321}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot be read (Is a directory)"),
        (b"\xff\xfe", "cannot be read ("),
        (b"[1, 2]", "a JSON list, not an object"),
        (b"[" * 100_000, "is not a frameos pidfile"),
        ({**GOOD, "pid": "4321"}, "pid must be a non-negative integer, not '4321'"),
        ({**GOOD, "pgid": 0}, "cannot name a process group"),
        ({**GOOD, "pid": True}, "pid must be a non-negative integer"),
        ({**GOOD, "command": "rm -rf /"}, "command must be a list of strings"),
        ({**GOOD, "timeouts": {"sigkill_ms": "5"}}, "timeouts must map names to integers"),
        ({**GOOD, "qmp_socket": 7}, "qmp_socket must be a string or null"),
        ({**GOOD, "vm": None}, "vm must be a string"),
    ],
)
@pytest.mark.parametrize("kind", ["vms", "procs"])
async def test_a_bad_pidfile_is_reported_and_skipped_never_a_crash(
    tmp_path: Path, content: bytes | dict[str, object] | None, why: str, kind: str
) -> None:
    """orphans/pidfile: every OSError, ValueError and bad field type on a *.pid is a warn
    message naming the file, and the pool starts (it used to escape pool.run's cleaning)."""
    directory = tmp_path / kind
    directory.mkdir()
    path = directory / "gone.pid"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content))
    pub = RecordingPublisher()
    pool = VmPool(frame(tmp_path, []), pub)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await pool.stop("test")
    texts = [getattr(e, "text", "") for e in pub.of("message")]
    assert any(str(path) in t and why in t for t in texts), texts
    if content is None:  # a directory cannot be unlinked: said, with the fix
        assert any(f"cannot remove {path}" in t and "by hand" in t for t in texts), texts
    else:
        assert not path.exists()


async def test_a_state_dir_entry_that_is_not_a_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "vms").write_text("not a directory")
    (tmp_path / "procs").write_text("not a directory")
    pub = RecordingPublisher()
    pool = VmPool(frame(tmp_path, []), pub)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await pool.stop("test")
    texts = [getattr(e, "text", "") for e in pub.of("message")]
    for name in ("vms", "procs"):
        assert any(f"cannot list the pidfiles in {tmp_path / name}" in t for t in texts), texts


def test_a_pidfile_with_an_unknown_method_is_still_stoppable(tmp_path: Path) -> None:
    path = tmp_path / "a.pid"
    path.write_text(json.dumps({**GOOD, "method": "telepathy"}))
    record = pidfile.read(path)
    assert record is not None and record.method == "none"
