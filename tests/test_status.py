"""`frameos status [URL]` as a real process against a real `frameos run`: the table (plain off a
terminal, no escape codes), `--json`, and the exit status: 0 ready, 1 not ready, 2 unreachable."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from tests.conftest import frameos_argv, running_frameos, write_config

pytestmark = pytest.mark.e2e
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
FAILING = [sys.executable, "-c", "raise SystemExit(3)"]


async def status(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process(
            frameos_argv("status", *args), capture_stdout=True, capture_stderr=True, check=False
        )


async def test_status_of_a_ready_instance_is_one_plain_table_and_exit_0(tmp_path: Path) -> None:
    path = write_config(tmp_path, vms=[{"name": "alpha", "command": SLEEPER}])
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        launched = await fos.wait_for(ev.VmLaunched)
        result = await status(fos.url, "--config", str(path))
        assert result.returncode == 0, result.stderr
        text = result.stdout.decode()
        assert "\x1b" not in text  # stdout is a pipe: no escape codes
        first, head, row = text.splitlines()
        assert f"at {fos.url}: ok, ready, up" in first
        assert head.split() == [
            "VM", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "EXIT", "BOOTSTRAP"
        ]  # fmt: skip
        assert row.split()[:3] == ["alpha", "running", str(launched["fields"]["pid"])]

        as_json = await status("--url", fos.url, "--config", str(path), "--json")
        assert as_json.returncode == 0
        data = json.loads(as_json.stdout)
        assert data["ready"] == {"status": "ready", "reasons": []}
        assert data["health"]["status"] == "ok"
        assert [(v["name"], v["pid"]) for v in data["vms"]] == [
            ("alpha", launched["fields"]["pid"])
        ]


async def test_status_of_an_instance_that_is_not_ready_exits_1_and_says_why(
    tmp_path: Path,
) -> None:
    vm = {"name": "crashy", "command": FAILING, "restart": {"backoff_initial_ms": 30_000}}
    with socket.socket() as sock:  # a VM in backoff holds runtime:ready back: the port given
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_config(tmp_path, vms=[vm], frame_port=port)
    async with running_frameos(tmp_path, "run", "--config", str(path), ready=False) as fos:
        await fos.wait_for(ev.VmRestartScheduled)
        url = f"http://127.0.0.1:{port}"
        await fos.wait_for(ev.Message, lambda e: url in e["fields"]["text"])  # serving
        result = await status(url, "--config", str(path))
        assert result.returncode == 1, result.stderr
        text = result.stdout.decode()
        assert "NOT READY: starting; vm crashy: not running" in text
        assert "exit 3" in text  # the last exit
        as_json = json.loads((await status(url, "--config", str(path), "--json")).stdout)
        assert as_json["ready"]["status"] == "not_ready"
        assert as_json["ready"]["reasons"] == ["starting", "vm crashy: not running"]


async def test_status_of_nothing_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await status(f"http://127.0.0.1:{port}", "--token-file", "/dev/null/none")
    assert result.returncode == 2
    assert result.stdout == b""
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("frameos: ")
    assert "Traceback" not in line


async def test_status_url_given_twice_differently_is_a_usage_error(tmp_path: Path) -> None:
    result = await status("http://127.0.0.1:1", "--url", "http://127.0.0.1:2")
    assert result.returncode == 2
    assert "give the URL once" in result.stderr.decode()
