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


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def sleeper(name: str, **overrides: object) -> dict[str, object]:
    return {
        "name": name,
        "command": [sys.executable, "-c", "import time; time.sleep(600)"],
        "cooperative": {"method": "none"},
        "timeouts": {"cooperative_ms": 0, "sigterm_ms": 3000, "sigkill_ms": 2000},
        **overrides,
    }


async def test_sighup_reloads_by_diff_vm_by_vm(tmp_path: Path) -> None:
    before = [sleeper("same"), sleeper("gone"), sleeper("env"), sleeper("policy")]
    config = write_config(tmp_path, vms=before)
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        pids = {}
        for vm in ("same", "gone", "env", "policy"):
            launched = await fos.wait_for(ev.VmLaunched, lambda e, vm=vm: e["fields"]["vm"] == vm)
            pids[vm] = launched["fields"]["pid"]
        after = [
            sleeper("same"),
            sleeper("env", env={"MODE": "new"}),
            sleeper("policy", restart={"policy": "temporary"}),
            sleeper("new"),
        ]
        data = orjson.loads(config.read_bytes())
        config.write_bytes(orjson.dumps({**data, "vms": after}))
        index = len(fos.events)
        fos.send(signal.SIGHUP)
        reload = await fos.wait_for(ev.RuntimeReload, start=index)
        assert reload["fields"]["error"] is None
        assert reload["fields"]["vms"] == {
            "added": ["new"],
            "removed": ["gone"],
            "restarted": ["env"],
            "updated": ["policy"],
            "unchanged": ["same"],
        }
        assert {"vms[1].env.MODE", "vms[2].restart.policy"} <= set(reload["fields"]["changed"])
        assert "run_id" not in reload["fields"]  # a SIGHUP is no run
        relaunched = await fos.wait_for(
            ev.VmLaunched, lambda e: e["fields"]["vm"] == "env", start=index
        )
        added = await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "new", start=index)
        assert alive(pids["same"]) and alive(pids["policy"])  # untouched: the same pids
        assert not alive(pids["gone"]) and not alive(pids["env"])
        assert alive(relaunched["fields"]["pid"]) and alive(added["fields"]["pid"])
        launched_again = [
            e["fields"]["vm"] for e in fos.events[index:] if e["event"] == ev.VmLaunched.NAME
        ]
        assert sorted(launched_again) == ["env", "new"]
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
