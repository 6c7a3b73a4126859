"""Probes end to end with the real `frameos run` (SPEC §5.2): an http-probed VM that serves after a
delay, a `notify` VM that says READY=1 after a delay, a VM whose liveness fails and is restarted
through its ladder; the snapshots, /readyz and /metrics say so."""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import running_frameos, write_config

NOTIFY_LATER = (
    "import os, socket, time; time.sleep(0.4); "
    "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto("
    "b'STATUS=up\\nREADY=1', os.environ['NOTIFY_SOCKET']); time.sleep(600)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fields_of(events: list[dict[str, Any]], name: str, vm: str) -> list[dict[str, Any]]:
    return [e["fields"] for e in events if e["event"] == name and e["fields"].get("vm") == vm]


async def test_http_notify_and_liveness_probes_with_the_real_frameos(tmp_path: Path) -> None:
    port, dead_port = free_port(), free_port()
    serve_later = f"sleep 0.5; exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    vms = [
        {
            "name": "web",
            "command": ["sh", "-c", serve_later],
            "cwd": str(tmp_path),
            "health": {
                "readiness": {"http": {"url": f"http://127.0.0.1:{port}/"}, "period_ms": 100}
            },
        },
        {
            "name": "noted",
            "command": [sys.executable, "-c", NOTIFY_LATER],
            "health": {"readiness": {"notify": True}},
        },
        {
            "name": "sick",
            "command": ["sleep", "600"],
            "cooperative": {"method": "signal", "signal": "SIGTERM"},
            "restart": {"backoff_initial_ms": 100},
            "health": {
                "liveness": {
                    "tcp": {"port": dead_port},
                    "period_ms": 100,
                    "failure_threshold": 2,
                    "initial_delay_ms": 200,
                }
            },
        },
    ]
    config = write_config(tmp_path, vms=vms)
    args = ("run", "--config", str(config), "--output", "json")
    async with running_frameos(tmp_path, *args) as fos:
        web_ready = await fos.wait_for("vm.ready", lambda e: e["fields"]["vm"] == "web")
        noted_ready = await fos.wait_for("vm.ready", lambda e: e["fields"]["vm"] == "noted")
        relaunch = await fos.wait_for(
            "vm.launched", lambda e: e["fields"]["vm"] == "sick" and e["fields"]["attempt"] == 2
        )
        token = (tmp_path / "state" / "api-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=fos.url, timeout=10, headers=headers) as http:
            web = (await http.get("/v1/vms/web")).json()
            sick = (await http.get("/v1/vms/sick")).json()
            metrics = (await http.get("/metrics")).text
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    assert web_ready["fields"]["after_ms"] >= 500  # not before it served
    assert noted_ready["fields"]["after_ms"] >= 400  # not before READY=1
    assert web["health"]["ready"] and web["health"]["status"] == "ready"
    assert web["health"]["readiness"]["detail"] == "HTTP 200"
    assert sick["health"]["liveness"]["kind"] == "tcp"
    assert sick["health"]["probe_failures"] >= 2
    assert 'frameos_vm_probe_failures_total{vm="sick"}' in metrics
    events = fos.events
    assert [f["text"] for f in fields_of(events, "vm.status", "noted")] == ["up"]
    # the liveness failure: vm.health unhealthy (warn), then the ladder, then the policy
    sick_events = [e for e in events if e["fields"].get("vm") == "sick"]
    names = [e["event"] for e in sick_events]
    first_restart = names.index("vm.restart_scheduled")
    assert names[: first_restart + 1] == [
        "vm.launched",
        "vm.ready",
        "vm.health",
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_succeeded",
        "vm.shutdown_complete",
        "vm.exited",
        "vm.restart_scheduled",
    ]
    unhealthy = sick_events[2]
    assert unhealthy["severity"] == "warn"
    assert unhealthy["fields"]["status"] == "unhealthy"
    assert unhealthy["fields"]["failures"] == 2
    assert sick_events[3]["fields"]["reason"].startswith("liveness failed: connect 127.0.0.1:")
    assert sick_events[7]["fields"]["expected"] is False
    assert relaunch["fields"]["pid"] != sick_events[0]["fields"]["pid"]
    # the final stop goes through the ladder of each VM; no socket file is left behind
    assert not list((tmp_path / "state" / "vms").glob("*.notify"))
    json.dumps(events)  # every event is plain JSON
    await trio.lowlevel.checkpoint()
