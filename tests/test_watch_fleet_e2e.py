"""`frameos watch --from nats://…` in a real terminal (tmux) against a real nats-server and two
real `frameos run` hosts forwarding to it: one row per host (ready, VMs running/total, the last
event); enter opens a host's own view (its VMs, from its own HTTP surface), esc comes back,
q exits 0 and the hosts keep running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from frameos import events as ev
from tests.conftest import require_tools, running_frameos, write_config
from tests.test_forward_nats import nats_server
from tests.test_watch_e2e import ROOT, SLEEPER, Tmux

pytestmark = pytest.mark.e2e


def fleet_row(pane: str, host: str) -> list[str]:
    """The cells of the host's row (the selection mark dropped); [] while it has none."""
    for line in pane.splitlines():
        if line[2:].startswith(host + " "):
            return line[2:].split()
    return []


async def test_the_fleet_view_shows_both_hosts_and_opens_one(tmp_path: Path) -> None:
    require_tools("tmux", "nats-server")
    token = tmp_path / "token"
    token.write_text("fleet-token-0123456789abcdef\n")
    vms = {"h1": ["alpha"], "h2": ["beta", "gamma"]}

    def config(host: str) -> str:
        home = tmp_path / host
        home.mkdir()
        more: dict[str, Any] = {
            "heartbeat_interval": 1,
            "auth": {"token_file": str(token)},  # one token for the fleet: --token-file
            "vms": [{"name": vm, "command": SLEEPER} for vm in vms[host]],
        }
        return str(write_config(home, forward={"nats": {"url": broker.url}, "host": host}, **more))

    tmux = Tmux(tmp_path)
    status_file = tmp_path / "watch-status"
    try:
        async with nats_server(tmp_path) as broker:
            configs = {host: config(host) for host in vms}
            async with (
                running_frameos(tmp_path / "h1", "run", "--config", configs["h1"]) as one,
                running_frameos(tmp_path / "h2", "run", "--config", configs["h2"]) as two,
            ):
                for fos, host in ((one, "h1"), (two, "h2")):
                    for vm in vms[host]:
                        await fos.wait_for(ev.VmLaunched, lambda e, vm=vm: e["fields"]["vm"] == vm)
                command = (
                    f"cd {ROOT} && {sys.executable} -m frameos watch --from {broker.url} "
                    f"--token-file {token}; echo $? > {status_file}; sleep 600"
                )
                tmux("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40", command)
                pane = await tmux.until(
                    lambda t: (
                        fleet_row(t, "h1")[1:4] == ["ready", "running", "1/1"]
                        and fleet_row(t, "h2")[1:4] == ["ready", "running", "2/2"]
                    ),
                    "both hosts ready with their VMs running",
                    timeout=30,
                )
                lines = pane.splitlines()
                assert lines[0].startswith(f"frameos fleet {broker.url}  2 hosts  connected")
                assert any(line.startswith("> h1 ") for line in lines)  # the first is selected

                tmux("send-keys", "-t", "watch", "Down", "Enter")  # h2's own view
                pane = await tmux.until(
                    lambda t: "  connected" in t and " beta " in t and " gamma " in t,
                    "h2's own view with its VMs",
                    timeout=20,
                )
                assert " alpha " not in pane and "BOOTSTRAP" in pane
                assert two.url.split("://")[1] in pane.splitlines()[0]  # its own header

                await tmux.keys("Escape", then="frameos fleet")  # back to the fleet
                await tmux.until(lambda t: bool(fleet_row(t, "h1")), "the fleet again")
                tmux("send-keys", "-t", "watch", "q")
                with trio.fail_after(10):
                    while not status_file.exists() or not status_file.read_text().strip():
                        await trio.sleep(0.05)
                assert status_file.read_text().strip() == "0", tmux.pane()
                assert one.proc.returncode is None and two.proc.returncode is None
                assert "Traceback" not in tmux.pane()
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)
