"""When READY=1 goes out, under the real systemd (SPEC §9; the harness of test_systemd_e2e.py).

- a VM slow to become ready (its bootstrap takes ~2 s): the unit stays `activating`, STATUS says
  what it waits for, READY=1 comes after that bootstrap completed;
- a VM that gives up (`on_exhausted: stay`): READY=1 goes out, STATUS says "degraded" and names
  it, /readyz stays 503;
- a VM that never becomes ready: no READY=1, TimeoutStartSec ends the start (`Result=timeout`).

The unit is the shipped one; the config file it reads is rewritten before each start. Without
the `frameos` entry point in the venv (a checkout, not an install), a wrapper runs
`python -m frameos` from this checkout.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frameos import events as ev
from tests.test_systemd_e2e import REPO, UNIT, Systemd, booted

pytestmark = pytest.mark.systemd


def program(root: Path) -> Path:
    """The venv's `frameos`, or a wrapper running this checkout's `python -m frameos`."""
    beside = Path(sys.executable).parent / "frameos"
    if beside.is_file():
        return beside.absolute()
    wrapper = root / "frameos"
    wrapper.write_text(
        f'#!/bin/sh\ncd {REPO} || exit 1\nexec {Path(sys.executable).absolute()} -m frameos "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def shell_vm(name: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["/bin/sh", "-c", "trap 'exit 0' INT TERM; while :; do sleep 0.1; done"],
        "cooperative": {"method": "signal", "signal": "SIGINT"},
        "timeouts": {"cooperative_ms": 2000, "sigterm_ms": 1000, "sigkill_ms": 1000},
        **kw,
    }


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Systemd, Path]]:
    """The harness booted once (`--no-start`); yields it and the config path the unit reads."""
    root = tmp_path_factory.mktemp("ready-systemd")
    config = root / "frame.json"
    with booted(root, config, program(root)) as systemd:
        yield systemd, config


def start_with(systemd: Systemd, config: Path, vms: list[dict[str, Any]]) -> int:
    """A fresh start of the unit on a config with `vms`; the notifications seen before it."""
    systemd.systemctl("stop", UNIT, check=False)
    systemd.systemctl("reset-failed", UNIT, check=False)
    config.write_text(
        json.dumps(
            {
                "frame_port": 0,
                "heartbeat_interval": 0.5,
                "state_dir": str(config.parent / "state"),
                "shutdown_timeout_s": 10,
                "vms": vms,
            }
        )
    )
    before = len(systemd.notifications())
    systemd.systemctl("start", "--no-block", UNIT)
    return before


def test_ready_waits_for_a_vm_slow_to_be_ready(box: tuple[Systemd, Path]) -> None:
    systemd, config = box
    step = {"name": "warm-up", "command": ["/bin/sleep", "2"], "timeout_ms": 20_000}
    slow = shell_vm("slow", bootstrap={"steps": [step]})
    before = start_with(systemd, config, [shell_vm("quick"), slow])
    waiting = systemd.wait_for(
        "activating, waiting for slow",
        lambda p: (
            p["ActiveState"] == "activating" and "vm slow: bootstrap running" in p["StatusText"]
        ),
    )
    assert waiting["StatusText"].startswith("starting · 2/2 VMs launched · not ready: ")
    props = systemd.wait_for("active after READY=1", lambda p: p["SubState"] == "running")
    assert props["StatusText"] == "2/2 VMs running · 0 watchers"
    events = systemd.events_once(lambda names: ev.RuntimeReady.NAME in names)
    names = [(e["event"], e["fields"].get("vm")) for e in events]
    completed = names.index((ev.BootstrapCompleted.NAME, "slow"))
    assert completed < names.index((ev.RuntimeReady.NAME, None))
    launched = [e for e in events if e["event"] == ev.VmLaunched.NAME]
    ready = next(e for e in events if e["event"] == ev.RuntimeReady.NAME)
    assert ready["timestamp"] - max(e["timestamp"] for e in launched) >= 1.9  # the bootstrap
    readies = [n for n in systemd.notifications()[before:] if n.startswith("READY=1")]
    assert readies == [f"READY=1, STATUS={props['StatusText']}"]


def test_a_vm_that_gave_up_makes_ready_degraded(box: tuple[Systemd, Path]) -> None:
    systemd, config = box
    crashy = shell_vm(
        "crashy",
        command=["/bin/sh", "-c", "exit 3"],
        restart={"max_restarts": 1, "backoff_initial_ms": 200, "on_exhausted": "stay"},
    )
    start_with(systemd, config, [shell_vm("fine"), crashy])
    props = systemd.wait_for("active after READY=1", lambda p: p["SubState"] == "running")
    assert props["StatusText"].startswith("degraded: vm crashy: gave up · 1/2 VMs running")
    events = systemd.events_once(lambda names: ev.RuntimeReady.NAME in names)
    names = [(e["event"], e["fields"].get("vm")) for e in events]
    assert names.index((ev.VmGaveUp.NAME, "crashy")) < names.index((ev.RuntimeReady.NAME, None))
    ready = next(e for e in events if e["event"] == ev.RuntimeReady.NAME)
    with pytest.raises(urllib.error.HTTPError) as answer:  # the harness shares the network
        urllib.request.urlopen(ready["fields"]["server"] + "/readyz", timeout=10)
    assert answer.value.code == 503
    assert json.loads(answer.value.read())["reasons"] == ["vm crashy: gave up"]


def test_a_vm_never_ready_ends_in_timeout_start_sec(box: tuple[Systemd, Path]) -> None:
    systemd, config = box
    systemd.set_drop_in("short-start.conf", "[Service]\nTimeoutStartSec=4s\nRestart=no\n")
    try:
        broken = {"name": "broken", "command": ["/bin/false"], "timeout_ms": 5000}
        before = start_with(systemd, config, [shell_vm("never", bootstrap={"steps": [broken]})])
        seen: list[dict[str, str]] = []

        def failed(props: dict[str, str]) -> bool:
            seen.append(props)
            return props["Result"] == "timeout" and props["ActiveState"] in ("inactive", "failed")

        systemd.wait_for("start timed out", failed, timeout=30)
        assert any("vm never: bootstrap failed" in p["StatusText"] for p in seen), seen
        assert not [n for n in systemd.notifications()[before:] if n.startswith("READY=1")]
        events = systemd.events_once(lambda names: ev.Summary.NAME in names)
        names = [e["event"] for e in events]
        assert ev.RuntimeReady.NAME not in names
        assert ev.BootstrapFailed.NAME in names
        assert "Failed with result 'timeout'." in "\n".join(systemd.journal())
    finally:
        systemd.set_drop_in("short-start.conf", None)
        systemd.systemctl("reset-failed", UNIT, check=False)
