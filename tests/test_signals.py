"""Signals at the edges, on the real process (issue 8 #5, #10): a SIGHUP during start-up, two
SIGINTs back to back, a reload stuck on a FIFO, and what the VMs inherit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from frameos import events as ev
from tests.conftest import running_frameos, stubborn_vm, until, write_config

pytestmark = pytest.mark.e2e
HANDLED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
EARLY_MASK = sum(1 << (sig - 1) for sig in HANDLED)


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def in_mask(status: dict[str, str], key: str, sig: int) -> bool:
    return bool(int(status.get(key, "0"), 16) & (1 << (sig - 1)))


def pending(pid: int, sig: int) -> bool:
    status = proc_status(pid)
    return in_mask(status, "ShdPnd", sig) or in_mask(status, "SigPnd", sig)


async def test_a_sighup_during_start_up_waits_for_the_handlers(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    async with running_frameos(tmp_path, "run", "--config", str(config), ready=False) as fos:
        pid = fos.proc.pid
        # the first lines of `python -m frameos` block exactly these three; the handlers come
        # ~0.2 s later (a SIGHUP in between used to kill it)
        await until(lambda: int(proc_status(pid).get("SigBlk", "0"), 16) == EARLY_MASK)
        fos.send(signal.SIGHUP)
        await fos.wait_for(ev.RuntimeReady)
        reload = await fos.wait_for(ev.RuntimeReload)  # delivered once the handlers were in
        assert (reload["fields"]["changed"], reload["fields"]["error"]) == ([], None)
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    assert fos.events[-1]["event"] == ev.Summary.NAME


async def test_a_sigterm_during_start_up_stops_it_cleanly(tmp_path: Path) -> None:
    config = write_config(tmp_path, vms=[{"name": "idle", "command": ["sleep", "600"]}])
    async with running_frameos(tmp_path, "run", "--config", str(config), ready=False) as fos:
        pid = fos.proc.pid
        await until(lambda: int(proc_status(pid).get("SigBlk", "0"), 16) == EARLY_MASK)
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    names = fos.names()
    assert ev.RuntimeReady.NAME not in names  # stopped before it was ever ready
    assert names[0] == ev.RuntimeStart.NAME
    assert ev.RuntimeStopping.NAME in names
    assert names[-2:] == [ev.RuntimeStop.NAME, ev.Summary.NAME]
    for launched in [e for e in fos.events if e["event"] == ev.VmLaunched.NAME]:
        assert not Path(f"/proc/{launched['fields']['pid']}").exists()


async def test_two_sigints_back_to_back_force_the_stop(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    config = write_config(
        tmp_path, shutdown_timeout_s=60, vms=[stubborn_vm(armed, sigterm_ms=30000)]
    )
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        launched = await fos.wait_for(ev.VmLaunched)
        await until(armed.exists)
        pid = fos.proc.pid
        fos.send(signal.SIGINT)
        # The kernel merges a signal sent while the same one is still pending; once it is
        # delivered, the second one is a second delivery, however soon it follows.
        await until(lambda: not pending(pid, signal.SIGINT))
        fos.send(signal.SIGINT)
        assert await fos.wait_exit(timeout=15) == 1  # graceful would take the 30 s rung
    texts = [e["fields"].get("text", "") for e in fos.events]
    assert "second SIGINT: forcing the stop now" in texts, fos.names()
    assert fos.events[-1]["event"] == ev.Summary.NAME
    assert fos.events[-1]["fields"]["exit_status"] == 1
    assert not Path(f"/proc/{launched['fields']['pid']}").exists()


def reading_a_fifo(pid: int) -> bool:
    """Some thread of `pid` is blocked opening a FIFO nobody writes to."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "wait_for_partner":
                return True
        except OSError:
            continue
    return False


async def test_a_reload_stuck_on_a_fifo_never_stands_between_a_signal_and_the_stop(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, vms=[{"name": "idle", "command": ["sleep", "600"]}])
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        launched = await fos.wait_for(ev.VmLaunched)
        config.unlink()
        os.mkfifo(config)
        index = len(fos.events)
        fos.send(signal.SIGHUP)

        def stuck_or_refused() -> bool:
            refused = any(e["event"] == ev.RuntimeReload.NAME for e in fos.events[index:])
            return refused or reading_a_fifo(fos.proc.pid)

        await until(stuck_or_refused)
        fos.send(signal.SIGTERM)
        stopping = await fos.wait_for(ev.RuntimeStopping, start=index)
        assert stopping["fields"]["signal"] == "SIGTERM"
        assert await fos.wait_exit(timeout=10) == 0
    reloads = [e for e in fos.events[index:] if e["event"] == ev.RuntimeReload.NAME]
    assert all(r["fields"]["error"] for r in reloads)  # never applied
    assert fos.events[-1]["event"] == ev.Summary.NAME
    assert not Path(f"/proc/{launched['fields']['pid']}").exists()


async def test_vms_do_not_inherit_the_start_up_signal_mask(tmp_path: Path) -> None:
    config = write_config(tmp_path, vms=[{"name": "idle", "command": ["sleep", "600"]}])
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        launched = await fos.wait_for(ev.VmLaunched)
        status = proc_status(launched["fields"]["pid"])
        assert status, "the VM is running"
        assert not [sig.name for sig in HANDLED if in_mask(status, "SigBlk", sig)]
        assert not in_mask(proc_status(fos.proc.pid), "SigBlk", signal.SIGTERM)
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0


def test_check_runs_with_the_default_signal_mask(tmp_path: Path) -> None:
    """`check` never installs handlers, so it gives the signals back at once."""
    config = write_config(tmp_path)
    script = (
        "import signal, sys; from frameos.cli import main; "
        "status = main(['check', '--config', sys.argv[1], '--output', 'json']); "
        "print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
