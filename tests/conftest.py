"""Shared test helpers: real-parts requirements, free ports, and running the real `frameos`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from frameos.events import Event, RuntimeReady

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip when a real part (qemu, systemd, root) is missing on a laptop; fail in CI.

    In CI (`CI=true`) every real-parts test must run, so a missing part is a failure there.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {what} is missing: .ci/run must install it")
    pytest.skip(f"{what} is missing (install it to run this test)")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    require(not missing, "tool(s) " + ", ".join(missing))


# --- running the real `frameos` process ---------------------------------------------------------


class Frameos:
    """A running `frameos` process whose JSON-lines stdout is parsed as it arrives."""

    def __init__(self, proc: trio.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.stdout = b""
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()
        self.eof = False

    async def read_stdout(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        async for chunk in self.proc.stdout:
            self.stdout += chunk
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.events.append(json.loads(line))
            self._changed.set()
            self._changed = trio.Event()
        self.eof = True
        self._changed.set()

    async def wait_for(
        self,
        name_or_class: str | type[Event],
        pred: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 15,
        start: int = 0,
    ) -> dict[str, Any]:
        """The first event `name_or_class` (an Event subclass or its NAME), matching `pred`,
        at index ≥ start."""
        name = name_or_class if isinstance(name_or_class, str) else name_or_class.NAME
        with trio.fail_after(timeout):
            index = start
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if event["event"] == name and (pred is None or pred(event)):
                        return event
                if self.eof:
                    raise AssertionError(f"frameos exited before {name}; stderr: {self.stderr}")
                changed = self._changed
                await changed.wait()

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20) -> int:
        with trio.fail_after(timeout):
            code = await self.proc.wait()
            while not self.eof:
                await trio.sleep(0.01)
            return code

    @property
    def url(self) -> str:
        ready = next(e for e in self.events if e["event"] == RuntimeReady.NAME)
        return str(ready["fields"]["server"])


def frameos_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "frameos", *args]


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    """A test config: ephemeral port, state in tmp_path, fast heartbeat."""
    data: dict[str, Any] = {
        "frame_port": 0,
        "state_dir": str(tmp_path / "state"),
        "heartbeat_interval": 0.2,
        "metrics_interval": 60,
    }
    data.update(overrides)
    path = tmp_path / "frame.json"
    path.write_text(json.dumps(data))
    return path


@asynccontextmanager
async def running_frameos(
    tmp_path: Path, *args: str, ready: bool = True, env: dict[str, str] | None = None
) -> AsyncIterator[Frameos]:
    """Start the real `frameos`, read its stdout, and make sure it is gone afterwards."""
    stderr_path = tmp_path / f"stderr-{len(list(tmp_path.glob('stderr-*')))}.txt"
    with stderr_path.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            frameos_argv(*args), stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    instance = Frameos(proc, stderr_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(instance.read_stdout)
        try:
            if ready:  # READY waits for every VM's readiness (a loaded machine: be patient)
                try:
                    await instance.wait_for(RuntimeReady, timeout=30)
                except trio.TooSlowError:
                    last = "\n".join(
                        json.dumps(e) for e in instance.events if e["severity"] != "debug"
                    )
                    raise AssertionError(
                        f"no runtime:ready within 30 s; last events:\n{last}\n"
                        f"stderr: {instance.stderr[-2000:]}"
                    ) from None
            yield instance
        finally:
            with trio.CancelScope(shield=True):
                await _end(instance)


async def _end(instance: Frameos) -> None:
    """A frameos the test left running stops as an operator's would, with its VMs: SIGTERM,
    then (once it is stopping) a second SIGTERM, which cuts every ladder to SIGKILL. SIGKILL and
    the VMs' process groups only if that fails: a test never leaves a process behind."""
    proc = instance.proc
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(AssertionError, trio.TooSlowError):  # exited, or wedged
            await instance.wait_for("runtime:stopping", timeout=3)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await proc.wait()
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        with trio.move_on_after(5):
            await proc.wait()
        for event in instance.events:  # the VMs lead their own process groups
            if event["event"] == "vm.launched":
                with contextlib.suppress(OSError):
                    os.killpg(event["fields"]["pid"], signal.SIGKILL)


def stubborn_vm(armed: Path, *, sigterm_ms: int) -> dict[str, Any]:
    """A VM whose process ignores SIGTERM, then creates `armed` to say so; only SIGKILL ends it."""
    command = [
        sys.executable,
        "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').close(); time.sleep(600)",
        str(armed),
    ]
    return {
        "name": "stubborn",
        "command": command,
        "cooperative": {"method": "none"},
        "timeouts": {"cooperative_ms": 0, "sigterm_ms": sigterm_ms, "sigkill_ms": 1000},
    }


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait, polling, for a condition that has no event to wait on (a deadline, never a
    guessed sleep)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.002)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`frameos ARGS` in process: (exit status, stdout, stderr); argparse's exits become the
    status, and no command ever prints a traceback."""
    from frameos.cli import main

    try:
        status = main(list(args))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err
