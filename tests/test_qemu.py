"""Real QEMU (no guest, `-machine none`): a qcow2 overlay on a real base, the QMP handshake, and
the ladder when nobody honours system_powerdown: timed out → SIGTERM → forced, overlay gone."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from frameos.workers import ChannelUnavailable
from frameos.workers.child import spawn
from frameos.workers.qmp import QmpConnection
from tests.conftest import require_tools, running_frameos, write_config

pytestmark = [pytest.mark.qemu, pytest.mark.e2e]


def qemu_argv(drive: str, qmp: str) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-nodefaults",
        "-display",
        "none",
        "-machine",
        "none",
        "-blockdev",
        f"driver=qcow2,file.driver=file,file.filename={drive},node-name=disk0",
        "-qmp",
        f"unix:{qmp},server=on,wait=off",
    ]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    require_tools("qemu-img", "qemu-system-x86_64")
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


async def test_qmp_handshake_with_real_qemu(base: Path, tmp_path: Path) -> None:
    sock = tmp_path / "q.qmp"
    child = await spawn(qemu_argv(str(base), str(sock)), env={"PATH": "/usr/bin:/bin"}, cwd=None)
    try:
        with trio.fail_after(10):
            while True:  # qemu binds the socket file before it listens: refused until then
                try:
                    conn = await QmpConnection.connect(sock)
                    break
                except ChannelUnavailable:
                    await trio.sleep(0.01)
            status = await conn.execute("query-status")
            await conn.aclose()
        assert status["status"] in ("running", "prelaunch")
    finally:
        child.signal_group(signal.SIGKILL)
        await child.wait()


async def test_qemu_vm_through_the_whole_ladder(base: Path, tmp_path: Path) -> None:
    vms = [
        {
            "name": "q",
            "command": qemu_argv("{overlay}", "{qmp_socket}"),
            "base_image": str(base),
            "timeouts": {"cooperative_ms": 800, "sigterm_ms": 5000, "sigkill_ms": 1000},
        }
    ]
    path = write_config(tmp_path, vms=vms, shutdown_timeout_s=10)
    overlay = tmp_path / "state" / "overlays" / "q.qcow2"
    async with running_frameos(tmp_path, "run", "--config", str(path), "--output", "json") as fos:
        prepared = await fos.wait_for("vm.overlay_prepared")
        assert prepared["fields"] == {
            "vm": "q",
            "overlay_path": str(overlay),
            "base_image": str(base),
        }
        result = await trio.run_process(
            ["qemu-img", "info", "-U", "--output=json", str(overlay)], capture_stdout=True
        )
        info = json.loads(result.stdout)
        assert info["backing-filename"] == str(base)
        assert info["backing-filename-format"] == "qcow2"
        pid = (await fos.wait_for("vm.launched"))["fields"]["pid"]
        with trio.fail_after(10):  # QMP is up once QEMU created its socket
            while not (tmp_path / "state" / "vms" / "q.qmp").exists():
                await trio.sleep(0.01)
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    ladder = [
        e
        for e in fos.events
        if e["fields"].get("vm") == "q"
        and e["event"] not in ("vm.overlay_prepared", "vm.launched", "vm.ready")
    ]
    assert [e["event"] for e in ladder] == [
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_timed_out",
        "vm.shutdown_escalated",
        "vm.shutdown_complete",
        "vm.exited",
        "vm.layer_discarded",
    ]
    by_name = {e["event"]: e["fields"] for e in ladder}
    assert by_name["vm.cooperative_attempted"]["method"] == "qmp"
    assert by_name["vm.cooperative_timed_out"]["reason"] == "timeout_expired"
    assert by_name["vm.shutdown_escalated"]["signal"] == "SIGTERM"
    assert by_name["vm.shutdown_complete"]["outcome"] == "forced"
    assert by_name["vm.exited"]["pid"] == pid
    assert by_name["vm.layer_discarded"]["reason"] == "shutdown"
    assert by_name["vm.layer_discarded"]["reclaimed_bytes"] > 0
    assert not overlay.exists()
