"""The supervisor in-process, on trio's mock clock, with fake VM children: the order of start
and stop, the second signal, reloads (applied, refused, too slow, cut short by a stop) and an
internal fault. Real signals are raised in this process; the real process is in
tests/test_signals.py and tests/test_e2e_run.py."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import frameos.server.app
import frameos.server.frontdoor
import frameos.server.metrics
import frameos.server.wsfast  # imported here: start-up does not wait on the HTTP stack
from frameos import events as ev
from frameos import supervisor as sup
from frameos.bus import Bus
from frameos.config import FrameConfig, event_log_path, load_config
from frameos.envelope import Envelope
from frameos.eventlog import EventLog
from frameos.state import Phase
from frameos.workers.testing import FakeSpawner

SIGTERM, SIGINT = int(signal.SIGTERM), int(signal.SIGINT)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Autojump, but only after 0.5 s of real idleness: a worker thread (a config read, a
    sink write) or a real socket is real work the virtual clock must not race past."""
    return trio.testing.MockClock(autojump_threshold=0.5)


@pytest.fixture(autouse=True)
def _no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "frame_port": 0,
        "state_dir": str(tmp_path / "state"),
        "heartbeat_interval": 60,
        "metrics_interval": 60,
        "event_log": {"fsync": "never"},
        **overrides,
    }
    path = tmp_path / "frame.json"
    path.write_text(json.dumps(data))
    return path


def fake_vm(name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["fake"],
        "cooperative": {"method": "none"},
        "timeouts": {"cooperative_ms": 0, "sigterm_ms": 5000, "sigkill_ms": 1000},
        **overrides,
    }


class Recorder:
    """A bus subscription keeping every envelope (it ends when the bus drains)."""

    def __init__(self, bus: Bus) -> None:
        self.subscription = bus.subscribe("test", 4096)
        self.envelopes: list[Envelope] = []
        self._lot = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        async for batch in self.subscription:
            self.envelopes.extend(batch)
            self._lot.unpark_all()

    def names(self) -> list[str]:
        return [e.name for e in self.envelopes]

    def of(self, event: type[ev.Event]) -> list[dict[str, Any]]:
        return [e.fields() for e in self.envelopes if e.name == event.NAME]

    async def wait_for(self, event: type[ev.Event], count: int = 1) -> dict[str, Any]:
        with trio.fail_after(60):
            while len(self.of(event)) < count:
                await self._lot.park()
        return self.of(event)[count - 1]


class Run:
    """One in-process `frameos run`: its supervisor, what it published, its exit status."""

    def __init__(self, supervisor: sup.Supervisor, recorder: Recorder) -> None:
        self.supervisor = supervisor
        self.recorder = recorder
        self.status: int | None = None
        self.done = trio.Event()

    async def run(self) -> None:
        try:
            self.status = await self.supervisor.run()
        finally:
            self.done.set()

    async def exit_status(self) -> int:
        with trio.fail_after(120):
            await self.done.wait()
        assert self.status is not None
        return self.status


async def start(
    nursery: trio.Nursery,
    config_path: Path,
    *,
    exits_on: Mapping[int, float] | None = None,
    config: FrameConfig | None = None,
    launch: bool = True,
    demo: bool = False,
) -> Run:
    """Start a Supervisor on `config_path` with fake VMs (they honour `exits_on`)."""
    config = config or load_config(config_path, {})
    options = sup.Options(
        config=config,
        config_source=str(config_path),
        config_path=None if demo else config_path,
        output="json",
    )
    log = EventLog(event_log_path(config, None))
    log.open()
    bus = Bus(log, fsync="never")
    recorder = Recorder(bus)
    nursery.start_soon(recorder.run)
    spawner = FakeSpawner(nursery, exits_on if exits_on is not None else {SIGTERM: 0.5})
    run = Run(sup.Supervisor(options, bus, spawner=spawner), recorder)
    if launch:
        nursery.start_soon(run.run)
        await recorder.wait_for(ev.RuntimeReady)
    return run


def order(names: list[str], *wanted: str) -> list[int]:
    return [names.index(name) for name in wanted]


async def http_get(url: str) -> tuple[int, dict[str, Any]]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, port = host_port.rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                f"GET /{path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


async def test_start_and_stop_order_by_nesting(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    timeouts = {"cooperative_ms": 0, "sigterm_ms": 30000, "sigkill_ms": 1000}
    config = write_config(
        tmp_path, vms=[fake_vm("a", timeouts=timeouts), fake_vm("b", timeouts=timeouts)]
    )
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config, exits_on={})  # they leave only on SIGKILL
        assert run.supervisor.state.phase is Phase.READY
        signal.raise_signal(signal.SIGTERM)
        await run.recorder.wait_for(ev.VmShutdownEscalated, count=2)
        # the VMs are stopping: the server still answers, and says so
        status, health = await http_get(run.supervisor.state.server_url + "/healthz")
        assert (status, health["status"]) == (200, "stopping")
        assert health["workers"]["total"] == 2
        assert ev.RuntimeStop.NAME not in run.recorder.names()
        assert await run.exit_status() == 0
    names = run.recorder.names()
    start_order = order(names, "runtime:start", "vm.launched", "runtime:ready")
    assert start_order == sorted(start_order), names
    assert names.count(ev.VmLaunched.NAME) == 2
    last_complete = len(names) - 1 - names[::-1].index(ev.VmShutdownComplete.NAME)
    stop_order = [
        *order(names, "runtime:stopping", "vm.shutdown_requested"),
        last_complete,
        *order(names, "runtime:stop", "summary"),
    ]
    assert stop_order == sorted(stop_order), names
    assert names[-2:] == [ev.RuntimeStop.NAME, ev.Summary.NAME]
    assert run.recorder.of(ev.RuntimeStopping) == [
        {"reason": "received SIGTERM", "signal": "SIGTERM"}
    ]
    assert {f["reason"] for f in run.recorder.of(ev.VmShutdownRequested)} == {"received SIGTERM"}
    summary = run.recorder.of(ev.Summary)[0]
    assert (summary["exit_status"], summary["vms"]) == (0, 2)
    assert run.supervisor.state.phase is Phase.STOPPED


async def test_two_sigints_back_to_back_force_the_stop(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = write_config(tmp_path, shutdown_timeout_s=60, vms=[fake_vm("stubborn")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config, exits_on={})  # ignores SIGTERM: only SIGKILL ends it
        # both delivered before the signal task reads either: trio's own receiver merges them
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # a third changes nothing
        assert await run.exit_status() == 1
    texts = [f["text"] for f in run.recorder.of(ev.Message)]
    assert texts.count("second SIGINT: forcing the stop now") == 1
    assert not [t for t in texts if "SIGTERM" in t]
    assert run.recorder.of(ev.Summary)[0]["exit_status"] == 1
    assert run.recorder.names()[-1] == ev.Summary.NAME


async def test_one_sigint_is_a_graceful_stop_through_the_ladder(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = write_config(tmp_path, vms=[fake_vm("slow")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config, exits_on={SIGTERM: 3.0})
        signal.raise_signal(signal.SIGINT)
        assert await run.exit_status() == 0
    assert "forcing" not in " ".join(f["text"] for f in run.recorder.of(ev.Message))
    (complete,) = run.recorder.of(ev.VmShutdownComplete)
    assert complete["vm"] == "slow"


async def test_a_reload_is_applied_and_a_bad_one_refused(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config)
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "metrics_interval": 30, "frame_port": 1}))
        signal.raise_signal(signal.SIGHUP)
        applied = await run.recorder.wait_for(ev.RuntimeReload)
        assert applied == {
            "changed": ["frame_port", "metrics_interval"],
            "error": None,
            "vms": {"added": [], "removed": [], "restarted": [], "updated": [], "unchanged": []},
        }
        assert run.supervisor.state.config.metrics_interval == 30
        assert run.supervisor.state.config.frame_port == 0  # a restart key: later
        config.write_text('{"metrics_interval": "soon"}')
        signal.raise_signal(signal.SIGHUP)
        refused = await run.recorder.wait_for(ev.RuntimeReload, count=2)
        assert "metrics_interval" in refused["error"]
        assert "the running config stays" in refused["error"]
        assert run.supervisor.state.config.metrics_interval == 30
        signal.raise_signal(signal.SIGTERM)
        assert await run.exit_status() == 0


class StuckRead:
    """A config read that blocks (like a FIFO with no writer) until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = trio.Event()

    def __call__(self, path: Path, env: Mapping[str, str] | None = None) -> FrameConfig:
        trio.from_thread.run_sync(self.entered.set)
        self.release.wait(30)
        raise OSError("released")


async def test_a_stuck_reload_times_out_and_signals_still_work(
    clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = StuckRead()
    monkeypatch.setattr(sup, "load_config", stuck)
    config = write_config(tmp_path)
    loaded = load_config(config, {})
    try:
        async with trio.open_nursery() as nursery:
            run = await start(nursery, config, config=loaded)
            signal.raise_signal(signal.SIGHUP)
            with trio.fail_after(60):  # mock time: past the reload's own deadline if need be
                await stuck.entered.wait()
            # while the first is stuck: queued behind it (a request sent before the reloader took
            # the first one would be merged into it, by design)
            signal.raise_signal(signal.SIGHUP)
            timed_out = await run.recorder.wait_for(ev.RuntimeReload)
            assert timed_out["changed"] == []
            assert f"took longer than {sup.RELOAD_TIMEOUT_S:g} s" in timed_out["error"]
            await run.recorder.wait_for(ev.RuntimeReload, count=2)
            signal.raise_signal(signal.SIGTERM)
            assert await run.exit_status() == 0
    finally:
        stuck.release.set()


async def test_a_stop_cancels_a_reload_in_flight(
    clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = StuckRead()
    monkeypatch.setattr(sup, "load_config", stuck)
    config = write_config(tmp_path, vms=[fake_vm("a")])
    loaded = load_config(config, {})
    try:
        async with trio.open_nursery() as nursery:
            run = await start(nursery, config, config=loaded)
            signal.raise_signal(signal.SIGHUP)
            with trio.fail_after(5):
                await stuck.entered.wait()
            signal.raise_signal(signal.SIGTERM)
            await run.recorder.wait_for(ev.RuntimeStopping)
            signal.raise_signal(signal.SIGHUP)  # while the VM stops: nothing left to reload
            assert await run.exit_status() == 0
    finally:
        stuck.release.set()
    names = run.recorder.names()
    assert ev.RuntimeReload.NAME not in names
    assert ev.VmShutdownComplete.NAME in names
    assert names[-1] == ev.Summary.NAME


async def test_a_fault_in_a_component_stops_every_vm_through_its_ladder(
    clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_heartbeat(*args: object) -> None:
        await trio.sleep(1)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("frameos.tickers.heartbeat", broken_heartbeat)
    config = write_config(tmp_path, vms=[fake_vm("a")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config)
        assert await run.exit_status() == 1
    names = run.recorder.names()
    (fault,) = [
        f["text"] for f in run.recorder.of(ev.Message) if "internal fault" in str(f["text"])
    ]
    assert "RuntimeError: disk on fire" in fault
    assert order(names, "message", "runtime:stopping", "vm.shutdown_requested") == sorted(
        order(names, "message", "runtime:stopping", "vm.shutdown_requested")
    )
    assert run.recorder.of(ev.VmShutdownComplete)[0]["vm"] == "a"
    assert names[-2:] == [ev.RuntimeStop.NAME, ev.Summary.NAME]
    assert run.recorder.of(ev.Summary)[0]["exit_status"] == 1


async def test_a_port_in_use_is_logged_then_raised_alone(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    from frameos.errors import FrameosError

    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, frame_port=taken.getsockname()[1])
        async with trio.open_nursery() as nursery:
            run = await start(nursery, config, launch=False)
            with pytest.raises(FrameosError, match="cannot listen on"):
                await run.run()
    names = run.recorder.names()
    assert ev.RuntimeReady.NAME not in names
    assert names[-2:] == [ev.RuntimeStop.NAME, ev.Summary.NAME]


async def test_the_demo_reloads_nothing(clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Without a config file (the demo), a SIGHUP reports an empty reload."""
    config = write_config(tmp_path)
    loaded = load_config(config, {})
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config, config=loaded, demo=True)
        signal.raise_signal(signal.SIGHUP)
        reload = await run.recorder.wait_for(ev.RuntimeReload)
        names = [vm.name for vm in loaded.vms]
        assert reload == {
            "changed": [],
            "error": None,
            "vms": {"added": [], "removed": [], "restarted": [], "updated": [], "unchanged": names},
        }
        signal.raise_signal(signal.SIGTERM)
        assert await run.exit_status() == 0


async def test_a_fault_of_the_server_still_stops_every_vm_through_its_ladder(
    clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_door(
        self: object,
        listeners: list[trio.SocketListener],
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started(("127.0.0.1", 1))
        await trio.sleep(1)
        raise RuntimeError("accept loop broke")

    monkeypatch.setattr(frameos.server.frontdoor.FrontDoor, "run", broken_door)
    config = write_config(tmp_path, vms=[fake_vm("a")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config)
        assert await run.exit_status() == 1
    names = run.recorder.names()
    faults = [f["text"] for f in run.recorder.of(ev.Message) if "internal fault" in str(f["text"])]
    assert len(faults) == 1 and "RuntimeError: accept loop broke" in faults[0]
    (requested,) = run.recorder.of(ev.VmShutdownRequested)
    assert requested["vm"] == "a"
    assert run.recorder.of(ev.VmShutdownComplete)[0]["vm"] == "a"
    assert names[-2:] == [ev.RuntimeStop.NAME, ev.Summary.NAME]
    assert run.recorder.of(ev.Summary)[0]["exit_status"] == 1


# --- runs (issue 11): the run service in the work nursery, reload runs on the SIGHUP path ---


async def test_a_stop_run_stops_the_vm_and_every_event_carries_its_run_id(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    from frameos.runs import Op, RunRequest, RunState

    config = write_config(tmp_path, vms=[fake_vm("alpha"), fake_vm("beta")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config)
        runs = run.supervisor.control.runs
        assert run.supervisor.control.pool is run.supervisor.pool
        stop, created = runs.submit(RunRequest(op=Op.STOP, target="alpha"), "key")
        assert created
        with trio.fail_after(30):
            ended = await runs.wait(stop.run_id)
        assert ended.state is RunState.SUCCEEDED, ended.reason
        assert run.supervisor.pool.worker("alpha").operator_stopped
        lines = await runs.events(stop.run_id)
        signal.raise_signal(signal.SIGTERM)
        assert await run.exit_status() == 0
    names = [json.loads(line)["event"] for line in lines]
    assert names[0] == ev.CommandAccepted.NAME and names[-1] == ev.CommandCompleted.NAME
    assert ev.VmShutdownRequested.NAME in names and ev.VmExited.NAME in names
    # the run's events are exactly the ones carrying its run_id, none about beta
    tagged = [e for e in run.recorder.envelopes if e.fields().get("run_id") == stop.run_id]
    assert [e.line for e in tagged] == lines
    assert all(e.fields().get("vm", "alpha") == "alpha" for e in tagged)


async def test_a_reload_run_takes_the_sighup_path_and_reports_vms(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    from frameos.runs import Op, RunRequest, RunState

    config = write_config(tmp_path, vms=[fake_vm("alpha"), fake_vm("beta")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config)
        data = json.loads(config.read_text())
        data["vms"] = [fake_vm("alpha", restart={"policy": "temporary"}), fake_vm("gamma")]
        config.write_text(json.dumps(data))
        runs = run.supervisor.control.runs
        reload, _ = runs.submit(RunRequest(op=Op.RELOAD, target="*"))
        with trio.fail_after(30):
            ended = await runs.wait(reload.run_id)
        assert ended.state is RunState.SUCCEEDED, ended.reason
        applied = await run.recorder.wait_for(ev.RuntimeReload)
        assert applied["run_id"] == reload.run_id
        assert applied["vms"] == {
            "added": ["gamma"],
            "removed": ["beta"],
            "restarted": [],
            "updated": ["alpha"],
            "unchanged": [],
        }
        assert run.supervisor.pool.names == ["alpha", "gamma"]
        # a bad file: the run fails with the reload's error, nothing changes
        config.write_text('{"vms": 3}')
        bad, _ = runs.submit(RunRequest(op=Op.RELOAD))
        with trio.fail_after(30):
            failed = await runs.wait(bad.run_id)
        assert failed.state is RunState.FAILED
        assert failed.reason is not None and "the running config stays" in failed.reason
        assert run.supervisor.pool.names == ["alpha", "gamma"]
        signal.raise_signal(signal.SIGTERM)
        assert await run.exit_status() == 0


async def test_a_run_in_flight_at_the_stop_ends_canceled_before_runtime_stop(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    from frameos.runs import Op, RunRequest, RunState

    # the VM ignores SIGTERM: its stop run is still climbing the ladder when frameos stops
    config = write_config(tmp_path, vms=[fake_vm("alpha")])
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config, exits_on={})
        runs = run.supervisor.control.runs
        stop, _ = runs.submit(RunRequest(op=Op.STOP, target="alpha"))
        await run.recorder.wait_for(ev.VmShutdownEscalated)
        signal.raise_signal(signal.SIGTERM)
        await run.exit_status()
    assert stop.state is RunState.CANCELED and stop.reason == "frameos is stopping"
    names = run.recorder.names()
    assert names.index(ev.CommandCanceled.NAME) < names.index(ev.RuntimeStop.NAME)


async def test_a_full_disk_under_load_does_not_hang_the_stop(
    clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C2: the stop's lifecycle events waited on the bus above its high-water mark: with the log
    failing ENOSPC the first SIGTERM hung at runtime:stopping before the stop deadline was set,
    and runtime:stop/summary hung outside any scope. The disk has room again only once the bus
    is closing: every one of them must have been published without waiting by then."""
    import errno
    import os

    config = write_config(tmp_path)
    async with trio.open_nursery() as nursery:
        run = await start(nursery, config)
        bus = run.supervisor.bus
        real_write = os.write

        def write(fd: int, data: bytes | memoryview) -> int:
            if fd == bus.log._fd and not bus.closed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)
        bus.high_water_bytes = 1  # any unwritten event is above the mark
        bus.publish_nowait(ev.Message(text="load"))
        signal.raise_signal(signal.SIGTERM)
        assert await run.exit_status() == 0
    names = run.recorder.names()
    stop_order = order(names, "runtime:stopping", "runtime:stop", "summary")
    assert stop_order == sorted(stop_order), names
    texts = [str(f["text"]) for f in run.recorder.of(ev.Message)]
    assert any("event log write failed" in t for t in texts), texts
