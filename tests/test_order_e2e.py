"""`depends_on` and READY in the real `frameos run` (real processes, the real event log, HTTP).

`web` depends on `db` (ready: launched and bootstrapped; its bootstrap takes a moment) and on
`cache` (started). The start order is read from the events; a SIGTERM stops `web` first, then
the two it depends on. A dependency that never becomes ready keeps its dependant waiting,
/readyz says so, runtime:ready never comes, and the stop is still clean.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from frameos import events as ev
from tests.conftest import running_frameos, write_config

pytestmark = pytest.mark.e2e

SLEEPER = [
    sys.executable,
    "-c",
    "import signal, sys, time; signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); "
    "time.sleep(600)",
]


def sleeper(name: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": SLEEPER,
        "cooperative": {"method": "signal", "signal": "SIGINT"},
        "timeouts": {"cooperative_ms": 3000, "sigterm_ms": 2000, "sigkill_ms": 1000},
        **kw,
    }


def step(name: str, code: str) -> dict[str, Any]:
    return {"name": name, "command": [sys.executable, "-c", code], "timeout_ms": 10_000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seq_of(events: list[dict[str, Any]], cls: type[ev.Event], vm: str) -> int:
    return next(e["seq"] for e in events if e["event"] == cls.NAME and e["fields"].get("vm") == vm)


# A sleeper that says READY=1 once its SIGINT handler is set: ready means it would stop politely.
READY_SLEEPER = [
    sys.executable,
    "-c",
    "import os, signal, socket, sys, time; signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); "
    "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', "
    "os.environ['NOTIFY_SOCKET']); time.sleep(600)",
]


def ready_sleeper(name: str, **kw: Any) -> dict[str, Any]:
    # a generous cooperative rung: a loaded machine (coverage in every python) exits slowly
    timeouts = {"cooperative_ms": 10_000, "sigterm_ms": 2000, "sigkill_ms": 1000}
    return sleeper(
        name,
        command=READY_SLEEPER,
        health={"readiness": {"notify": True}},
        timeouts=timeouts,
        **kw,
    )


async def test_a_vm_starts_after_its_dependencies_and_stops_before_them(tmp_path: Path) -> None:
    db = ready_sleeper("db", bootstrap={"steps": [step("warm", "import time; time.sleep(0.5)")]})
    web = ready_sleeper("web", depends_on={"db": "ready", "cache": "started"})
    path = write_config(tmp_path, vms=[web, db, ready_sleeper("cache")])
    async with running_frameos(tmp_path, "run", "--config", str(path), "--output", "json") as fos:
        events = fos.events
        assert seq_of(events, ev.VmLaunched, "web") > seq_of(events, ev.BootstrapCompleted, "db")
        assert seq_of(events, ev.VmLaunched, "web") > seq_of(events, ev.VmLaunched, "cache")
        assert seq_of(events, ev.VmWaiting, "web") < seq_of(events, ev.VmLaunched, "web")
        waited = {
            (e["fields"]["on"], e["fields"]["condition"])
            for e in events
            if e["event"] == ev.VmWaiting.NAME
        }
        assert ("db", "ready") in waited
        ready = next(e["seq"] for e in events if e["event"] == ev.RuntimeReady.NAME)
        assert ready > seq_of(events, ev.VmLaunched, "web")
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    events = fos.events
    web_down = seq_of(events, ev.VmShutdownComplete, "web")
    assert seq_of(events, ev.VmShutdownRequested, "web") < web_down
    assert web_down < seq_of(events, ev.VmShutdownRequested, "db")
    assert web_down < seq_of(events, ev.VmShutdownRequested, "cache")
    outcomes = {
        e["fields"]["vm"]: e["fields"]["outcome"]
        for e in events
        if e["event"] == ev.VmShutdownComplete.NAME
    }
    ladders = [(e["event"], e["fields"]) for e in events if e["event"].startswith("vm.")]
    assert outcomes == {"web": "graceful", "db": "graceful", "cache": "graceful"}, ladders


async def test_a_dependency_that_never_becomes_ready_holds_back_its_dependant_and_ready(
    tmp_path: Path,
) -> None:
    db = sleeper("db", bootstrap={"steps": [step("broken", "raise SystemExit(1)")]})
    port = free_port()
    path = write_config(
        tmp_path, vms=[db, sleeper("web", depends_on={"db": "ready"})], frame_port=port
    )
    args = ("run", "--config", str(path), "--output", "json")
    async with running_frameos(tmp_path, *args, ready=False) as fos:
        url = f"http://127.0.0.1:{port}"
        serving = await fos.wait_for(ev.Message, lambda e: url in e["fields"]["text"])
        assert "vm web: waiting for db (ready)" in serving["fields"]["text"]
        await fos.wait_for(ev.BootstrapFailed)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            readyz = await http.get("/readyz")
            assert readyz.status_code == 503
            assert readyz.json()["reasons"] == [
                "starting",
                "vm db: bootstrap failed",
                "vm web: waiting for db (ready)",
            ]
            snapshot = (await http.get("/v1/vms/web")).json()
            assert (snapshot["state"], snapshot["waiting_for"]) == ("idle", "db (ready)")
        assert ev.RuntimeReady.NAME not in fos.names()
        assert ev.VmLaunched.NAME + ":web" not in {
            f"{e['event']}:{e['fields'].get('vm')}" for e in fos.events
        }
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    names = [(e["event"], e["fields"].get("vm")) for e in fos.events]
    assert (ev.VmShutdownComplete.NAME, "web") in names  # said, though it never ran
    assert ev.RuntimeReady.NAME not in fos.names()


NOTIFIER = [
    sys.executable,
    "-c",
    "import os, signal, socket, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\n"
    "time.sleep(1)\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
    "time.sleep(600)\n",
]


async def test_a_dependant_waits_for_its_dependencys_readiness_probe(tmp_path: Path) -> None:
    """`ready` of a VM with a readiness probe: its probe passed (here: READY=1 on its notify
    socket, a second after its launch), not merely launched."""
    api = sleeper("api", command=NOTIFIER, health={"readiness": {"notify": True}})
    path = write_config(tmp_path, vms=[api, sleeper("web", depends_on={"api": "ready"})])
    async with running_frameos(tmp_path, "run", "--config", str(path), "--output", "json") as fos:
        events = fos.events
        api_ready = seq_of(events, ev.VmReady, "api")
        assert seq_of(events, ev.VmLaunched, "api") < api_ready
        assert api_ready < seq_of(events, ev.VmLaunched, "web")
        ready = next(e for e in events if e["event"] == ev.VmReady.NAME)
        assert ready["fields"]["after_ms"] >= 1000  # it said READY=1 after a second
        runtime_ready = next(e["seq"] for e in events if e["event"] == ev.RuntimeReady.NAME)
        assert runtime_ready > seq_of(events, ev.VmReady, "web")
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
