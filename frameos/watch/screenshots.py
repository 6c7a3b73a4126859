"""The SVG screenshots of docs/watch.md and the README, from a scripted session: the snapshots a
small instance would answer and the events it would send, through the same Model and view as
`frameos watch` (so the pictures cannot drift from the code). `nox -s docs` runs this:

    python -m frameos.watch.screenshots docs/
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from frameos import events as ev
from frameos.envelope import encode
from frameos.watch.model import Model, Run
from frameos.watch.view import screen

WIDTH, HEIGHT = 110, 32
T0 = 1_795_000_000.0  # a fixed clock: the same pictures every time


def _vm(name: str, state: str, pid: int | None, uptime: float, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "pid": pid,
        "uptime_s": uptime,
        "restarts": 0,
        "last_exit": None,
        "bootstrap": {"status": "ok", "steps": []},
        "config": {"kind": "qemu", "image": f"/var/lib/frameos/{name}.qcow2"},
        **more,
    }


def session() -> Model:
    """The model after a scripted few minutes of a three-VM host."""
    model = Model("http://frame-7.local:8787")
    model.set_health({"version": "0.1.0", "started_at": T0 - 754}, {"status": "ready"})
    steps = [
        {"name": n, "status": s}
        for n, s in (("copy-keys", "success"), ("packages", "running"), ("renderer", "pending"))
    ]
    model.set_vms(
        [
            _vm("renderer", "running", 40211, 750.2),
            _vm(
                "kiosk-browser",
                "running",
                40388,
                92.4,
                restarts=1,
                last_exit={"exit_code": 137, "signal": None, "at": T0 - 95},
            ),
            _vm(
                "sensor-bridge",
                "running",
                40502,
                31.0,
                bootstrap={"status": "running", "steps": steps},
            ),
        ]
    )
    model.set_workers(
        [
            {
                "id": "camera-uploader",
                "owner": "ops",
                "status": "running",
                "stale": False,
                "last_heartbeat_at": T0 - 2,
            }
        ]
    )
    model.set_connection("connected")
    seq, clock = 9_870, T0 - 120

    def send(event: ev.Event, severity: Any = None, dt: float = 0.7) -> None:
        nonlocal seq, clock
        seq, clock = seq + 1, clock + dt
        model.apply(encode(event, seq, clock, severity))

    send(
        ev.VmExited(
            vm="kiosk-browser",
            pid=39877,
            exit_code=137,
            signal=None,
            uptime_ms=3_600_112,
            expected=False,
        )
    )
    send(ev.VmRestartScheduled(vm="kiosk-browser", attempt=2, backoff_ms=500))
    send(ev.VmLaunched(vm="kiosk-browser", pid=40388, attempt=2))
    send(ev.BootstrapStarted(vm="sensor-bridge", trigger="auto"), dt=20)
    send(
        ev.BootstrapStep(
            vm="sensor-bridge", step="copy-keys", status="success", duration_ms=412, attempt=1
        )
    )
    for _ in range(14):
        send(
            ev.Message(text="sensor-bridge: packages: apt-get install (still running)"),
            "progress",
            dt=2,
        )
    send(ev.Message(text="disk /var/lib/frameos is 91% full"), "warn", dt=3)
    model.run = Run(
        "restart",
        "kiosk-browser",
        "b1c2d3e4f5a60718",
        "succeeded",
        "kiosk-browser: launched again (pid 40388, attempt 2)",
    )
    model.snapshot_seq = seq
    return model


def save(directory: Path) -> list[Path]:
    """Write watch.svg (the main screen) and watch-detail.svg (a VM's detail) to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    real_time = time.time
    time.time = lambda: T0  # the uptimes and ages, as of the scripted moment
    written = []
    try:
        model = session()
        for name, detail in (("watch.svg", False), ("watch-detail.svg", True)):
            model.detail = detail
            model.selected = 2 if detail else 0
            if detail:
                model.log.extend(
                    f"[{i:04d}] sensor-bridge: reading /dev/ttyUSB0: {20 + i % 5} readings/s"
                    for i in range(12)
                )
            console = Console(
                width=WIDTH, height=HEIGHT, record=True, force_terminal=True,
                color_system="truecolor", file=io.StringIO(),
            )  # fmt: skip
            console.print(screen(model, WIDTH, HEIGHT))
            path = directory / name
            console.save_svg(str(path), title="frameos watch")
            written.append(path)
    finally:
        time.time = real_time
    return written


if __name__ == "__main__":
    for path in save(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(path)
