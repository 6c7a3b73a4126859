"""Restart policy, backoff, windows and give-up: the pure tracker, then a VmWorker driven by fake
processes on trio's autojump clock."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import CooperativeConfig, RestartConfig, TimeoutsConfig, VmConfig
from frameos.workers.restart import RestartTracker, Verdict
from frameos.workers.testing import FakeSpawner, RecordingPublisher
from frameos.workers.vm import VmState, VmWorker

SIGINT = int(signal.SIGINT)


def restart(**kw: object) -> RestartConfig:
    return RestartConfig.model_validate(kw)


# --- the tracker ----------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_then_gives_up() -> None:
    tracker = RestartTracker(
        restart(backoff_initial_ms=100, backoff_max_ms=500, max_restarts=5, window_s=60)
    )
    decisions = [tracker.on_exit(float(t), 0.1, True) for t in range(6)]
    assert [d.backoff_ms for d in decisions[:5]] == [100, 200, 400, 500, 500]
    assert [d.verdict for d in decisions] == [Verdict.RESTART] * 5 + [Verdict.GIVE_UP]
    assert decisions[5].restarts_in_window == 5
    assert tracker.restarts == 5


def test_restarts_outside_the_window_do_not_count() -> None:
    tracker = RestartTracker(restart(max_restarts=2, window_s=10, backoff_initial_ms=0))
    assert tracker.on_exit(0, 1, True).verdict is Verdict.RESTART
    assert tracker.on_exit(5, 1, True).verdict is Verdict.RESTART
    assert tracker.on_exit(9, 1, True).verdict is Verdict.GIVE_UP
    assert tracker.on_exit(10.5, 1, True).verdict is Verdict.RESTART  # t=0 left the window


def test_long_run_resets_the_backoff() -> None:
    tracker = RestartTracker(restart(backoff_initial_ms=100, backoff_max_ms=1000, window_s=5))
    assert [tracker.on_exit(t, 1, True).backoff_ms for t in (0, 1, 2)] == [100, 200, 400]
    assert tracker.on_exit(10, 6, True).backoff_ms == 100  # ran 6 s > window_s


def test_max_restarts_zero_gives_up_at_once() -> None:
    tracker = RestartTracker(restart(max_restarts=0))
    decision = tracker.on_exit(0, 1, True)
    assert (decision.verdict, decision.restarts_in_window) == (Verdict.GIVE_UP, 0)


@pytest.mark.parametrize(
    ("policy", "abnormal", "verdict"),
    [
        ("permanent", False, Verdict.RESTART),
        ("permanent", True, Verdict.RESTART),
        ("transient", False, Verdict.DONE),
        ("transient", True, Verdict.RESTART),
        ("temporary", False, Verdict.DONE),
        ("temporary", True, Verdict.DONE),
    ],
)
def test_policies(policy: str, abnormal: bool, verdict: Verdict) -> None:
    assert RestartTracker(restart(policy=policy)).on_exit(0, 1, abnormal).verdict is verdict


# --- a worker on fake processes -------------------------------------------------------------


def vm_config(**restart_kw: object) -> VmConfig:
    return VmConfig(
        name="a",
        command=["prog", "--flag"],
        cooperative=CooperativeConfig(method="signal"),
        timeouts=TimeoutsConfig(cooperative_ms=1000, sigterm_ms=1000, sigkill_ms=1000),
        restart=restart(**restart_kw),
        env={"EXTRA": "1"},
    )


async def test_crash_loop_exact_backoff_then_gave_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    exhausted: list[str] = []
    vm = vm_config(
        backoff_initial_ms=100, backoff_max_ms=400, max_restarts=4, window_s=60, on_exhausted="exit"
    )
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, lifetime=0.05, code=1)
        worker = VmWorker(
            vm, tmp_path, pub, spawner=spawner, base_env={}, on_exhausted=exhausted.append
        )
        assert await nursery.start(worker.run) == spawner.children[0].pid
        await trio.sleep(5)
        assert worker.state is VmState.GAVE_UP
        assert worker.not_ready_reasons() == ["vm a: gave up"]
        await worker.stop("test")
    scheduled = [
        e.backoff_ms for e in pub.of("vm.restart_scheduled") if isinstance(e, ev.VmRestartScheduled)
    ]
    assert scheduled == [100, 200, 400, 400]
    starts = [launch[3] for launch in spawner.launches]
    gaps = [round(b - a - 0.05, 6) for a, b in itertools.pairwise(starts)]
    assert gaps == [0.1, 0.2, 0.4, 0.4]  # relaunched the instant the backoff ends
    (gave_up,) = pub.of("vm.gave_up")
    assert isinstance(gave_up, ev.VmGaveUp)
    assert (gave_up.restarts, gave_up.window_s) == (4, 60)
    assert exhausted == ["vm a gave up after 4 restarts in 60 s"]
    assert worker.restarts == 4
    assert worker.state.value == "stopped"
    launched = [e.attempt for e in pub.of("vm.launched") if isinstance(e, ev.VmLaunched)]
    assert launched == [1, 2, 3, 4, 5]
    assert not (tmp_path / "vms" / "a.pid").exists()


async def test_environment_is_clean(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    pub = RecordingPublisher()
    base = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2"}
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, {SIGINT: 0})
        worker = VmWorker(vm_config(), tmp_path, pub, spawner=spawner, base_env=base)
        await nursery.start(worker.run)
        await worker.stop("test")
    argv, env, _cwd, _t = spawner.launches[0]
    assert argv == ["prog", "--flag"]
    # frameos's own NOTIFY_SOCKET and WATCHDOG_* are gone; the VM gets its own socket
    notify = str(tmp_path / "vms" / "a.notify")
    assert env == {
        "PATH": "/bin",
        "EXTRA": "1",
        "FRAMEOS_VM": "a",
        "FRAMEOS_VM_ATTEMPT": "1",
        "NOTIFY_SOCKET": notify,
    }


async def test_stop_while_running_runs_the_ladder(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, {SIGINT: 0.2})
        worker = VmWorker(vm_config(), tmp_path, pub, spawner=spawner, base_env={})
        await nursery.start(worker.run)
        assert (tmp_path / "vms" / "a.pid").exists()
        assert worker.not_ready_reasons() == []
        await trio.sleep(1)
        await worker.stop("because")
    assert pub.vm_names("a") == [
        "vm.launched",
        "vm.ready",
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_succeeded",
        "vm.shutdown_complete",
        "vm.exited",
    ]
    (exited,) = pub.of("vm.exited")
    assert isinstance(exited, ev.VmExited)
    assert exited.expected
    assert exited.uptime_ms == 1200
    assert len(spawner.children) == 1


async def test_stop_during_backoff_cancels_the_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, lifetime=0.1)
        worker = VmWorker(
            vm_config(backoff_initial_ms=10_000), tmp_path, pub, spawner=spawner, base_env={}
        )
        await nursery.start(worker.run)
        await trio.sleep(1)
        assert worker.state is VmState.BACKOFF
        assert worker.not_ready_reasons() == ["vm a: not running"]
        before = trio.current_time()
        await worker.stop("test")
        assert trio.current_time() == before
    assert len(spawner.launches) == 1
    (done,) = pub.of("vm.shutdown_complete")
    assert isinstance(done, ev.VmShutdownComplete)
    assert (done.changed, done.outcome, done.total_ms) == (False, "graceful", 0)


@pytest.mark.parametrize(
    ("policy", "code", "state", "failed"),
    [
        ("transient", 0, VmState.FINISHED, False),
        ("transient", 1, VmState.BACKOFF, False),
        ("temporary", 1, VmState.FINISHED, True),
    ],
)
async def test_policy_on_a_worker(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    policy: str,
    code: int,
    state: VmState,
    failed: bool,
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, lifetime=0.1, code=code)
        worker = VmWorker(
            vm_config(policy=policy, backoff_initial_ms=5000),
            tmp_path,
            pub,
            spawner=spawner,
            base_env={},
        )
        await nursery.start(worker.run)
        await trio.sleep(1)
        assert worker.state is state
        assert (worker.state is VmState.FINISHED and worker.last_abnormal) == failed
        assert worker.not_ready_reasons() == []  # only permanent VMs hold readiness
        await worker.stop("test")


async def test_failed_launch_is_reported_and_counts_as_a_crash(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, fail_with=FileNotFoundError(2, "No such file", "prog"))
        worker = VmWorker(
            vm_config(max_restarts=1, backoff_initial_ms=50),
            tmp_path,
            pub,
            spawner=spawner,
            base_env={},
        )
        assert await nursery.start(worker.run) is None
        await trio.sleep(1)
        assert worker.state is VmState.GAVE_UP
        await worker.stop("test")
    texts = [getattr(e, "text", "") for e in pub.of("message")]
    assert texts == [
        "a: launch 1 failed: command 'prog' not found; check the VM's command (argv[0])",
        "a: launch 2 failed: command 'prog' not found; check the VM's command (argv[0])",
    ]
    assert pub.names().count("vm.restart_scheduled") == 1


async def test_stop_before_run(tmp_path: Path) -> None:
    pub = RecordingPublisher()
    worker = VmWorker(vm_config(), tmp_path, pub, base_env={})
    await worker.stop("early")
    assert worker.state is VmState.STOPPED
    assert pub.names() == ["vm.shutdown_requested", "vm.shutdown_complete"]
    async with trio.open_nursery() as nursery:
        assert await nursery.start(worker.run) is None  # nothing left to do


def test_illegal_transition_raises(tmp_path: Path) -> None:
    worker = VmWorker(vm_config(), tmp_path, RecordingPublisher(), base_env={})
    with pytest.raises(RuntimeError, match="illegal transition idle → running"):
        worker.set_state(VmState.RUNNING)
