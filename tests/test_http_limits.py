"""Running out of file descriptors (issue 8 #2, issue 9): a warning once, accept backs off,
/healthz answers again when descriptors free up; never a traceback."""

from __future__ import annotations

import errno
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from frameos.events import Message
from frameos.server.frontdoor import HTTP_FDS, FrontDoor
from tests.conftest import Frameos, frameos_argv, write_config
from tests.test_frontdoor import talk

NOFILE = 256


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def _healthz(port: int) -> bytes:
    return await talk(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")


async def test_held_connections_under_a_low_fd_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            frameos_argv("run", "--config", str(config)),
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=_limit_fds,
        )
    fos = Frameos(proc, stderr_path)
    held: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fos.read_stdout)
            await fos.wait_for("runtime:ready")
            port = int(fos.url.rsplit(":", 1)[1])
            # more connections than descriptors: each holds one here and up to 3 in frameos
            for _ in range(NOFILE):
                held.append(await trio.open_tcp_stream("127.0.0.1", port))
            warning = await fos.wait_for(Message.NAME, lambda e: e["severity"] == "warn")
            assert "RLIMIT_NOFILE" in warning["fields"]["text"]
            for stream in held:
                await stream.aclose()
            held.clear()
            answer = await _healthz(port)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            # a second wave: still answered afterwards, and still one warning per episode
            for _ in range(NOFILE):
                held.append(await trio.open_tcp_stream("127.0.0.1", port))
            for stream in held:
                await stream.aclose()
            held.clear()
            assert (await _healthz(port)).startswith(b"HTTP/1.1 200 ")
            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
            warnings = [e for e in fos.events if e["event"] == Message.NAME]
            assert len(warnings) == 2, [w["fields"]["text"] for w in warnings]  # one per wave
            assert "Traceback" not in fos.stderr
    finally:
        for stream in held:
            await stream.aclose()
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            with trio.move_on_after(5, shield=True):
                await proc.wait()


class _Exhausted:
    """A listener whose accept fails with EMFILE `failures` times, then blocks."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def accept(self) -> Any:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        await trio.sleep_forever()


class _Bus:
    def __init__(self) -> None:
        self.published: list[tuple[Any, str]] = []

    def publish_nowait(self, event: Any, severity: str) -> None:
        self.published.append((event, severity))


class _Hub:
    def __init__(self) -> None:
        self.bus = _Bus()


async def test_emfile_on_accept_backs_off_and_warns_once(autojump_clock: Any) -> None:
    door = FrontDoor.__new__(FrontDoor)
    FrontDoor.__init__(door, app=None, hub=_Hub())  # type: ignore[arg-type]
    listener = _Exhausted(failures=8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door._accept_loop, listener, nursery)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in zip(listener.calls, listener.calls[1:], strict=False)]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    [(event, severity)] = door.hub.bus.published  # type: ignore[attr-defined]
    assert severity == "warn" and "Too many open files" in event.text
    assert door.fds.borrowed_tokens == 0 and HTTP_FDS == 3
