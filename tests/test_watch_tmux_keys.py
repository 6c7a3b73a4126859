"""`frameos watch` in a real terminal (tmux) against a real `frameos run`, for the keys
tests/test_watch_e2e.py does not press: `?` (the help, and any key back), `/` (the messages
filtered, esc clears it), `b` (re-bootstrap: y/n, the run followed to its end; a failing step's
failure shown plainly), and the external workers pane (a worker registered through the API
appears, and its status moves)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from frameos import events as ev
from frameos.client.discover import discover
from tests.conftest import require_tools, running_frameos, write_config
from tests.test_watch_e2e import ROOT, Tmux, free_port, row

pytestmark = pytest.mark.e2e
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def failing_once(flag: Path) -> list[str]:
    """A bootstrap step that fails, saying why on stderr, once `flag` exists."""
    check = "import os, sys; sys.exit('the flag is up' if os.path.exists(sys.argv[1]) else 0)"
    return [sys.executable, "-c", check, str(flag)]


def worker(pane: str) -> list[str] | None:
    """The id, owner and status of the worker's row in the external workers pane."""
    rows = pane.split("external workers", 1)[1].splitlines() if "external workers" in pane else []
    cells = next((line.split() for line in rows if line.split()[:1] == ["renderer-1"]), None)
    return cells[:3] if cells else None


async def test_help_filter_rebootstrap_and_workers_in_tmux(tmp_path: Path) -> None:
    require_tools("tmux")
    flag = tmp_path / "flag"
    port = free_port()
    bootstrap = {
        "steps": [
            {"name": "prepare", "command": ["true"]},
            {"name": "check", "command": failing_once(flag)},
        ]
    }
    path = write_config(
        tmp_path,
        frame_port=port,
        heartbeat_interval=1,
        vms=[{"name": "alpha", "command": SLEEPER, "bootstrap": bootstrap}],
    )
    tmux = Tmux(tmp_path)
    command = (
        f"cd {ROOT} && {sys.executable} -m frameos watch http://127.0.0.1:{port} "
        f"--config {path}; sleep 600"
    )
    try:
        async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
            await fos.wait_for(ev.BootstrapCompleted, lambda e: e["fields"]["vm"] == "alpha")
            tmux("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40", command)
            pane = await tmux.until(
                lambda t: "  connected" in t and " alpha " in t and "alpha: bootstrap" in t,
                "alpha and its bootstrap",
            )
            assert row(pane, "alpha")[0] == "running" and row(pane, "alpha")[-1] == "ok"

            # ? shows the keys; any key goes back (and does nothing else)
            pane = await tmux.keys("?", then="frameos watch: keys")
            assert "quit the view; frameos and its VMs keep running" in pane
            assert "BOOTSTRAP" not in pane  # the help instead of the VMs
            pane = await tmux.keys("j", then="BOOTSTRAP")
            assert "frameos watch: keys" not in pane and row(pane, "alpha")[0] == "running"

            # / filters the messages as it is typed; enter keeps it, esc clears it
            await tmux.keys("/", then="filter: ▏")
            tmux("send-keys", "-t", "watch", "-l", "step")
            pane = await tmux.keys("Enter", then="[filter: step]")
            messages = pane.split("messages (filter: step)", 1)[1].splitlines()
            shown = [line for line in messages if line.strip() and "[filter: step]" not in line]
            assert shown and all("alpha: step" in line for line in shown), pane
            tmux("send-keys", "-t", "watch", "Escape")
            pane = await tmux.until(lambda t: "[filter:" not in t, "the filter cleared")
            assert "launched" in pane

            # an external worker registered through the API appears, then its status moves
            target = discover(config=str(path), url=fos.url, token_file=None)
            async with httpx.AsyncClient(base_url=fos.url, headers=target.headers) as http:
                created = await http.post("/v1/workers", json={"id": "renderer-1", "ttl_s": 60})
                assert created.status_code == 201, created.text
                pane = await tmux.until(lambda t: worker(t) is not None, "the worker")
                assert "external workers" in pane
                assert worker(pane) == ["renderer-1", created.json()["owner"], "starting"]
                moved = await http.post("/v1/workers/renderer-1/status", json={"status": "running"})
                assert moved.status_code == 200, moved.text
                await tmux.until(lambda t: (worker(t) or [])[2:] == ["running"], "it running")

            # b re-runs the bootstrap: y/n, then the run to its end
            await tmux.keys("b", then="bootstrap alpha? y/n")
            await tmux.keys("y", then="bootstrap alpha: succeeded")
            flag.touch()
            await tmux.keys("b", then="bootstrap alpha? y/n")
            pane = await tmux.keys("y", then="bootstrap alpha: failed")
            assert "the flag is up" in pane  # why, plainly
            assert row(pane, "alpha")[0] == "running"  # the VM itself keeps running
            assert "failed" in row(pane, "alpha")[-1]
            assert "Traceback" not in pane
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)
