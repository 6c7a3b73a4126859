"""The watch views' models and screens moved on by the events a real run publishes (bootstrap
steps, a give-up, a reload, a canceled run; a fleet host seen only by its heartbeat, a reload
that removes a VM), drawn by a recording rich Console: what the operator sees, without a
terminal."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
import trio
from rich.console import Console

from frameos import events as ev
from frameos.watch.fleet import FleetApp, FleetModel, Follower
from frameos.watch.model import Run
from tests.test_watch_fleet_view import URL as NATS_URL
from tests.test_watch_fleet_view import Hosts, ready, row
from tests.test_watch_fleet_view import text_of as fleet_text
from tests.test_watch_view import Feed, model, snap, text_of


def steps(*names: str) -> dict[str, Any]:
    return {"status": "none", "steps": [{"name": n, "status": "pending"} for n in names]}


def test_bootstrap_steps_move_on_one_at_a_time_to_ok() -> None:
    m = model(snap("alpha", bootstrap=steps("fetch", "unpack", "install")))
    feed = Feed(m)
    alpha = m.vms["alpha"]
    feed(ev.BootstrapStarted(vm="alpha", trigger="auto"))
    assert (alpha.bootstrap, alpha.steps) == (
        "running",
        [["fetch", "running"], ["unpack", "pending"], ["install", "pending"]],
    )
    for name in ("fetch", "unpack", "install"):
        feed(ev.BootstrapStep(vm="alpha", step=name, status="success", duration_ms=5, attempt=1))
    assert alpha.steps == [["fetch", "success"], ["unpack", "success"], ["install", "success"]]
    assert alpha.progress() == (3, 3, None)
    feed(ev.BootstrapCompleted(vm="alpha", status="success", duration_ms=20))
    assert alpha.bootstrap == "ok"
    row_text = next(line for line in text_of(m, 120).splitlines() if "alpha" in line)
    assert " ok " in f" {row_text} "


def test_a_bootstrap_without_steps_and_one_that_failed() -> None:
    m = model(snap("alpha", bootstrap={"status": "none", "steps": []}))
    feed = Feed(m)
    feed(ev.BootstrapStarted(vm="alpha", trigger="always"))
    assert (m.vms["alpha"].bootstrap, m.vms["alpha"].steps) == ("running", [])
    feed(ev.BootstrapFailed(vm="alpha", duration_ms=9, error="exit 2"))
    assert m.vms["alpha"].bootstrap == "failed"
    assert m.messages[-1].text == "alpha: bootstrap failed after 9 ms: exit 2"


def test_a_vm_that_gave_up_and_a_reload_that_asks_for_the_vms_again() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    m.stale = False
    feed(ev.VmGaveUp(vm="alpha", restarts=4, window_s=60))
    assert m.vms["alpha"].state == "gave_up" and not m.stale
    feed(ev.RuntimeReload(changed=["vms"], vms=ev.ReloadVms(added=["beta"])))
    assert m.stale  # the reload's VMs are only known from /v1/vms


def test_the_same_connection_text_again_does_not_redraw() -> None:
    m = model(snap("alpha"))
    m.dirty = False
    m.set_connection("connected")
    assert not m.dirty
    m.set_connection("disconnected (the connection closed); retrying in 0.2s")
    assert m.dirty


def test_a_canceled_run_says_why_and_a_run_without_detail_says_only_its_state() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    m.run = Run("stop", "alpha", run_id="r7", state="accepted")
    assert next(x for x in text_of(m, 100).splitlines() if x.startswith("stop alpha")) == (
        "stop alpha: accepted"
    )
    feed(ev.CommandCanceled(run_id="r7", reason="a stop won"))
    assert (m.run.state, m.run.detail) == ("canceled", "a stop won")
    assert "stop alpha: canceled — a stop won" in text_of(m, 100).splitlines()


def test_the_help_screen_lists_the_keys() -> None:
    m = model(snap("alpha"))
    m.help = True
    lines = [line.strip() for line in text_of(m, 120).splitlines()]
    assert "frameos watch: keys" in lines
    assert any(line.startswith("enter") and "the VM's detail" in line for line in lines)
    assert lines[-1] == "any key: back"


def test_the_filter_being_typed_is_the_footer() -> None:
    m = model(snap("alpha"))
    m.editing_filter, m.filter = True, "alp"
    assert text_of(m, 100).splitlines()[-1].strip() == "filter: alp▏"


def test_the_detail_names_the_bootstrap_steps_of_the_config() -> None:
    config = {
        "kind": "process",
        "command": ["sleep", "600"],
        "restart": {"policy": "always", "max_restarts": 5},
        "bootstrap": {"steps": [{"name": "fetch", "run": ["true"]}, "unpack"]},
    }
    m = model(snap("alpha", config=config))
    m.detail = True
    lines = [line.strip() for line in text_of(m, 100).splitlines()]
    assert "bootstrap  fetch, unpack" in lines
    assert "command    sleep 600" in lines
    assert "restart    policy always, max_restarts 5" in lines
    m.vms["alpha"].config = {**config, "bootstrap": {"steps": []}}
    assert "bootstrap  -" in [line.strip() for line in text_of(m, 100).splitlines()]


# --- the fleet view -----------------------------------------------------------------------------


def test_a_host_seen_first_by_its_heartbeat_can_be_opened() -> None:
    fleet = FleetModel(NATS_URL)
    send = Hosts(fleet)
    heartbeat = ev.RuntimeHeartbeat(uptime_seconds=50, server="http://10.0.0.2:8787", loop_lag_ms=1)
    send("h1", heartbeat, "debug")
    assert fleet.hosts["h1"].url == "http://10.0.0.2:8787"
    assert fleet.hosts["h1"].last is None  # a debug event is not its "last event"
    send("h1", ev.RuntimeHeartbeat(uptime_seconds=60, server="http://elsewhere", loop_lag_ms=1))
    assert fleet.hosts["h1"].url == "http://10.0.0.2:8787"  # known once: kept
    assert fleet.key("x") is None  # a key the fleet does not use opens nothing
    assert fleet.key("enter") is fleet.hosts["h1"]


def test_a_reload_that_removes_a_vm_takes_it_off_the_row() -> None:
    fleet = FleetModel(NATS_URL)
    send = Hosts(fleet)
    ready(send, "h1", 8001, "alpha", "beta")
    send("h1", ev.VmOverlayPrepared(vm="gamma", overlay_path="/o", base_image="/b"))
    assert fleet.hosts["h1"].vms == {"alpha": "running", "beta": "running", "gamma": "idle"}
    send("h1", ev.RuntimeReload(changed=["vms"], vms=ev.ReloadVms(updated=["alpha"])))
    assert set(fleet.hosts["h1"].vms) == {"alpha", "beta", "gamma"}
    send("h1", ev.RuntimeReload(changed=["vms"], vms=ev.ReloadVms(removed=["beta", "zeta"])))
    assert fleet.hosts["h1"].vms == {"alpha": "running", "gamma": "idle"}
    assert row(fleet_text(fleet), "h1")[:4] == ["h1", "ready", "running", "1/2"]


def test_a_follower_stopped_before_it_ran_never_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    import frameos.forward.follow

    called: list[str] = []

    async def follow(url: str, *args: Any, **kwargs: Any) -> None:  # pragma: no cover
        called.append(url)

    monkeypatch.setattr(frameos.forward.follow, "follow", follow)
    fleet = FleetModel(NATS_URL)
    follower = Follower(NATS_URL, fleet)
    follower.stop()  # before its loop exists: nothing to cancel
    thread = threading.Thread(target=follower.run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert called == [] and fleet.connection == "connecting"


def test_the_fleet_view_ends_when_the_keys_do() -> None:
    """stdin closed (the terminal went away): the fleet screen ends, exit 0."""
    fleet = FleetModel(NATS_URL)

    async def open_host(host: Any, keys: Any) -> None:  # pragma: no cover
        raise AssertionError("nothing was chosen")

    async def main() -> int:
        console = Console(width=100, force_terminal=True, file=io.StringIO())
        send_keys, keys = trio.open_memory_channel[str](4)
        send_keys.send_nowait("down")
        send_keys.close()
        with trio.fail_after(10):
            return await FleetApp(fleet, open_host, console=console).run(keys)

    assert trio.run(main) == 0
