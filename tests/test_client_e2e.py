"""End to end: the client commands as real processes (`python -m frameos …`) against the real
`frameos run`: `events` from its log file while it runs and from its HTTP surface (pages, then
the websocket, live), and the exit status and one-line message when nothing answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from tests.conftest import frameos_argv, running_frameos, write_config

pytestmark = pytest.mark.e2e
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        vms=[
            {"name": "alpha", "command": SLEEPER, "restart": {"backoff_initial_ms": 100}},
            {"name": "beta", "command": SLEEPER},
        ],
    )


async def client(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            frameos_argv(*args), capture_stdout=True, capture_stderr=True, check=False
        )


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_events_reads_the_running_instances_log_file(tmp_path: Path) -> None:
    path = config(tmp_path)
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "beta")
        result = await client("events", "--config", str(path), "--json")
        assert result.returncode == 0, result.stderr
        printed = result.stdout.splitlines(keepends=True)
        logged = (tmp_path / "state" / "events.jsonl").read_bytes().splitlines(keepends=True)
        assert printed == logged[: len(printed)]  # the log's own bytes, from its start
        names = [json.loads(line)["event"] for line in printed]
        assert ev.RuntimeReady.NAME in names
        human = await client("events", "--config", str(path), "--vm", "alpha")
        assert human.returncode == 0
        text = human.stdout.decode()
        assert "alpha: launched (pid" in text
        assert "beta" not in text


async def test_events_url_follow_sees_a_vm_crash_live(tmp_path: Path) -> None:
    path = config(tmp_path)
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        launched = await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "alpha")
        argv = frameos_argv("events", "--url", fos.url, "--follow", "--json", "--vm", "alpha")
        follower = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        try:
            assert follower.stdout is not None
            seen: list[dict[str, object]] = []
            buffer = b""

            async def until(name: str) -> dict[str, object]:
                nonlocal buffer
                while True:
                    for event in seen:
                        if event["event"] == name:
                            return event
                    chunk = await follower.stdout.receive_some()  # type: ignore[union-attr]
                    assert chunk, "the follower exited"
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    seen.extend(json.loads(line) for line in lines)

            with trio.fail_after(20):
                await until(ev.VmLaunched.NAME)  # the replay of the past
                os.kill(int(launched["fields"]["pid"]), signal.SIGKILL)
                exited = await until(ev.VmExited.NAME)  # live, over the websocket
                assert exited["fields"]["vm"] == "alpha"  # type: ignore[index]
                await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["attempt"] == 2)
            seqs = [int(e["seq"]) for e in seen]  # type: ignore[call-overload]
            assert seqs == sorted(set(seqs))  # in order, none twice
            assert {e["fields"]["vm"] for e in seen} == {"alpha"}  # type: ignore[index]
        finally:
            follower.kill()
            with trio.move_on_after(5, shield=True):
                await follower.wait()


async def test_nothing_listening_is_exit_2_with_one_line(closed_port: int) -> None:
    result = await client("stop", "alpha", "--url", f"http://127.0.0.1:{closed_port}")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert "(connection refused): is frameos running? start it with `frameos run" in err


async def test_a_config_the_instance_uses_leads_the_client_to_it(
    tmp_path: Path, closed_port: int
) -> None:
    path = write_config(tmp_path, frame_port=closed_port)
    result = await client("restart", "alpha", "--config", str(path))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"cannot reach frameos at http://127.0.0.1:{closed_port} (connection refused)" in err
    assert f"`frameos run --config {path}`" in err
