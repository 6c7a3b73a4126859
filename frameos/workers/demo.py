"""The demo's simulated VMs (`frameos run --demo`): no qemu, no root, no network.

Two small Python programs that speak the same stop protocol as a VM:

    demo-polite    stops on the cooperative signal (SIGINT); crashes once, 6 s into its first
                   run, to show a restart; bootstrapped by two quick steps on every launch
    demo-stubborn  ignores the cooperative signal, so its ladder escalates to SIGTERM; it
                   launches once demo-polite is ready (`depends_on`), and stops before it

Both say READY=1 and STATUS= on their notify sockets once their signal handlers are set (a
`notify` readiness probe), so frameos is ready only when each guest would act on its ladder.

Run one by hand with `python -m frameos.workers.demo polite|stubborn`. At import this module
needs only the standard library (each demo VM is a fresh interpreter running it); `demo_config`
imports the config models when called.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frameos.config import FrameConfig

CRASH_AFTER_S = 6
LADDER = {"cooperative_ms": 1500, "sigterm_ms": 2000, "sigkill_ms": 1000}


def _step(name: str, code: str) -> dict[str, Any]:
    return {
        "name": name,
        "command": [sys.executable, "-c", code],
        "timeout_ms": 5000,
        "retries": 1,
        "retry_delay_ms": 200,
    }


WAIT_FOR_GUEST = (
    "import os, time; time.sleep(0.3); "
    "print('guest', os.environ['FRAMEOS_VM'], 'answers on', "
    "os.environ['FRAMEOS_SSH_HOST'] + ':' + os.environ['FRAMEOS_SSH_PORT'])"
)
PROVISION = (
    "import time\n"
    "for item in ('users', 'packages', 'services'):\n"
    "    print('provisioning', item, flush=True); time.sleep(0.1)"
)


def demo_vm_configs() -> list[dict[str, Any]]:
    """The `vms` of the demo config."""

    def vm(name: str, kind: str) -> dict[str, Any]:
        return {
            "name": name,
            "command": [sys.executable, "-m", "frameos.workers.demo", kind],
            "cooperative": {"method": "signal", "signal": "SIGINT"},
            "timeouts": dict(LADDER),
            "health": {"readiness": {"notify": True}},  # READY=1 once its handlers are set
            "restart": {
                "policy": "permanent",
                "backoff_initial_ms": 500,
                "backoff_max_ms": 4000,
                "max_restarts": 5,
                "window_s": 60,
            },
        }

    polite = vm("demo-polite", "polite")
    polite["bootstrap"] = {
        "trigger": "always",
        "ssh": {"user": "demo", "host": "127.0.0.1", "port": 2222},
        "steps": [_step("wait-for-guest", WAIT_FOR_GUEST), _step("provision", PROVISION)],
    }
    stubborn = vm("demo-stubborn", "stubborn")
    stubborn["depends_on"] = {"demo-polite": "ready"}
    return [polite, stubborn]


def demo_config(env: Mapping[str, str] | None = None) -> FrameConfig:
    """The config `frameos run --demo` uses: no root, no qemu, no network, state in a temp dir."""
    import tempfile

    from frameos.config import resolve, validate_config
    from frameos.errors import ConfigError, Problem

    env = os.environ if env is None else env
    port = env.get("FRAMEOS_DEMO_PORT", "8787")
    if not port.isdigit() or len(port) > 5 or int(port) > 65535:
        raise ConfigError(
            [
                Problem(
                    "demo config",
                    "frame_port",
                    f"$FRAMEOS_DEMO_PORT is {port!r}; set it to a port number from 0 to 65535 "
                    "(0: any free port)",
                )
            ]
        )
    state = Path(tempfile.gettempdir()) / f"frameos-demo-{os.getuid()}"
    data: dict[str, Any] = {
        "frame_host": "127.0.0.1",
        "frame_port": int(port),
        "metrics_interval": 10,
        "state_dir": str(state),
        "shutdown_timeout_s": 15,
        "vms": demo_vm_configs(),
    }
    return resolve(validate_config(data, "demo config"), "demo config", env)


def _say(text: str) -> None:
    print(f"[{os.environ.get('FRAMEOS_VM', 'demo')} pid {os.getpid()}] {text}", flush=True)


def _notify(line: str) -> None:
    """One sd_notify line to the VM's own notify socket (SPEC §5.2), when frameos gave one."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(line.encode(), address)
        except OSError as exc:
            _say(f"notify socket: {exc}")


def _finish(text: str, code: int, linger_s: float) -> None:
    _say(text)
    time.sleep(linger_s)
    sys.exit(code)


def polite() -> None:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        _notify("STOPPING=1")
        _finish(f"{signal.Signals(signum).name}: saving state and powering off", 0, 0.3)

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        _finish("simulated crash", 3, 0)

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    if os.environ.get("FRAMEOS_VM_ATTEMPT") == "1":
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(CRASH_AFTER_S)


def stubborn() -> None:
    def on_int(signum: int, frame: FrameType | None) -> None:
        _say("SIGINT: ignoring the cooperative request")

    def on_term(signum: int, frame: FrameType | None) -> None:
        _finish("SIGTERM: stopping after a short cleanup", 0, 0.5)

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)


def main(argv: list[str]) -> int:
    kinds = {"polite": polite, "stubborn": stubborn}
    if len(argv) != 1 or argv[0] not in kinds:
        print("usage: python -m frameos.workers.demo polite|stubborn", file=sys.stderr)
        return 2
    kinds[argv[0]]()
    _say(f"{argv[0]} guest up")
    if argv[0] == "polite":
        time.sleep(0.3)  # a guest takes a moment to come up
        _notify("STATUS=serving the demo scene\nREADY=1")
    else:
        _notify("STATUS=up, and deaf to SIGINT\nREADY=1")
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
