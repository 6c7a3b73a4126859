"""contrib/systemd/frameos.service under the real systemd (SPEC §9, BARS R6).

One harness boot (`shared/tools/systemd-harness`) serves the whole module: the shipped unit,
with only its ExecStart paths pointed at this venv's `frameos` and a test config, plus a
drop-in that makes the harness able to run it (the venv under /tmp and its interpreter under
/root would be hidden by PrivateTmp/ProtectHome; StateDirectory would write to the host's
/var/lib) and scales the watchdog and restart delays down. The tests talk to that systemd with
the harness' `systemctl` and `journalctl` wrappers. systemd runs with `--log-level=debug`, so
its journal shows every notification it takes from frameos (all but WATCHDOG=1).

Two VMs, tiny shell loops: `calm` leaves on the cooperative SIGINT; `stubborn` ignores SIGINT
and SIGTERM, so it needs the whole ladder (1.5 s + 1.5 s + SIGKILL).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from frameos import events as ev
from tests.conftest import require, require_tools

SHUTDOWN_NAMES = {
    cls.NAME for cls in (ev.VmShutdownRequested, ev.VmShutdownEscalated, ev.VmShutdownComplete)
}

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[1]
SHIPPED_UNIT = REPO / "contrib/systemd/frameos.service"
SHIPPED_PROGRAM = "/usr/local/bin/frameos"
SHIPPED_CONFIG = "/etc/frameos/frame.json"
UNIT = "frameos.service"
HAS_WORKERS = importlib.util.find_spec("frameos.workers") is not None
needs_workers = pytest.mark.skipif(not HAS_WORKERS, reason="frameos.workers (SPEC §5) not built")


def harness_dir() -> Path:
    env = os.environ.get("FRAMEOS_SYSTEMD_HARNESS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared/tools/systemd-harness"


def frameos_program() -> Path:
    beside = Path(sys.executable).parent / "frameos"
    found = beside if beside.exists() else Path(shutil.which("frameos") or "frameos")
    return found.absolute()


def shell_vm(name: str, trap: str, timeouts: dict[str, int]) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["/bin/sh", "-c", f"{trap}; while :; do sleep 0.1; done"],
        "cooperative": {"method": "signal", "signal": "SIGINT"},
        "timeouts": timeouts,
        "restart": {"policy": "permanent"},
    }


def e2e_config(root: Path) -> dict[str, Any]:
    return {
        "frame_host": "127.0.0.1",
        "frame_port": 0,
        "heartbeat_interval": 0.5,
        "state_dir": str(root / "state"),
        "shutdown_timeout_s": 10,
        "vms": [
            shell_vm(
                "calm",
                "trap 'exit 0' INT TERM",
                {"cooperative_ms": 2000, "sigterm_ms": 2000, "sigkill_ms": 1000},
            ),
            shell_vm(
                "stubborn",
                "trap '' INT TERM",
                {"cooperative_ms": 1500, "sigterm_ms": 1500, "sigkill_ms": 1000},
            ),
        ],
    }


def drop_in(root: Path) -> str:
    return "\n".join(
        [
            "[Service]",
            "# The venv lives under /tmp and its interpreter under /root: keep them visible.",
            "PrivateTmp=no",
            "ProtectHome=read-only",
            f"ReadWritePaths={root}",
            "# The harness shares the host's filesystem: no /var/lib/frameos there.",
            "StateDirectory=",
            "# Harness scale.",
            "WatchdogSec=3s",
            "TimeoutAbortSec=2s",
            "RestartSec=1s",
            "LimitCORE=0",
            "",
        ]
    )


class Systemd:
    """The booted harness: its wrappers, the unit's properties, its journal."""

    def __init__(self, bin_dir: Path, units: Path, root: Path) -> None:
        self.bin_dir, self.units, self.root = bin_dir, units, root

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "systemctl"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def show(self) -> dict[str, str]:
        props = "ActiveState,SubState,Result,MainPID,NRestarts,StatusText,TimeoutStopUSec"
        out = self.systemctl("show", "-p", props, UNIT).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *match: str) -> list[str]:
        """The journal's messages about the unit (systemd's), or those matching `match`."""
        out = subprocess.run(
            [str(self.bin_dir / "journalctl"), *(match or ("-u", UNIT)), "-o", "cat", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.splitlines()

    def events(self) -> list[dict[str, Any]]:
        """The events of the latest frameos instance, from its stdout in the journal.

        Matched by identifier: in the harness' namespaces journald may file a stream's first
        lines under init.scope, so `-u` would miss them.
        """
        lines = self.journal("-t", "frameos")
        events = [json.loads(line) for line in lines if line.startswith('{"v":')]
        starts = [i for i, e in enumerate(events) if e["event"] == ev.RuntimeStart.NAME]
        return events[starts[-1] :] if starts else []

    def events_once(
        self, ok: Callable[[list[str]], bool], timeout: float = 10
    ) -> list[dict[str, Any]]:
        """The latest instance's events, once `ok(names)` holds (the journal lags a little)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if ok([e["event"] for e in events]):
                return events
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the journal did not show it within {timeout} s: "
                    f"{[e['event'] for e in events]}"
                )
            time.sleep(0.1)

    def notifications(self) -> list[str]:
        """What systemd logged receiving from the service (it logs these at debug level)."""
        pattern = re.compile(r"Got notification message from PID \d+ \((.*)\)$")
        return [m.group(1) for line in self.journal() if (m := pattern.search(line))]

    def unit_pids(self) -> set[int]:
        """The processes in the unit's cgroup (pids of the harness' namespace)."""
        group = self.systemctl("show", "-P", "ControlGroup", UNIT).stdout.strip()
        out = subprocess.run(
            [str(self.bin_dir / "nsrun"), "cat", f"/sys/fs/cgroup{group}/cgroup.procs"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return {int(pid) for pid in out.stdout.split()}

    def wait_for(
        self, what: str, ok: Callable[[dict[str, str]], bool], timeout: float = 20
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            props = self.show()
            if ok(props):
                return props
            if time.monotonic() > deadline:
                tail = "\n".join(self.journal()[-20:])
                pytest.fail(f"{what}: not within {timeout} s; last {props}; journal:\n{tail}")
            time.sleep(0.05)

    def ensure_active(self) -> dict[str, str]:
        props = self.show()
        if props["ActiveState"] != "active":
            self.systemctl("reset-failed", UNIT, check=False)
            self.systemctl("start", UNIT)
        return self.wait_for(
            "active", lambda p: (p["ActiveState"], p["SubState"]) == ("active", "running")
        )

    def set_drop_in(self, name: str, text: str | None) -> None:
        path = self.units / f"{UNIT}.d" / name
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        self.systemctl("daemon-reload")


@contextmanager
def booted(root: Path, config: Path, program: Path) -> Iterator[Systemd]:
    """The harness booted (`--no-start`) with the shipped unit reading `config` and running
    `program`; its wrappers handed out, the harness torn down at the end."""
    harness = harness_dir() / "run-unit-under-systemd.sh"
    require(os.geteuid() == 0, "root (the systemd harness needs CAP_SYS_ADMIN)")
    require(harness.is_file(), f"the systemd harness at {harness}")
    require(Path("/lib/systemd/systemd").exists(), "systemd (/lib/systemd/systemd)")
    require_tools("nsenter", "unshare")
    root.chmod(0o755)
    unit = root / UNIT
    unit.write_text(
        SHIPPED_UNIT.read_text()
        .replace(SHIPPED_PROGRAM, "@PROGRAM@")
        .replace(SHIPPED_CONFIG, str(config))
    )
    ready, done = root / "harness-ready", root / "harness-done"
    wait = (
        'echo "$HARNESS_DIR" > "$1.tmp" && mv "$1.tmp" "$1"; '
        'while [ ! -e "$2" ]; do sleep 0.1; done'
    )
    check = ["/bin/sh", "-c", wait, "sh", str(ready), str(done)]
    env = dict(os.environ, CHECK_TIMEOUT="150", SYSTEMD_ARGS="--log-level=debug")
    with (root / "harness.log").open("w") as log:
        proc = subprocess.Popen(
            [str(harness), "--no-start", str(unit), str(program), *check],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the harness did not boot:\n" + (root / "harness.log").read_text())
            time.sleep(0.05)
        hdir = Path(ready.read_text().strip())
        box = Systemd(hdir / "bin", hdir / "units", root)
        box.set_drop_in("test.conf", drop_in(root))
        yield box
    finally:
        done.touch()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the harness we started, and its helpers
            proc.wait()


@pytest.fixture(scope="module")
def systemd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Systemd]:
    """Boot the harness once for this module's tests."""
    require_tools("systemd-analyze")
    require(frameos_program().is_file(), f"the frameos entry point ({frameos_program()})")
    root = tmp_path_factory.mktemp("systemd-e2e")
    config = root / "frame.json"
    config.write_text(json.dumps(e2e_config(root)))
    with booted(root, config, frameos_program()) as box:
        yield box


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require_tools("systemd-analyze")
    # verify checks that ExecStart exists: point it at this venv's frameos, nothing else changes
    unit = tmp_path / UNIT
    unit.write_text(SHIPPED_UNIT.read_text().replace(SHIPPED_PROGRAM, str(frameos_program())))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_shipped_unit_settings() -> None:
    from frameos.config import FrameConfig

    settings = unit_settings(SHIPPED_UNIT.read_text())
    single = {key: values[-1] for key, values in settings.items()}
    assert single["Type"] == "notify"
    assert single["NotifyAccess"] == "main"
    assert single["KillMode"] == "mixed"
    assert single["Restart"] == "on-failure"
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert single["ExecStart"] == f"{SHIPPED_PROGRAM} run --config {SHIPPED_CONFIG} --output json"
    assert single["StateDirectory"] == "frameos"
    assert single["LoadCredential"].split(":")[0] == "frameos-token"
    assert single["WatchdogSec"] == "20s"
    # TimeoutStopSec above the whole inner stop (shutdown_timeout_s, which bounds every ladder)
    # plus the final event-log flush (5 s) and the stdout drain (3 s)
    stop_s = int(single["TimeoutStopSec"].removesuffix("s"))
    assert stop_s > FrameConfig().shutdown_timeout_s + 5 + 3
    assert {"/dev/kvm rw", "/dev/net/tun rw"} <= set(settings["DeviceAllow"])
    assert "PrivateDevices" not in settings  # would hide /dev/kvm
    assert "MemoryDenyWriteExecute" not in settings  # breaks QEMU's TCG JIT


def test_sample_config_for_etc_frameos_is_valid() -> None:
    from frameos.config import load_config

    config = load_config(REPO / "contrib/frame.json", {"STATE_DIRECTORY": "/var/lib/frameos"})
    assert str(config.state_dir) == "/var/lib/frameos"
    assert config.vms[0].cooperative_method == "qmp"
    assert config.vms[0].timeouts.total_ms / 1000 < config.shutdown_timeout_s


def test_activating_until_ready_then_active_with_status(systemd: Systemd) -> None:
    systemd.systemctl("start", "--no-block", UNIT)
    seen: list[dict[str, str]] = []

    def active(props: dict[str, str]) -> bool:
        seen.append(props)
        return props["ActiveState"] == "active"

    systemd.wait_for("active after READY=1", active)
    assert any(p["ActiveState"] == "activating" and p["MainPID"] != "0" for p in seen), seen
    props = systemd.wait_for("running", lambda p: p["SubState"] == "running")
    assert props["StatusText"] == (
        "2/2 VMs running · 0 watchers" if HAS_WORKERS else "running · no VMs · 0 watchers"
    )
    notes = systemd.notifications()
    ready_at = next(i for i, n in enumerate(notes) if n.startswith("READY=1"))
    assert notes[0].startswith("STATUS=starting")
    assert notes[ready_at] == f"READY=1, STATUS={props['StatusText']}"
    events = [e["event"] for e in systemd.events_once(lambda names: ev.RuntimeReady.NAME in names)]
    if HAS_WORKERS:
        assert events.count(ev.VmLaunched.NAME) == 2
        assert max(i for i, e in enumerate(events) if e == ev.VmLaunched.NAME) < events.index(
            ev.RuntimeReady.NAME
        )


def test_reload_goes_through_reloading_and_back_to_active(systemd: Systemd) -> None:
    systemd.ensure_active()
    before = len(systemd.notifications())
    systemd.systemctl("reload", UNIT)
    props = systemd.wait_for("active again", lambda p: p["SubState"] == "running")
    assert props["ActiveState"] == "active"
    deadline = time.monotonic() + 10
    while not any(n.startswith("READY=1") for n in systemd.notifications()[before:]):
        assert time.monotonic() < deadline, systemd.notifications()[before:]
        time.sleep(0.05)
    # STATUS lines and watchdog pings may come between the two (systemd logs a lone WATCHDOG=1
    # at debug level too): what matters is RELOADING=1 first, then READY=1
    noise = ("STATUS=", "WATCHDOG=1")
    notes = [n for n in systemd.notifications()[before:] if not n.startswith(noise)]
    assert re.fullmatch(
        r"RELOADING=1, MONOTONIC_USEC=\d+, STATUS=reloading configuration", notes[0]
    ), notes
    assert notes[1] == f"READY=1, STATUS={props['StatusText']}"
    systemd.events_once(lambda names: ev.RuntimeReload.NAME in names)


def test_a_frozen_process_is_restarted_by_the_watchdog(systemd: Systemd) -> None:
    before = systemd.ensure_active()
    old_vms = {e["fields"]["pid"] for e in systemd.events() if e["event"] == ev.VmLaunched.NAME}
    assert len(old_vms) == (2 if HAS_WORKERS else 0)
    systemd.systemctl("kill", "-s", "SIGSTOP", "--kill-who=main", UNIT)
    systemd.wait_for("Result=watchdog", lambda p: p["Result"] == "watchdog")
    after = systemd.wait_for(
        "restarted and running",
        lambda p: (
            p["SubState"] == "running"
            and p["MainPID"] != "0"
            and int(p["NRestarts"]) > int(before["NRestarts"])
        ),
    )
    assert after["MainPID"] != before["MainPID"]
    journal = "\n".join(systemd.journal())
    assert "Watchdog timeout (limit 3s)!" in journal
    assert "Failed with result 'watchdog'." in journal
    # the frozen instance's VMs went down with it (KillMode=mixed: SIGKILL for the rest)
    assert not old_vms & systemd.unit_pids()


@needs_workers
def test_stop_runs_the_ladder_within_timeout_stop_sec(systemd: Systemd) -> None:
    props = systemd.ensure_active()
    assert props["TimeoutStopUSec"] == "1min", props  # the shipped TimeoutStopSec=60s
    before = len(systemd.notifications())
    started = time.monotonic()
    systemd.systemctl("stop", UNIT)
    took = time.monotonic() - started
    props = systemd.show()
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success")
    assert 3.0 <= took < 60, took  # the stubborn VM's ladder ran, well inside TimeoutStopSec
    events = systemd.events_once(lambda names: ev.Summary.NAME in names)
    names = [e["event"] for e in events]
    stopping = names.index(ev.RuntimeStopping.NAME)
    ladder = [
        (e["event"], e["fields"].get("vm"), e["fields"].get("signal") or e["fields"].get("outcome"))
        for e in events[stopping:]
        if e["event"] in SHUTDOWN_NAMES
    ]
    assert (ev.VmShutdownComplete.NAME, "calm", "graceful") in ladder
    assert [step for step in ladder if step[1] == "stubborn"] == [
        (ev.VmShutdownRequested.NAME, "stubborn", None),
        (ev.VmShutdownEscalated.NAME, "stubborn", "SIGTERM"),
        (ev.VmShutdownEscalated.NAME, "stubborn", "SIGKILL"),
        (ev.VmShutdownComplete.NAME, "stubborn", "forced"),
    ]
    assert names[-2:] == [ev.RuntimeStop.NAME, ev.Summary.NAME]
    assert events[-1]["fields"]["exit_status"] == 0
    notes = systemd.notifications()[before:]
    assert notes[0] == "STOPPING=1, STATUS=stopping (received SIGTERM)"
    assert any("EXTEND_TIMEOUT_USEC=" in n for n in notes)


@needs_workers
def test_a_ladder_longer_than_timeout_stop_sec_is_extended_not_timed_out(systemd: Systemd) -> None:
    systemd.set_drop_in("short-stop.conf", "[Service]\nTimeoutStopSec=2s\n")
    try:
        props = systemd.ensure_active()
        assert props["TimeoutStopUSec"] == "2s"
        started = time.monotonic()
        systemd.systemctl("stop", UNIT)
        took = time.monotonic() - started
        props = systemd.show()
        assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props
        assert took > 2.5, took  # the ladder (≈ 3 s) outlasted TimeoutStopSec, extended
        events = systemd.events_once(lambda names: ev.Summary.NAME in names)
        complete = [e["fields"] for e in events if e["event"] == ev.VmShutdownComplete.NAME]
        assert {(f["vm"], f["outcome"]) for f in complete} == {
            ("calm", "graceful"),
            ("stubborn", "forced"),
        }
    finally:
        systemd.set_drop_in("short-stop.conf", None)
