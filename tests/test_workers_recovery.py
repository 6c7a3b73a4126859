"""End to end (issue 8 #4): every process the real `frameos run` starts, bootstrap steps and
stop commands included, is found and stopped by the next start after a real SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from frameos import events as ev
from frameos.workers import pidfile, procfs
from frameos.workers.paths import procs_dir
from tests.conftest import running_frameos, write_config

pytestmark = pytest.mark.e2e
POLITE_SH = ["sh", "-c", "trap 'exit 0' INT TERM; sleep 1000 & wait"]


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


async def recorded(state: Path, kind: str) -> pidfile.PidRecord:
    """The pidfile of a running helper of `kind` (step | command), once it is written and the
    program runs: the pidfile comes first, then the gate execs the program (`sleep` here), and a
    frameos killed in between leaves no program running (the gate exits)."""
    with trio.fail_after(10):
        while True:
            for path in pidfile.records(procs_dir(state)):
                with contextlib.suppress(ValueError):
                    record = pidfile.read(path)
                    if record is not None and record.kind == kind and _runs_sleep(record.pid):
                        return record
            await trio.sleep(0.01)


def _runs_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    except OSError:
        return False


async def test_steps_and_stop_commands_of_a_killed_frameos_are_stopped(
    tmp_path: Path, reaper: list[int]
) -> None:
    state = tmp_path / "state"
    vms = [
        {
            "name": "boot",
            "command": POLITE_SH,
            "cooperative": {"method": "signal"},
            "timeouts": {"cooperative_ms": 800, "sigterm_ms": 500, "sigkill_ms": 1000},
            "bootstrap": {"steps": [{"name": "hold", "command": ["sleep", "120"]}]},
        },
        {
            "name": "cmd",
            "command": POLITE_SH,
            "cooperative": {"method": "command", "command": ["sleep", "120"]},
            "timeouts": {"cooperative_ms": 800, "sigterm_ms": 500, "sigkill_ms": 1000},
        },
    ]
    path = write_config(tmp_path, vms=vms, shutdown_timeout_s=20)
    args = ("run", "--config", str(path), "--output", "json")
    async with running_frameos(tmp_path, *args, ready=False) as first:  # boot never ready
        step = await recorded(state, "step")
        first.send(signal.SIGKILL)  # frameos dies while a bootstrap step runs
        await first.wait_exit()
    reaper.append(step.pid)
    assert step.alive()  # an orphan now

    async with running_frameos(tmp_path, *args, ready=False) as second:
        for vm in ("boot", "cmd"):  # launched: what the killed instance left is cleaned up
            await second.wait_for(ev.VmLaunched, lambda e, vm=vm: e["fields"]["vm"] == vm)
        assert not live(step.pid)
        assert f"boot: step pid {step.pid} was left running" in messages(second.events)
        await recorded(state, "step")
        second.send(signal.SIGTERM)  # cmd's ladder runs its stop command...
        command = await recorded(state, "command")
        second.send(signal.SIGKILL)  # ...and frameos dies under it
        await second.wait_exit()
    (cmd_vm,) = [
        e["fields"]["pid"]
        for e in second.events
        if e["event"] == ev.VmLaunched.NAME and e["fields"]["vm"] == "cmd"
    ]
    reaper.extend([command.pid, cmd_vm])
    assert command.alive()
    assert procfs.is_alive(cmd_vm)

    async with running_frameos(tmp_path, *args, ready=False) as third:
        for vm in ("boot", "cmd"):  # launched: what the killed instance left is cleaned up
            await third.wait_for(ev.VmLaunched, lambda e, vm=vm: e["fields"]["vm"] == vm)
        assert not live(command.pid)
        assert not live(cmd_vm)
        texts = messages(third.events)
        assert f"cmd: command pid {command.pid} was left running" in texts
        assert f"cmd: pid {cmd_vm} was left running by a previous frameos" in texts
        new_step = await recorded(state, "step")
        third.send(signal.SIGTERM)
        assert await third.wait_exit() == 0
    assert not live(new_step.pid)
    assert pidfile.records(procs_dir(state)) == []
    assert not list((state / "vms").glob("*.pid"))


def live(pgid: int) -> list[procfs.ProcStat]:
    """The live members of a group (an orphan's zombies may wait for a parent that never reaps
    them: they do not count)."""
    return procfs.group_members(pgid)


def messages(events: list[dict[str, Any]]) -> str:
    return "\n".join(e["fields"]["text"] for e in events if e["event"] == ev.Message.NAME)


# A frameos that spawns one VM and dies (SIGKILL) after the spawn, before the pidfile is written.
DIES_BEFORE_THE_PIDFILE = """
import os, signal, sys
from pathlib import Path
import trio
from frameos.workers.launch import default_spawner

marker, pid_out, log = sys.argv[1:4]

def record(child):
    Path(pid_out).write_text(str(child.pid))
    os.kill(os.getpid(), signal.SIGKILL)

argv = ["sh", "-c", f"touch {marker}; exec sleep 60"]
trio.run(default_spawner, argv, {"PATH": os.environ["PATH"]}, None, Path(log), record)
"""


async def test_a_frameos_killed_before_the_pidfile_leaves_no_program_running(
    tmp_path: Path, reaper: list[int]
) -> None:
    """Issue 8 (M8): the program may not run before its pidfile exists. frameos SIGKILLed in
    the gap between the spawn and the pidfile write leaves nothing running that no file names:
    the program never started (its gate saw frameos go)."""
    marker, pid_out = tmp_path / "ran", tmp_path / "pid"
    script = [sys.executable, "-c", DIES_BEFORE_THE_PIDFILE]
    result = await trio.run_process(
        [*script, str(marker), str(pid_out), str(tmp_path / "vm.log")], check=False
    )
    assert result.returncode == -signal.SIGKILL
    pid = int(pid_out.read_text())
    reaper.append(pid)
    with trio.move_on_after(10):
        while live(pid):
            await trio.sleep(0.01)
    assert not live(pid), "the program outlived the frameos that never recorded it"
    assert not marker.exists()
