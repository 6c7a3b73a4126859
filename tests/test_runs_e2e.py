"""The real `frameos run`: a run that was in flight when frameos was killed is `failed` with
reason `interrupted` after the restart, and the log says so (command.failed)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import orjson
import trio

from frameos import events as ev
from frameos.bus import Bus
from frameos.eventlog import EventLog
from tests.conftest import running_frameos, write_config


async def accept_a_run_in(log_path: Path, run_id: str) -> int:
    """What a killed frameos leaves behind when it dies right after accepting a run: the
    run's command.accepted is the last line of its log."""
    log = EventLog(log_path)
    recovery = log.open()
    try:
        bus = Bus(log, last_seq=recovery.last_seq)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            envelope = bus.publish_nowait(
                ev.CommandAccepted(run_id=run_id, op="stop", target="vm", idempotency_key="k")
            )
            await bus.aclose()
        return envelope.seq
    finally:
        log.close()


async def test_a_run_in_flight_when_frameos_was_killed_ends_interrupted(tmp_path: Path) -> None:
    vm = {
        "name": "vm",
        "command": [sys.executable, "-c", "import time; time.sleep(600)"],
        "cooperative": {"method": "none"},
        "timeouts": {"cooperative_ms": 0, "sigterm_ms": 3000, "sigkill_ms": 2000},
    }
    config = write_config(tmp_path, vms=[vm])
    log_path = tmp_path / "state" / "events.jsonl"
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        await fos.wait_for(ev.VmLaunched)
        fos.send(signal.SIGKILL)
        await fos.wait_exit()
    accepted = await accept_a_run_in(log_path, "killed-run")
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        failed = await fos.wait_for(ev.CommandFailed)
        assert failed["fields"] == {"run_id": "killed-run", "error": "interrupted"}
        assert failed["seq"] > accepted
        assert fos.names().index(ev.CommandFailed.NAME) < fos.names().index(ev.RuntimeReady.NAME)
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    of_run = [e["event"] for e in lines if e["fields"].get("run_id") == "killed-run"]
    assert of_run == [ev.CommandAccepted.NAME, ev.CommandFailed.NAME]
    # a third start finds the run ended: no second command.failed
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
        assert ev.CommandFailed.NAME not in fos.names()
