"""READY and /readyz tell the truth (SPEC §9): one list of reasons, read by /readyz, `frameos
status` and the systemd STATUS line; the supervisor says runtime:ready only once every permanent
VM is ready or gave up. The ServiceView is pure: fed events, it says the datagrams."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import FrameConfig
from frameos.envelope import encode
from frameos.state import Phase, RuntimeState, WorkerCounts
from frameos.systemd import ServiceView
from frameos.workers.pool import VmPool
from frameos.workers.testing import RecordingPublisher
from frameos.workers.vm import VmState
from tests.conftest import running_frameos, write_config
from tests.pool_helpers import frame, polite, vm


def state_with(reasons: list[str]) -> RuntimeState:
    state = RuntimeState(config=FrameConfig(), config_source="test")
    state.not_ready_providers.append(lambda: list(reasons))
    state.worker_counts = lambda: WorkerCounts(total=2, running=1, failed=1)
    return state


def ready_event() -> ev.RuntimeReady:
    return ev.RuntimeReady(
        server="http://127.0.0.1:1",
        health_endpoint="http://127.0.0.1:1/healthz",
        event_stream_transport="websocket",
        metrics_interval_seconds=60,
        apps_loaded=0,
        scenes_loaded=0,
    )


def test_reasons_while_starting_come_after_starting_then_alone() -> None:
    reasons = ["vm web: waiting for db (ready)"]
    state = state_with(reasons)
    assert state.not_ready_reasons() == ["starting", "vm web: waiting for db (ready)"]
    state.set_phase(Phase.READY)
    assert state.not_ready_reasons() == ["vm web: waiting for db (ready)"]
    reasons.clear()
    assert state.not_ready_reasons() == []
    state.set_phase(Phase.STOPPING)
    assert state.not_ready_reasons() == ["shutdown in progress (stopping)"]


def test_status_says_what_start_up_waits_for_and_degraded_once_ready() -> None:
    reasons = ["vm web: waiting for db (ready)"]
    state = state_with(reasons)
    view = ServiceView(state, lambda: 0)
    beat = ev.RuntimeHeartbeat(uptime_seconds=1.0, server="http://127.0.0.1:1", loop_lag_ms=0.0)
    heartbeat = encode(beat, 1, 0.0, None)
    assert view.observe([heartbeat], 0.0) == [
        ("STATUS=starting · not ready: vm web: waiting for db (ready)",)
    ]
    reasons[:] = ["vm db: gave up"]
    state.set_phase(Phase.READY)
    out = view.observe([encode(ready_event(), 2, 0.0, None)], 0.0)
    assert out == [
        ("READY=1", "STATUS=degraded: vm db: gave up · 1/2 VMs running · 0 watchers · 1 failed")
    ]
    reasons.clear()
    out = view.observe([heartbeat], 0.0)
    assert out == [("STATUS=1/2 VMs running · 0 watchers · 1 failed",)]


def test_status_names_a_few_reasons_then_an_ellipsis() -> None:
    state = state_with([f"vm v{i}: not running" for i in range(7)])
    state.set_phase(Phase.READY)
    view = ServiceView(state, lambda: 0)
    (datagram,) = view.observe([encode(ready_event(), 1, 0.0, None)], 0.0)
    assert datagram[1].startswith(
        "STATUS=degraded: vm v0: not running, vm v1: not running, vm v2: not running, "
        "vm v3: not running, … · "
    )


async def test_wait_ready_waits_through_a_backoff_not_for_an_operators_stop(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    backoff = {"backoff_initial_ms": 60_000, "backoff_max_ms": 60_000}
    config = frame(tmp_path, [vm("crashy", restart=backoff)])
    async with trio.open_nursery() as outer:
        spawner = polite(outer, lifetime=0.5, code=1)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            worker = pool.worker("crashy")
            await worker.wait_until(lambda: worker.state is VmState.BACKOFF)
            with trio.move_on_after(10) as waited:
                await pool.wait_ready()
            assert waited.cancelled_caught  # in backoff: not ready
            assert pool.not_ready_reasons() == ["vm crashy: not running"]
            async with trio.open_nursery() as waiting:
                waiting.start_soon(pool.wait_ready)
                await pool.stop_vm("crashy")  # stopped on purpose: READY need not wait
            assert pool.not_ready_reasons() == []
            await pool.stop("test")


async def test_ready_waits_for_names_only_what_holds_ready_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """D3: the "runtime:ready (READY=1) waits for: …" message named a VM that gave up with
    `on_exhausted: stay`, which READY=1 does not wait for; /readyz (not_ready_reasons) still
    names it, the message (ready_waits_for) does not."""
    pub = RecordingPublisher()
    backoff = {"backoff_initial_ms": 60_000, "backoff_max_ms": 60_000}
    config = frame(
        tmp_path, [vm("gone", restart={"max_restarts": 0}), vm("crashy", restart=backoff)]
    )
    async with trio.open_nursery() as outer:
        spawner = polite(outer, lifetime=0.5, code=1)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            gone, crashy = pool.worker("gone"), pool.worker("crashy")
            await gone.wait_until(lambda: gone.state is VmState.GAVE_UP)
            await crashy.wait_until(lambda: crashy.state is VmState.BACKOFF)
            reasons = pool.not_ready_reasons()
            assert [r for r in reasons if r.startswith("vm gone:")]  # /readyz: still 503
            assert pool.ready_waits_for() == ["vm crashy: not running"]
            await pool.stop_vm("crashy")
            assert pool.ready_waits_for() == []
            with trio.fail_after(1):
                await pool.wait_ready()  # nothing left to wait for: READY=1 goes out
            await pool.stop("test")


@pytest.mark.e2e
async def test_the_waits_for_message_leaves_out_a_vm_that_gave_up(tmp_path: Path) -> None:
    """D3 through the real `frameos run`: `gone` (no such program, no restart) gives up at its
    first launch; `never` is never ready (its readiness probe fails). The message names
    `never` only; /readyz names both."""
    path = write_config(
        tmp_path,
        vms=[
            {"name": "gone", "command": ["/nonexistent/prog"], "restart": {"max_restarts": 0}},
            {
                "name": "never",
                "command": ["sh", "-c", "trap 'exit 0' TERM INT; sleep 1000 & wait"],
                "health": {"readiness": {"exec": {"command": ["false"]}, "period_ms": 100}},
                "timeouts": {"cooperative_ms": 500, "sigterm_ms": 500, "sigkill_ms": 1000},
            },
        ],
    )
    async with running_frameos(tmp_path, "run", "--config", str(path), ready=False) as fos:
        try:
            await fos.wait_for("vm.gave_up")
            waits = await fos.wait_for(
                "message", lambda e: "(READY=1) waits for: " in e["fields"]["text"]
            )
            listed = waits["fields"]["text"].split("waits for: ", 1)[1]
            assert listed.startswith("vm never: "), listed
            assert "gone" not in listed
        finally:
            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
