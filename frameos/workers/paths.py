"""Where a VM's files live under `state_dir`, and the environment its processes get.

state_dir/vms/NAME.pid        pidfile (pidfile.py)
state_dir/vms/NAME.qmp        QMP unix socket (`{qmp_socket}`)
state_dir/vms/NAME.notify     the VM's NOTIFY_SOCKET (datagrams; notify.py)
state_dir/vms/NAME.serial     the guest's notify port (`{notify_chardev}`; notify.py)
state_dir/vms/NAME.log        the VM's stdout and stderr
state_dir/procs/PID.pid       pidfile of a running bootstrap step or stop command (child.py)
state_dir/overlays/NAME.qcow2 overlay on `base_image` (`{overlay}`; `overlay_dir` overrides)
state_dir/bootstrap/NAME.stamp  digest of the last successful bootstrap (plan.py)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from frameos.config import VmConfig
from frameos.workers import LaunchError

# sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
# Variables meant for frameos alone (systemd notify, watchdog, socket activation).
PRIVATE_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
PRIVATE_PREFIXES = ("WATCHDOG_",)


@dataclass(frozen=True)
class VmPaths:
    """The files of one VM."""

    name: str
    pidfile: Path
    qmp_socket: Path
    notify_socket: Path
    serial_socket: Path
    log: Path
    overlay: Path | None
    stamp: Path
    procs: Path

    @classmethod
    def of(cls, vm: VmConfig, state_dir: Path) -> VmPaths:
        overlay = None
        if vm.base_image is not None:
            overlay = (vm.overlay_dir or state_dir / "overlays") / f"{vm.name}.qcow2"
        return cls(
            name=vm.name,
            pidfile=state_dir / "vms" / f"{vm.name}.pid",
            qmp_socket=state_dir / "vms" / f"{vm.name}.qmp",
            notify_socket=state_dir / "vms" / f"{vm.name}.notify",
            serial_socket=state_dir / "vms" / f"{vm.name}.serial",
            log=state_dir / "vms" / f"{vm.name}.log",
            overlay=overlay,
            stamp=state_dir / "bootstrap" / f"{vm.name}.stamp",
            procs=procs_dir(state_dir),
        )

    def make_dirs(self) -> None:
        """Create the directories these files live in."""
        for path in (self.pidfile, self.stamp, self.overlay):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def notify_address(self) -> str:
        """`NOTIFY_SOCKET` of the VM: its socket in the state dir, or, when that path does not
        fit in a unix socket address, an abstract socket named after it (`@frameos-notify-…`,
        the form systemd's sd_notify also reads). Either way the sender's credentials decide."""
        raw = os.fsencode(self.notify_socket)
        if len(raw) <= UNIX_PATH_MAX:
            return str(self.notify_socket)
        return "@frameos-notify-" + hashlib.sha256(raw).hexdigest()[:32]

    def check_socket(self, path: Path | None = None, what: str = "QMP socket") -> None:
        """Raise LaunchError when a socket path (the QMP socket's by default) does not fit in a
        unix socket address."""
        path = self.qmp_socket if path is None else path
        size = len(os.fsencode(path))
        if size > UNIX_PATH_MAX:
            raise LaunchError(
                f"{what} path {path} is {size} bytes; unix socket paths must be "
                f"under 108 bytes: choose a shorter state_dir or VM name"
            )


def procs_dir(state_dir: Path) -> Path:
    """Where the pidfiles of bootstrap steps and stop commands go."""
    return state_dir / "procs"


NOTIFY_CHARDEV = "{notify_chardev}"


def substitute(argv: list[str], paths: VmPaths) -> list[str]:
    """Fill in `{overlay}`, `{qmp_socket}` and `{notify_chardev}` (a QEMU `-chardev` value: a
    client of frameos's listener at NAME.serial); a `{overlay}` without `base_image` is an
    error."""
    out = []
    for arg in argv:
        if "{overlay}" in arg:
            if paths.overlay is None:
                raise LaunchError(
                    f"vm {paths.name}: the command uses {{overlay}} but no base_image is set; "
                    f"set base_image or remove the placeholder"
                )
            arg = arg.replace("{overlay}", str(paths.overlay))
        arg = arg.replace(NOTIFY_CHARDEV, f"socket,id=frameos-notify,path={paths.serial_socket}")
        out.append(arg.replace("{qmp_socket}", str(paths.qmp_socket)))
    return out


def uses_qmp(argv: list[str]) -> bool:
    return any("{qmp_socket}" in arg for arg in argv)


def uses_notify_chardev(argv: list[str]) -> bool:
    return any(NOTIFY_CHARDEV in arg for arg in argv)


def child_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`base` without frameos's private variables, plus `extra`."""
    env = {
        k: v for k, v in base.items() if k not in PRIVATE_ENV and not k.startswith(PRIVATE_PREFIXES)
    }
    env.update(extra)
    return env
