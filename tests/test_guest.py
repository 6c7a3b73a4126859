"""A real Linux guest under real QEMU (contrib/guest/build_guest.py: Debian's kernel and a
busybox initramfs): readiness from the guest's own `READY=1` over the virtio-serial notify port,
then `frameos stop` asks it through QMP `system_powerdown` (the ACPI power button) and it powers
off by itself: the cooperative rung succeeds, no signal is sent."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from frameos import events as ev
from tests.conftest import frameos_argv, require, require_tools, running_frameos, write_config

pytestmark = [pytest.mark.qemu, pytest.mark.e2e]

BUILDER = Path(__file__).parent.parent / "contrib" / "guest" / "build_guest.py"
NOTIFY_PORT = [
    "-chardev",
    "{notify_chardev}",
    "-device",
    "virtio-serial",
    "-device",
    "virtserialport,chardev=frameos-notify,name=org.frameos.notify",
]


@pytest.fixture(scope="session")
def guest() -> dict[str, str]:
    """The guest's kernel and initramfs, built once per kernel package and reused across runs
    (the builder's cache, $XDG_CACHE_HOME/frameos/guest)."""
    require_tools("qemu-system-x86_64", "apt-get", "apt-cache", "dpkg")
    built = subprocess.run(
        [sys.executable, str(BUILDER)], capture_output=True, text=True, timeout=300, check=False
    )
    require(built.returncode == 0, f"the test guest ({built.stderr.strip()})")
    result: dict[str, str] = json.loads(built.stdout)
    return result


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """A failing test SIGKILLs frameos (running_frameos), which leaves its QEMU running (in its
    own session, as a VM must be): kill whatever still names this test's directory."""
    yield
    for proc in Path("/proc").iterdir():
        try:
            named = str(tmp_path).encode() in (proc / "cmdline").read_bytes()
        except OSError:  # not a process, or gone
            continue
        if named and proc.name.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def accelerator() -> str:
    """KVM when /dev/kvm opens and the CPU has virtualization extensions (what Debian's kvm-ok
    checks: a /dev/kvm without them, as in some nested VMs, hangs the guest), else TCG."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return "tcg"
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return "kvm" if re.search(r"^flags\s*:.*\b(vmx|svm)\b", cpuinfo, re.MULTILINE) else "tcg"


def guest_vm(guest: dict[str, str]) -> dict[str, Any]:
    command = [
        "qemu-system-x86_64",
        "-accel",
        accelerator(),
        "-m",
        "128",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        guest["kernel"],
        "-initrd",
        guest["initrd"],
        "-append",
        "console=ttyS0 quiet panic=-1",
        "-qmp",
        "unix:{qmp_socket},server=on,wait=off",
        *NOTIFY_PORT,
    ]
    return {
        "name": "guest",
        "command": command,
        "health": {"readiness": {"notify": True}},
        "timeouts": {"cooperative_ms": 20000, "sigterm_ms": 5000, "sigkill_ms": 1000},
    }


def test_the_initramfs_holds_init_busybox_and_modules_after_their_dependencies(
    guest: dict[str, str], tmp_path: Path
) -> None:
    """busybox's own cpio reads the archive the builder wrote (newc, gzip), and each module is
    loaded after the modules its .modinfo says it depends on."""
    archive = gzip.decompress(Path(guest["initrd"]).read_bytes())
    subprocess.run(["busybox", "cpio", "-id"], input=archive, cwd=tmp_path, check=True)
    assert os.access(tmp_path / "init", os.X_OK)
    assert (tmp_path / "bin" / "sh").readlink() == Path("busybox")
    order = (tmp_path / "lib" / "modules" / "load").read_text().split()
    loaded: list[str] = []
    for name in order:
        info = builder().modinfo((tmp_path / "lib" / "modules" / name).read_bytes())
        depends = [d.replace("-", "_") for d in info.get("depends", "").split(",") if d]
        assert all(f"{d}.ko" in loaded for d in depends), (name, depends, loaded)
        loaded.append(name)
    assert {"virtio_console.ko", "virtio_pci.ko"} <= set(order)


def builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_guest", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def of_guest(events: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [e for e in events if e["fields"].get("vm") == "guest" and e["event"] in names]


@pytest.mark.usefixtures("no_leftovers")
async def test_guest_says_ready_and_powers_off_when_asked(
    guest: dict[str, str], tmp_path: Path
) -> None:
    path = write_config(tmp_path, vms=[guest_vm(guest)], shutdown_timeout_s=60)
    log = tmp_path / "state" / "vms" / "guest.log"
    argv = ("run", "--config", str(path), "--output", "json")
    # runtime:ready may wait for the guest's readiness: wait for that first
    async with running_frameos(tmp_path, *argv, ready=False) as fos:
        pid = (await fos.wait_for(ev.VmLaunched, timeout=30))["fields"]["pid"]
        # a TCG boot under load; the deadline only bounds a failure
        await fos.wait_for(ev.VmReady, timeout=180)
        await fos.wait_for(ev.RuntimeReady, timeout=30)  # its server's URL, for `frameos stop`
        said = of_guest(fos.events, ev.VmStatus.NAME, ev.VmHealth.NAME, ev.VmReady.NAME)
        assert [e["event"] for e in said] == [
            ev.VmStatus.NAME,
            ev.VmHealth.NAME,
            ev.VmReady.NAME,
        ]
        assert said[0]["fields"]["text"].startswith("guest up, kernel ")
        assert said[1]["fields"]["probe"] == "readiness"
        assert said[1]["fields"]["status"] == "healthy"

        start = len(fos.events)
        with trio.fail_after(60):
            stopped = await trio.run_process(
                frameos_argv("stop", "guest", "--config", str(path), "--url", fos.url),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert stopped.returncode == 0, stopped.stderr
        await fos.wait_for(ev.VmExited, start=start)
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0

    ladder = [e for e in fos.events[start:] if e["fields"].get("vm") == "guest"]
    assert [e["event"] for e in ladder if e["event"] != ev.VmStatus.NAME] == [
        ev.VmShutdownRequested.NAME,
        ev.VmCooperativeAttempted.NAME,
        ev.VmCooperativeSucceeded.NAME,
        ev.VmShutdownComplete.NAME,
        ev.VmExited.NAME,
    ]
    by_name = {e["event"]: e["fields"] for e in ladder}
    assert by_name[ev.VmCooperativeAttempted.NAME]["method"] == "qmp"
    assert by_name[ev.VmShutdownComplete.NAME]["outcome"] == "graceful"
    # QEMU exited by itself, status 0, because the guest powered off
    assert by_name[ev.VmExited.NAME]["pid"] == pid
    assert by_name[ev.VmExited.NAME]["exit_code"] == 0
    assert ev.VmShutdownEscalated.NAME not in fos.names()
    text = log.read_text(errors="replace")  # the guest's console
    assert "frameos-guest: up (kernel " in text
    assert "frameos-guest: power button pressed: powering off" in text
    assert "reboot: Power down" in text
