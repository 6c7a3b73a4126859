"""Runs on the real VmPool with real child processes (pids checked in /proc): stop, start,
restart, a stop that wins over a start whose bootstrap is still running, and an operator's
stop that the restart policy does not undo."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from frameos import events as ev
from frameos.bus import Bus
from frameos.config import resolve, validate_config
from frameos.envelope import Envelope
from frameos.eventlog import EventLog
from frameos.runs import Op, Run, RunRequest, RunService, RunState
from frameos.workers.pool import VmPool

# argv carries the test's directory, so whatever is left running can be found in /proc
SLEEP = "import time; time.sleep(600)"
MAYBE_SLOW = "import os, sys, time; os.path.exists(sys.argv[1]) and time.sleep(60)"


@dataclass
class Live:
    service: RunService
    pool: VmPool
    seen: list[Envelope]
    lot: trio.lowlevel.ParkingLot

    async def run(self, op: Op, target: str = "vm") -> Run:
        run, _ = self.service.submit(RunRequest(op=op, target=target))
        with trio.fail_after(20):
            return await self.service.wait(run.run_id)

    async def wait_for(self, cls: type[ev.Event], run_id: str) -> dict[str, Any]:
        with trio.fail_after(20):
            while True:
                for e in self.seen:
                    if isinstance(e.event, cls) and e.event.run_id == run_id:
                        return e.fields()
                await self.lot.park()

    def of_run(self, run_id: str) -> list[Envelope]:
        return [e for e in self.seen if e.event is not None and e.event.run_id == run_id]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@asynccontextmanager
async def live_pool(tmp_path: Path) -> AsyncIterator[Live]:
    slow = tmp_path / "slow"
    config = resolve(
        validate_config(
            {
                "state_dir": str(tmp_path / "state"),
                "vms": [
                    {
                        "name": "vm",
                        "command": [sys.executable, "-c", SLEEP, str(tmp_path)],
                        "cooperative": {"method": "none"},
                        "timeouts": {"cooperative_ms": 0, "sigterm_ms": 5000, "sigkill_ms": 2000},
                        "restart": {"policy": "permanent", "backoff_initial_ms": 1},
                        "bootstrap": {
                            "trigger": "always",
                            "steps": [
                                {
                                    "name": "maybe-slow",
                                    "command": [sys.executable, "-c", MAYBE_SLOW, str(slow)],
                                }
                            ],
                        },
                    }
                ],
            },
            "test",
        ),
        "test",
        {},
    )
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    bus = Bus(log, fsync="never")
    pool = VmPool(config, bus)

    async def reload(run_id: str) -> str | None:
        return None

    service = RunService(pool, bus, reload=reload)
    seen: list[Envelope] = []
    lot = trio.lowlevel.ParkingLot()

    async def record() -> None:
        async for batch in bus.subscribe("test", 4096):
            seen.extend(batch)
            lot.unpark_all()

    try:
        async with trio.open_nursery() as outer:
            await outer.start(bus.run)
            outer.start_soon(record)
            async with trio.open_nursery() as work:
                await work.start(pool.run)
                await work.start(service.run)
                yield Live(service, pool, seen, lot)
                work.cancel_scope.cancel()
            await bus.aclose()
    finally:
        log.close()


async def test_stop_start_restart_on_a_real_process(tmp_path: Path) -> None:
    async with live_pool(tmp_path) as live:
        first = live.pool.snapshot("vm").pid
        assert first is not None and alive(first)

        stop = await live.run(Op.STOP)
        assert stop.state is RunState.SUCCEEDED, stop.reason
        assert not alive(first)
        snap = live.pool.snapshot("vm")
        assert snap.pid is None and snap.operator_stopped and snap.backoff_until is None
        exited = await live.wait_for(ev.VmExited, stop.run_id)
        assert exited["pid"] == first

        start = await live.run(Op.START)
        assert start.state is RunState.SUCCEEDED, start.reason
        launched = await live.wait_for(ev.VmLaunched, start.run_id)
        second = launched["pid"]
        assert second != first and alive(second) and live.pool.snapshot("vm").pid == second
        assert not live.pool.snapshot("vm").operator_stopped

        restart = await live.run(Op.RESTART)
        assert restart.state is RunState.SUCCEEDED, restart.reason
        third = (await live.wait_for(ev.VmLaunched, restart.run_id))["pid"]
        assert not alive(second) and alive(third)
        await live.wait_for(ev.CommandCompleted, restart.run_id)  # the recorder has it all
        names = [e.name for e in live.of_run(restart.run_id)]
        assert names.index(ev.VmExited.NAME) < names.index(ev.VmLaunched.NAME)
        assert names[-1] == ev.CommandCompleted.NAME


async def test_a_stop_wins_over_a_start_whose_bootstrap_is_running(tmp_path: Path) -> None:
    async with live_pool(tmp_path) as live:
        first = live.pool.snapshot("vm").pid
        assert (await live.run(Op.STOP)).state is RunState.SUCCEEDED
        (tmp_path / "slow").touch()  # the next bootstrap hangs in its step
        start, _ = live.service.submit(RunRequest(op=Op.START, target="vm"))
        launched = await live.wait_for(ev.VmLaunched, start.run_id)
        await live.wait_for(ev.BootstrapStarted, start.run_id)
        stop = await live.run(Op.STOP)
        assert stop.state is RunState.SUCCEEDED, stop.reason
        assert start.state is RunState.CANCELED
        assert start.reason == f"stopped by run {stop.run_id}"
        assert not alive(launched["pid"]) and first is not None and not alive(first)
        snap = live.pool.snapshot("vm")
        assert snap.pid is None and snap.operator_stopped
        await live.wait_for(ev.CommandCanceled, start.run_id)
        # nothing of the VM is left running: neither the VM nor its bootstrap step
        assert not [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit() and alive(int(pid)) and str(tmp_path) in _cmdline(int(pid))
        ]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
