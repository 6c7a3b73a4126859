"""The fleet view (`frameos watch --from nats://…`) without a terminal or a broker: the model moved
on by envelopes as the follower hands them over, drawn by a recording rich Console; the keys
through the channel the screens share."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from rich.console import Console

from frameos import events as ev
from frameos.envelope import encode
from frameos.watch.fleet import FleetApp, FleetModel, Host
from frameos.watch.fleet_view import fleet_screen

URL = "nats://127.0.0.1:4222"


class Hosts:
    """Envelopes with each host's own increasing seqs, applied to the model."""

    def __init__(self, model: FleetModel) -> None:
        self.model, self.seqs = model, dict[str, int]()

    def __call__(self, host: str, event: ev.Event, severity: Any = None) -> None:
        self.seqs[host] = self.seqs.get(host, 0) + 1
        self.model.apply(host, encode(event, self.seqs[host], time.time(), severity))


def ready(send: Hosts, host: str, port: int, *vms: str) -> None:
    send(
        host,
        ev.RuntimeStart(server="http://127.0.0.1:0", apps_loaded=0, scenes_loaded=0, config="c"),
    )
    for index, vm in enumerate(vms):
        send(host, ev.VmLaunched(vm=vm, pid=100 + index, attempt=1))
    send(
        host,
        ev.RuntimeReady(
            server=f"http://127.0.0.1:{port}",
            health_endpoint="/healthz",
            event_stream_transport="websocket",
            metrics_interval_seconds=60,
            apps_loaded=0,
            scenes_loaded=0,
        ),
    )


def text_of(model: FleetModel, width: int = 120) -> str:
    console = Console(width=width, force_terminal=True, record=True, file=io.StringIO())
    console.print(fleet_screen(model, width, time.time()))
    return console.export_text()


def row(text: str, host: str) -> list[str]:
    line = next(line for line in text.splitlines() if line[2:].startswith(host + " "))
    return line[2:].split()


def test_one_row_per_host_with_readiness_vms_and_the_last_event() -> None:
    model = FleetModel(URL)
    send = Hosts(model)
    ready(send, "h2", 8002, "alpha", "beta")
    ready(send, "h1", 8001, "gamma")
    send(
        "h2", ev.VmExited(vm="beta", pid=101, exit_code=1, signal=None, uptime_ms=5, expected=False)
    )
    send("h2", ev.VmRestartScheduled(vm="beta", attempt=2, backoff_ms=500))
    send("h1", ev.RuntimeHeartbeat(uptime_seconds=1, server="http://127.0.0.1:8001", loop_lag_ms=0))
    model.set_connection("connected")
    text = text_of(model)
    lines = text.splitlines()
    assert lines[0].startswith(f"frameos fleet {URL}  2 hosts  connected"), lines[0]
    assert "HOST" in lines[2] and "READY" in lines[2] and "LAST EVENT" in lines[2]
    assert lines[3].startswith("> h1 ") and lines[4].startswith("  h2 ")  # sorted, h1 selected
    assert row(text, "h1")[:4] == ["h1", "ready", "running", "1/1"]
    assert row(text, "h2")[:4] == ["h2", "ready", "running", "1/2"]
    assert "beta" in lines[4].split("ago", 1)[1]  # its last event
    assert "heartbeat" not in lines[3]  # a heartbeat is not a host's last event
    assert model.hosts["h1"].url == "http://127.0.0.1:8001"


def test_a_stop_a_restart_and_an_old_event_again() -> None:
    model = FleetModel(URL)
    send = Hosts(model)
    ready(send, "h1", 8001, "alpha")
    send("h1", ev.RuntimeStopping(reason="SIGTERM"))
    send("h1", ev.VmShutdownComplete(vm="alpha", outcome="graceful", total_ms=3, changed=True))
    stop = ev.RuntimeStop(
        server="http://127.0.0.1:8001",
        metrics_interval_seconds=60,
        apps_loaded=0,
        scenes_loaded=0,
        duration_ms=9,
    )
    send("h1", stop)
    host = model.hosts["h1"]
    assert (host.ready, host.state, host.running, len(host.vms)) == (False, "stopped", 0, 1)
    assert row(text_of(model), "h1")[:4] == ["h1", "not", "ready", "stopped"]
    seq = host.seq
    model.apply("h1", encode(ev.Message(text="seen before"), 3, time.time()))  # a re-follow
    assert host.seq == seq and "seen before" not in text_of(model)
    send(
        "h1",
        ev.RuntimeStart(server="http://127.0.0.1:0", apps_loaded=0, scenes_loaded=0, config="c"),
    )
    assert host.url is None and host.state == "starting"  # its new port: at runtime:ready


def test_no_host_yet_says_so() -> None:
    assert "no host has forwarded an event" in text_of(FleetModel(URL))


def test_enter_opens_the_selected_host_and_q_quits() -> None:
    model = FleetModel(URL)
    send = Hosts(model)
    ready(send, "h1", 8001)
    send("h2", ev.Message(text="h2 seen mid-run, before its heartbeat"))
    opened: list[str] = []

    async def open_host(host: Host, keys: AsyncIterator[str]) -> None:
        opened.append(host.name)
        async for key in keys:  # the host's view reads the same keys until it goes back
            if key == "esc":
                return

    async def main() -> int:
        console = Console(width=100, force_terminal=True, file=io.StringIO())
        app = FleetApp(model, open_host, console=console)
        send_keys, keys = trio.open_memory_channel[str](16)
        for key in ("down", "enter", "up", "enter", "x", "esc", "enter", "esc", "q"):
            send_keys.send_nowait(key)
        with trio.fail_after(10):
            return await app.run(keys)

    assert trio.run(main) == 0
    assert opened == ["h1", "h1"]  # h2's URL is not known: enter said so, opened nothing
    assert model.note == ""  # gone at the next key
    model.key("down")
    assert model.key("enter") is None and "h2: its URL is not known yet" in model.note
