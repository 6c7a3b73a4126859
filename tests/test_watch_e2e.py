"""`frameos watch` in a real terminal (tmux: send-keys, capture-pane) against a real `frameos
run`: the VMs appear; s/y stops the selected VM (its process is gone from /proc) and s/y starts
it; r/y restarts it; frameos restarted under the view → it says so, reconnects, and shows the
new pids; q exits 0 and frameos keeps running. Off a terminal: plain lines, no escape codes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from tests.conftest import Frameos, frameos_argv, require_tools, running_frameos, write_config

pytestmark = pytest.mark.e2e
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
GREETER = [
    sys.executable,
    "-c",
    "import time; print('hello from alpha', flush=True); time.sleep(600)",
]
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        frame_port=port,
        heartbeat_interval=1,
        vms=[{"name": "alpha", "command": GREETER}, {"name": "beta", "command": SLEEPER}],
    )


class Tmux:
    """One tmux server of its own (-L), one pane of 120×40."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"frameos-watch-{os.getpid()}-{tmp_path.name}"[:90]

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", "watch")

    async def until(self, pred: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        """The pane once `pred` holds for it (asked every 50 ms, up to `timeout`)."""
        with trio.move_on_after(timeout):
            while True:
                text = self.pane()
                if pred(text):
                    return text
                await trio.sleep(0.05)
        raise AssertionError(f"the pane never showed {what}; it shows:\n{self.pane()}")

    async def shows(self, needle: str, timeout: float = 15) -> str:
        return await self.until(lambda text: needle in text, repr(needle), timeout)

    async def keys(self, *keys: str, then: str) -> str:
        self("send-keys", "-t", "watch", *keys)
        return await self.shows(then)


def row(pane: str, vm: str) -> list[str]:
    """The cells of the VM's row (the selection mark dropped)."""
    line = next(line for line in pane.splitlines() if re.match(rf"^[> ] {vm} ", line))
    return line[2:].split()[1:]


def pid_of(fos: Frameos, vm: str, after: int = 0) -> int:
    launched = [
        e
        for e in fos.events[after:]
        if e["event"] == ev.VmLaunched.NAME and e["fields"]["vm"] == vm
    ]
    return int(launched[-1]["fields"]["pid"])


async def gone(pid: int) -> None:
    with trio.fail_after(10):
        while Path(f"/proc/{pid}").exists():
            await trio.sleep(0.02)


async def test_watch_in_tmux_acts_reconnects_and_quits_leaving_frameos_running(
    tmp_path: Path,
) -> None:
    require_tools("tmux")
    port = free_port()
    path = config(tmp_path, port)
    tmux = Tmux(tmp_path)
    status_file = tmp_path / "watch-status"
    command = (
        f"cd {ROOT} && {sys.executable} -m frameos watch http://127.0.0.1:{port} "
        f"--config {path}; echo $? > {status_file}; sleep 600"
    )
    try:
        async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
            await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "beta")
            await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "alpha")
            tmux("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40", command)
            alpha = pid_of(fos, "alpha")
            pane = await tmux.until(
                lambda t: "connected" in t and " beta " in t and str(alpha) in t, "both VMs"
            )
            assert row(pane, "alpha")[:2] == ["running", str(alpha)]
            assert re.search(r"^> alpha ", pane, re.M)  # the first VM is selected
            assert "ready" in pane.splitlines()[0]

            pane = await tmux.keys("Enter", then="hello from alpha")  # the detail, its log
            assert "VM alpha" in pane and "output log (following)" in pane
            await tmux.keys("Escape", then="messages")

            mark = len(fos.events)
            await tmux.keys("s", then="stop alpha? y/n")
            await tmux.keys("y", then="stop alpha: succeeded")
            await gone(alpha)
            pane = await tmux.until(lambda t: row(t, "alpha")[:2] == ["stopped", "-"], "stopped")
            assert row(pane, "beta")[0] == "running"

            await tmux.keys("s", then="start alpha? y/n")
            await tmux.keys("y", then="start alpha: succeeded")
            started = pid_of(fos, "alpha", mark)
            assert Path(f"/proc/{started}").exists()
            await tmux.until(lambda t: row(t, "alpha")[:2] == ["running", str(started)], "pid")

            mark = len(fos.events)
            await tmux.keys("r", then="restart alpha? y/n")
            await tmux.keys("y", then="restart alpha: succeeded")
            await gone(started)
            restarted = pid_of(fos, "alpha", mark)
            await tmux.until(lambda t: row(t, "alpha")[:2] == ["running", str(restarted)], "pid")

            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
            await tmux.until(lambda t: "disconnected" in t or "reconnecting" in t, "disconnected")
            await gone(restarted)
            pane = tmux.pane()
            # the last picture is kept: the rows, and how they ended
            assert row(pane, "alpha")[:2] in (["stopping", "-"], ["stopped", "-"])
            assert f"alpha: pid {restarted} exited" in pane

        async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
            await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "beta")
            await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "alpha")
            new = {vm: pid_of(fos, vm) for vm in ("alpha", "beta")}
            await tmux.until(
                lambda t: (
                    "  connected" in t
                    and all(row(t, vm)[:2] == ["running", str(pid)] for vm, pid in new.items())
                ),
                f"the new pids {new}",
                timeout=20,
            )
            pane = tmux.pane()  # resumed from the last seq: nothing missed, nothing twice
            assert pane.count("stopping: received SIGTERM") == 1, pane
            assert pane.count(f"alpha: pid {restarted} exited") == 1
            assert "frameos starting" in pane.split("stopping: received SIGTERM")[1]
            tmux("resize-window", "-t", "watch", "-x", "90", "-y", "30")  # SIGWINCH: redrawn
            await tmux.until(
                lambda t: (
                    any("BOOTSTRAP" in line and len(line) <= 90 for line in t.splitlines())
                    and "q quit" not in t
                ),  # the footer is cut to the new width
                "the view redrawn at 90 columns",
            )
            tmux("send-keys", "-t", "watch", "q")
            with trio.fail_after(10):
                while not status_file.exists() or not status_file.read_text().strip():
                    await trio.sleep(0.05)
            assert status_file.read_text().strip() == "0"
            assert fos.proc.returncode is None  # frameos and its VMs keep running
            assert all(Path(f"/proc/{pid}").exists() for pid in new.values())
            assert "Traceback" not in tmux.pane()
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)


async def test_watch_off_a_terminal_prints_plain_lines(tmp_path: Path) -> None:
    path = config(tmp_path, free_port())
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "beta")
        argv = frameos_argv("watch", fos.url, "--config", str(path))
        watcher = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(20):
                assert watcher.stdout is not None and watcher.stderr is not None
                note = b""
                while b"following" not in note:
                    chunk = await watcher.stderr.receive_some(65536)
                    assert chunk, "watch ended"
                    note += chunk
                assert note.decode().startswith(f"frameos: following {fos.url} from seq ")
                await trio.run_process(
                    frameos_argv("stop", "beta", "--url", fos.url, "--config", str(path)),
                    capture_stdout=True,
                    check=True,
                )
                out = b""
                while b"completed" not in out:
                    chunk = await watcher.stdout.receive_some(65536)
                    assert chunk, "watch ended"
                    out += chunk
        finally:
            watcher.kill()
            await watcher.wait()
    text = out.decode()
    assert "\x1b" not in text
    assert "beta: shutdown requested" in text
    assert all(re.match(r"^\d\d:\d\d:\d\d\.\d{3} ", line) for line in text.splitlines())
