"""End to end: the real `frameos run` supervising real processes, read through its JSON lines,
its HTTP surface and /proc (SPEC §5, §7.1; BARS R2, R4)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from frameos.workers import procfs
from tests.conftest import Frameos, require_tools, running_frameos, write_config

pytestmark = pytest.mark.e2e
QUICK = {"cooperative_ms": 500, "sigterm_ms": 500, "sigkill_ms": 1000}
# sh with a grandchild: exits on SIGINT/SIGTERM (its background sleep ignores SIGINT)
POLITE_SH = ["sh", "-c", "trap 'exit 0' INT TERM; sleep 1000 & wait"]


def stubborn_sh(pidfile: Path) -> list[str]:
    """Ignores SIGTERM and SIGINT, and so does its grandchild (ignored signals are inherited)."""
    return ["sh", "-c", f"trap '' TERM INT; sleep 1000 & echo $! > {pidfile}; wait"]


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever happened (orphans must not leak)."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


async def get(url: str) -> tuple[int, dict[str, Any]]:
    def fetch() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await trio.to_thread.run_sync(fetch)


async def get_text(url: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    return await trio.to_thread.run_sync(fetch)


async def gone(*pids: int) -> None:
    """SIGKILL lands asynchronously: allow the kernel a moment before calling it a survivor."""
    with trio.fail_after(2):
        while any(procfs.is_alive(pid) for pid in pids):
            await trio.sleep(0.01)


async def environ(pid: int) -> list[bytes]:
    """The process's environment; empty for a moment right after its exec, so read again."""
    with trio.fail_after(5):
        while not (data := Path(f"/proc/{pid}/environ").read_bytes()):
            await trio.sleep(0.005)
    return data.split(b"\0")


def fields(fos: Frameos, name: str, vm: str | None = None) -> list[dict[str, Any]]:
    return [
        e["fields"]
        for e in fos.events
        if e["event"] == name and (vm is None or e["fields"].get("vm") == vm)
    ]


def run_args(path: Path) -> tuple[str, ...]:
    return ("run", "--config", str(path), "--output", "json")


def launched_pids(fos: Frameos, reaper: list[int]) -> dict[str, int]:
    pids = {f["vm"]: f["pid"] for f in fields(fos, "vm.launched")}
    reaper.extend(pids.values())
    return pids


async def test_crash_loop_bad_input_and_bystanders(tmp_path: Path, reaper: list[int]) -> None:
    vms = [
        {
            "name": "crashy",
            "command": ["sh", "-c", "exit 7"],
            "timeouts": QUICK,
            "restart": {"backoff_initial_ms": 100, "backoff_max_ms": 400, "max_restarts": 4},
        },
        {
            "name": "steady",
            "command": POLITE_SH,
            "timeouts": QUICK,
            "cooperative": {"method": "signal"},
        },
        {
            "name": "nocmd",
            "command": ["/nonexistent/prog"],
            "restart": {"policy": "temporary"},
            "timeouts": QUICK,
        },
        {
            "name": "nobase",
            "command": ["sh", "-c", "sleep 1000", "{overlay}"],
            "timeouts": QUICK,
            "base_image": "/nonexistent/base.qcow2",
            "restart": {"policy": "temporary"},
        },
        {
            "name": "hangboot",
            "command": POLITE_SH,
            "timeouts": QUICK,
            "cooperative": {"method": "signal"},
            "bootstrap": {
                "trigger": "always",
                "steps": [
                    {
                        "name": "hang",
                        "command": ["sh", "-c", "echo waiting; exec sleep 1000"],
                        "timeout_ms": 500,
                    }
                ],
            },
        },
    ]
    # hangboot's bootstrap fails: never ready, so runtime:ready never comes (SPEC §9): the port
    # is chosen here, and `serving …` says the server is up
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    path = write_config(tmp_path, vms=vms, shutdown_timeout_s=10, frame_port=port)
    async with running_frameos(tmp_path, *run_args(path), ready=False) as fos:
        await fos.wait_for("message", lambda e: e["fields"]["text"].startswith(f"serving {url}"))
        launched_pids(fos, reaper)
        await fos.wait_for("vm.gave_up")
        await fos.wait_for("bootstrap.failed")
        launched_pids(fos, reaper)
        assert [f["backoff_ms"] for f in fields(fos, "vm.restart_scheduled", "crashy")] == [
            100,
            200,
            400,
            400,
        ]
        assert fields(fos, "vm.gave_up") == [{"vm": "crashy", "restarts": 4, "window_s": 60.0}]
        texts = [f["text"] for f in fields(fos, "message")]
        assert any(
            "nocmd: launch 1 failed: command '/nonexistent/prog' not found" in t for t in texts
        )
        assert any(
            "nobase: launch 1 failed: base image /nonexistent/base.qcow2 does not exist" in t
            for t in texts
        )
        (step,) = fields(fos, "bootstrap.step", "hangboot")
        assert step["detail"] == "timed out after 500 ms; last output:\nwaiting"
        assert len(fields(fos, "vm.launched", "steady")) == 1
        status, ready = await get(url + "/readyz")
        assert status == 503
        assert ready["reasons"] == [
            "starting",
            "vm crashy: gave up",
            "vm hangboot: bootstrap failed",
        ]
        assert "runtime:ready" not in fos.names()
        _, health = await get(url + "/healthz")
        assert health["workers"] == {"total": 5, "running": 2, "failed": 3}
        metrics = await get_text(url + "/metrics")
        assert 'frameos_vm_restarts_total{vm="crashy"} 4.0' in metrics
        assert 'frameos_vm_state{state="running",vm="steady"} 1.0' in metrics
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    (summary,) = fields(fos, "summary")
    assert (summary["restarts"], summary["vms"], summary["exit_status"]) == (4, 5, 0)
    assert fields(fos, "vm.shutdown_complete", "steady")[0]["outcome"] == "graceful"
    assert not list((tmp_path / "state" / "vms").glob("*.pid"))


async def test_sigkilled_child_restarts_and_stubborn_group_dies(
    tmp_path: Path, reaper: list[int]
) -> None:
    gc_file = tmp_path / "grandchild.pid"
    vms = [
        {
            "name": "victim",
            "command": POLITE_SH,
            "cooperative": {"method": "signal"},
            "timeouts": QUICK,
            "restart": {"backoff_initial_ms": 0},
        },
        {
            "name": "stubborn",
            "command": stubborn_sh(gc_file),
            "cooperative": {"method": "none"},
            "timeouts": {"cooperative_ms": 500, "sigterm_ms": 300, "sigkill_ms": 1000},
        },
    ]
    path = write_config(tmp_path, vms=vms, shutdown_timeout_s=10)
    async with running_frameos(tmp_path, *run_args(path)) as fos:
        pids = launched_pids(fos, reaper)
        with trio.fail_after(5):
            while len(procfs.group_members(pids["victim"])) < 2 or not gc_file.exists():
                await trio.sleep(0.01)
        old_group = [m.pid for m in procfs.group_members(pids["victim"])]
        os.kill(pids["victim"], signal.SIGKILL)
        exited = await fos.wait_for("vm.exited", lambda e: e["fields"]["vm"] == "victim")
        assert (exited["fields"]["signal"], exited["fields"]["expected"]) == ("SIGKILL", False)
        relaunch = await fos.wait_for("vm.launched", lambda e: e["fields"]["attempt"] == 2)
        assert relaunch["timestamp"] - exited["timestamp"] < 1.0
        reaper.append(relaunch["fields"]["pid"])
        await gone(*old_group)  # the grandchild too
        grandchild = int(gc_file.read_text())
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    stubborn = [e["event"] for e in fos.events if e["fields"].get("vm") == "stubborn"]
    assert stubborn[:2] == ["vm.launched", "vm.ready"]
    assert stubborn[2:] == [
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_timed_out",
        "vm.shutdown_escalated",
        "vm.shutdown_escalated",
        "vm.shutdown_complete",
        "vm.exited",
    ]
    (done,) = fields(fos, "vm.shutdown_complete", "stubborn")
    assert done["outcome"] == "forced"
    assert fields(fos, "vm.cooperative_timed_out", "stubborn")[0]["reason"] == (
        "channel_unavailable"
    )
    await gone(pids["stubborn"], grandchild)


async def test_killed_frameos_leaves_no_orphans(tmp_path: Path, reaper: list[int]) -> None:
    require_tools("qemu-img")
    base = tmp_path / "base.qcow2"
    await trio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"])
    gc_file = tmp_path / "grandchild.pid"
    vms = [
        {
            "name": "disk",
            "command": [*stubborn_sh(gc_file), "disk", "{overlay}"],
            "base_image": str(base),
            "cooperative": {"method": "none"},
            "timeouts": {"cooperative_ms": 0, "sigterm_ms": 300, "sigkill_ms": 1000},
        },
        {
            "name": "polite",
            "command": [
                sys.executable,
                "-c",
                "import signal, sys, time\n"
                "signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\ntime.sleep(1000)",
            ],
            "cooperative": {"method": "signal"},
            "timeouts": QUICK,
        },
    ]
    path = write_config(tmp_path, vms=vms, shutdown_timeout_s=10)
    overlay = tmp_path / "state" / "overlays" / "disk.qcow2"
    async with running_frameos(tmp_path, *run_args(path)) as first:
        pids = launched_pids(first, reaper)
        with trio.fail_after(5):
            while not gc_file.exists():
                await trio.sleep(0.01)
        old = {pid for pgid in pids.values() for pid in (m.pid for m in procfs.group_members(pgid))}
        first.send(signal.SIGKILL)
        await first.wait_exit()
    assert len(old) == 3
    assert all(procfs.is_alive(pid) for pid in old)  # orphans now
    assert overlay.exists()
    async with running_frameos(tmp_path, *run_args(path)) as second:
        launched_pids(second, reaper)
        assert not any(procfs.is_alive(pid) for pid in old)
        texts = [f["text"] for f in fields(second, "message")]
        assert sum("left running by a previous frameos" in t for t in texts) == 2
        assert fields(second, "vm.shutdown_requested", "disk")[0]["reason"] == (
            "orphan of a previous frameos instance"
        )
        assert fields(second, "vm.shutdown_complete", "polite")[0]["outcome"] == "graceful"
        assert fields(second, "vm.shutdown_complete", "disk")[0]["outcome"] == "forced"
        (discarded,) = fields(second, "vm.layer_discarded", "disk")
        assert (discarded["reason"], discarded["overlay_path"]) == ("orphan", str(overlay))
        assert discarded["reclaimed_bytes"] > 0
        assert overlay.exists()  # the new launch's fresh one
        second.send(signal.SIGTERM)
        assert await second.wait_exit() == 0
    assert fields(second, "vm.layer_discarded", "disk")[-1]["reason"] == "shutdown"
    assert not overlay.exists()
    assert not list((tmp_path / "state" / "vms").glob("*.pid"))


async def test_on_exhausted_exit_stops_the_service(tmp_path: Path, reaper: list[int]) -> None:
    vms = [
        {
            "name": "fatal",
            "command": ["sh", "-c", "exit 1"],
            "timeouts": QUICK,
            "restart": {"backoff_initial_ms": 50, "max_restarts": 1, "on_exhausted": "exit"},
        },
        {
            "name": "bystander",
            "command": POLITE_SH,
            "cooperative": {"method": "signal"},
            "timeouts": QUICK,
        },
    ]
    path = write_config(tmp_path, vms=vms, shutdown_timeout_s=10)
    async with running_frameos(tmp_path, *run_args(path), ready=False) as fos:
        assert await fos.wait_exit() == 3
    reaper.extend(f["pid"] for f in fields(fos, "vm.launched"))
    (stopping,) = fields(fos, "runtime:stopping")
    assert stopping["reason"] == "vm fatal gave up after 1 restarts in 60 s"
    assert fields(fos, "vm.shutdown_complete", "bystander")[0]["outcome"] == "graceful"
    assert fields(fos, "summary")[0]["exit_status"] == 3


@pytest.mark.parametrize(
    ("vms", "where", "what"),
    [
        (
            [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}],
            "vms[1].name",
            "duplicate VM name 'a'",
        ),
        (
            [{"name": "a", "command": ["x"], "timeouts": {"sigkill_ms": 10}}],
            "vms[0].timeouts.sigkill_ms",
            "expected a value ≥ 1000, found 10",
        ),
        (
            [{"name": "a", "command": ["x"], "timeouts": {"cooperative_ms": 60_000}}],
            "vms[0].timeouts",
            "the stop ladder takes up to 75 s, which does not fit in shutdown_timeout_s (40 s)",
        ),
    ],
)
def test_bad_vm_config_is_refused(
    tmp_path: Path, vms: list[dict[str, Any]], where: str, what: str
) -> None:
    path = write_config(tmp_path, vms=vms)
    for command in ("check", "run"):
        out = subprocess.run(
            [sys.executable, "-m", "frameos", command, "--config", str(path), "--output", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 1
        assert f"{where}: {what}" in out.stderr
        assert "Traceback" not in out.stderr


async def test_demo_shows_the_whole_lifecycle(tmp_path: Path, reaper: list[int]) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "FRAMEOS_DEMO_PORT": "0"}
    async with running_frameos(tmp_path, "run", "--demo", "--output", "json", env=env) as fos:
        launched_pids(fos, reaper)
        await fos.wait_for("bootstrap.completed")
        status, ready = await get(fos.url + "/readyz")
        assert (status, ready["reasons"]) == (200, [])
        fos.send(signal.SIGINT)
        assert await fos.wait_exit() == 0
    assert fields(fos, "vm.shutdown_complete", "demo-polite")[0]["outcome"] == "graceful"
    stubborn = fields(fos, "vm.cooperative_timed_out", "demo-stubborn")
    assert stubborn[0]["reason"] == "timeout_expired"
    assert fields(fos, "vm.shutdown_complete", "demo-stubborn")[0]["outcome"] == "forced"
    assert [f["status"] for f in fields(fos, "bootstrap.step")] == ["success", "success"]


async def test_sighup_reloads_by_diff(tmp_path: Path, reaper: list[int]) -> None:
    """SPEC §5.1 end to end: the real `frameos run`, a new config, SIGHUP; pids in /proc."""

    def polite(name: str, **kw: Any) -> dict[str, Any]:
        return {
            "name": name,
            "command": POLITE_SH,
            "timeouts": QUICK,
            "cooperative": {"method": "signal"},
            **kw,
        }

    path = write_config(
        tmp_path, vms=[polite("same"), polite("env", env={"V": "1"}), polite("gone")]
    )
    async with running_frameos(tmp_path, *run_args(path)) as fos:
        await fos.wait_for("runtime:ready")
        before = launched_pids(fos, reaper)
        assert set(before) == {"same", "env", "gone"}
        write_config(
            tmp_path,
            vms=[
                polite("added"),
                polite("same", restart={"policy": "transient"}),
                polite("env", env={"V": "2"}),
            ],
        )
        mark = len(fos.events)
        fos.send(signal.SIGHUP)
        reload = await fos.wait_for("runtime:reload", start=mark)
        assert reload["fields"]["error"] is None
        relaunched = {
            f["vm"]: f["pid"] for f in fields(fos, "vm.launched") if f["vm"] in ("added", "env")
        }
        reaper.extend(relaunched.values())
        assert relaunched["env"] != before["env"] and procfs.is_alive(relaunched["env"])
        assert procfs.is_alive(relaunched["added"])
        assert procfs.is_alive(before["same"])  # updated: the same process
        assert b"V=2" in await environ(relaunched["env"])
        await gone(before["env"], before["gone"])
        assert [f["reason"] for f in fields(fos, "vm.shutdown_requested", "gone")] == [
            "removed from the config by a reload"
        ]
        assert len(fields(fos, "vm.launched", "same")) == 1
        assert reload["fields"]["vms"] == {
            "added": ["added"],
            "removed": ["gone"],
            "restarted": ["env"],
            "updated": ["same"],
            "unchanged": [],
        }
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit(timeout=15) == 0
    await gone(*before.values(), *relaunched.values())
