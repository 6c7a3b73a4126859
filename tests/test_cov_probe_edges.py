"""Probes (frameos/workers/probes.py) at their edges: an http probe against servers that answer
1xx first, close without answering, or do not speak HTTP (real sockets); a reload of `health`
keeping the statuses of the probes whose kind stayed; READY=1 for a probe that is not `notify`
or already passed; the watchdog of a launch that ended."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.testing

from frameos.config import VmConfig
from frameos.config.models import HttpProbe
from frameos.workers.paths import VmPaths
from frameos.workers.probes import LaunchHealth, http_attempt
from frameos.workers.testing import RecordingPublisher
from tests.test_probes import vm_with

Serve = Callable[[trio.SocketStream], Awaitable[None]]


async def attempt_against(serve: Serve) -> tuple[bool, str, str]:
    """One http attempt against a one-connection server running `serve`: (ok, detail, url)."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the GET
        await serve(stream)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/healthz"
        with trio.fail_after(10):
            ok, detail = await http_attempt(HttpProbe(url=url))
        nursery.cancel_scope.cancel()
    return ok, detail, url


async def test_an_informational_answer_is_read_past_to_the_response() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
        await stream.aclose()

    ok, detail, _ = await attempt_against(serve)
    assert (ok, detail) == (True, "HTTP 204")


async def test_a_server_that_closes_without_answering_fails_the_attempt() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.aclose()

    ok, detail, url = await attempt_against(serve)
    assert (ok, detail) == (False, f"GET {url}: the connection closed before a response")


async def test_an_answer_that_is_not_http_fails_the_attempt_in_one_line() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await stream.aclose()

    ok, detail, url = await attempt_against(serve)
    assert (ok, detail) == (
        False,
        f"GET {url}: illegal status line: bytearray(b'SSH-2.0-OpenSSH_9.2')",
    )  # h11's words, on one line


def launch_health(vm: VmConfig, tmp_path: Path, changes: list[str]) -> LaunchHealth:
    return LaunchHealth(
        vm,
        VmPaths.of(vm, tmp_path),
        dict(os.environ),
        RecordingPublisher(),
        launched_at=0.0,
        on_change=lambda: changes.append("changed"),
        on_liveness_failed=lambda detail: None,
    )


def probe(kind: dict[str, Any], **timing: Any) -> dict[str, Any]:
    return {**kind, **timing}


async def test_a_reload_keeps_the_statuses_of_probes_whose_kind_stayed(tmp_path: Path) -> None:
    tcp, http = {"tcp": {"port": 9}}, {"http": {"url": "http://127.0.0.1:9/"}}
    changes: list[str] = []
    health = launch_health(vm_with(readiness=tcp, liveness=tcp), tmp_path, changes)
    readiness, liveness = health.readiness, health.liveness
    assert readiness is not None and liveness is not None
    readiness.record(True, "connected", 1, 1)
    health.reconfigure(vm_with(readiness=probe(tcp, period_ms=500), liveness=tcp))
    assert changes == ["changed"]  # told at once, before any probe task ran
    assert health.readiness is readiness and health.liveness is liveness  # kept
    assert health.ready
    health.reconfigure(vm_with(readiness=http, liveness=http))
    assert health.readiness is not readiness and health.readiness is not None
    assert health.readiness.kind == "http" and not health.ready  # a new kind starts unknown
    assert health.liveness is not None and health.liveness.kind == "http"


async def test_ready_1_passes_only_a_notify_probe_not_yet_healthy(tmp_path: Path) -> None:
    changes: list[str] = []
    by_tcp = launch_health(vm_with(readiness={"tcp": {"port": 9}}), tmp_path, changes)
    by_tcp.said_ready()
    assert not by_tcp.ready and changes == []  # READY=1 is not what a tcp probe asks for
    by_notify = launch_health(vm_with(readiness={"notify": True}), tmp_path, changes)
    by_notify.said_ready()
    by_notify.said_ready()  # again: nothing more to change
    assert by_notify.ready and changes == ["changed"]


async def test_the_watchdog_of_a_launch_that_ended_fails_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    vm = vm_with().model_copy(update={"watchdog_ms": 1000})
    changes: list[str] = []
    health = launch_health(vm, tmp_path, changes)
    failed: list[str] = []
    health.on_liveness_failed = failed.append
    health.launched_at = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await trio.sleep(0.5)
        health.end()  # the launch exited before the ping was due
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert failed == [] and changes == []
    assert health.liveness is not None and health.liveness.status == "unknown"
