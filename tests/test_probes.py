"""Probes (SPEC §5.2): thresholds, initial delay, timeouts, `ready`, `vm.ready`/`vm.health`, and
a liveness failure restarting the VM through its ladder, on trio's autojump clock with scripted
attempts; then each real kind (exec, http, tcp) against real processes and sockets, on the real
clock (a mock clock would jump past a deadline while a real process or thread works)."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import VmConfig, validate_config
from frameos.errors import ConfigError
from frameos.workers import probes, procfs
from frameos.workers.paths import VmPaths
from frameos.workers.probes import LaunchHealth, ProbeStatus, clean
from frameos.workers.testing import FakeSpawner, RecordingPublisher
from frameos.workers.vm import VmState, VmWorker
from tests.conftest import require_tools, until

SIGINT = int(signal.SIGINT)


def vm_with(**health: Any) -> VmConfig:
    return VmConfig.model_validate(
        {
            "name": "a",
            "command": ["prog"],
            "cooperative": {"method": "signal"},
            "restart": {"backoff_initial_ms": 100, "max_restarts": 10},
            **({"health": health} if health else {}),
        }
    )


class Script:
    """Scripted tcp attempts: each returns the next outcome (`True`, `False`, or "hang")."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, outcomes: Iterator[object]) -> None:
        self.outcomes = outcomes
        self.times: list[float] = []
        monkeypatch.setattr(probes, "tcp_attempt", self.attempt)

    async def attempt(self, probe: object) -> tuple[bool, str]:
        self.times.append(trio.current_time())
        outcome = next(self.outcomes)
        if outcome == "hang":
            await trio.sleep_forever()
        return bool(outcome), "ok" if outcome else "refused"


def forever(*outcomes: object) -> Iterator[object]:
    yield from outcomes
    while True:
        yield outcomes[-1]


TCP = {"tcp": {"port": 9}}


# --- the pure parts ---------------------------------------------------------------------------


def test_thresholds_count_in_a_row() -> None:
    state = ProbeStatus("liveness", "tcp")
    outcomes = [False, False, True, False, False, False, True, True]
    changes = [state.record(ok, "", 2, 3) for ok in outcomes]
    # two failures, a success (not 2 in a row), three failures: unhealthy; two successes: healthy
    assert changes == [False, False, False, False, False, True, False, True]
    assert (state.status, state.failures, state.total_failures) == ("healthy", 0, 5)


def test_clean_strips_control_characters_and_bounds() -> None:
    assert clean("a\x1b[31mred\x07\r\nnext\u2028") == "a[31mred | next"
    assert len(clean("x" * 10_000)) == probes.DETAIL_CHARS


@pytest.mark.parametrize(
    ("health", "where", "says"),
    [
        ({"readiness": {}}, "vms[0].health.readiness", "exactly one of exec, http, tcp or notify"),
        (
            {"readiness": {"http": {"url": "ftp://host/x"}}},
            "vms[0].health.readiness.http.url",
            "expected an http:// or https:// URL with a host",
        ),
        ({"liveness": {"notify": True}}, "vms[0].health", "set the VM's `watchdog_ms`"),
        ({"readiness": {"tcp": {"port": 1}, "period_ms": 5}}, "period_ms", "≥ 100"),
    ],
)
def test_bad_probes_are_config_errors(health: dict[str, Any], where: str, says: str) -> None:
    data = {"vms": [{"name": "a", "command": ["x"], "health": health}]}
    with pytest.raises(ConfigError) as caught:
        validate_config(data, "frame.json")
    (problem,) = caught.value.problems
    assert where in problem.path
    assert says in problem.message


# --- a worker with scripted probes ------------------------------------------------------------


async def test_readiness_waits_for_the_success_threshold_after_the_initial_delay(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(monkeypatch, forever(False, True))
    pub = RecordingPublisher()
    probe = {**TCP, "initial_delay_ms": 2000, "period_ms": 1000, "success_threshold": 2}
    async with trio.open_nursery() as nursery:
        worker = VmWorker(
            vm_with(readiness=probe), tmp_path, pub, spawner=FakeSpawner(nursery, {SIGINT: 0})
        )
        start = trio.current_time()
        await nursery.start(worker.run)
        assert not worker.ready
        assert worker.not_ready_reasons() == [
            "vm a: not ready (unknown: waiting for its tcp probe)"
        ]
        with trio.fail_after(10):
            await worker.wait_until(lambda: worker.ready)
        ready_at = trio.current_time() - start
        await worker.stop("test")
    # attempts at 2 s (fails), 3 s, 4 s (two successes in a row: ready)
    assert [round(t - start, 3) for t in script.times[:3]] == [2.0, 3.0, 4.0]
    assert round(ready_at, 3) == 4.0
    (ready,) = pub.of("vm.ready")
    assert isinstance(ready, ev.VmReady) and ready.after_ms == 4000
    health = [e for e in pub.of("vm.health") if isinstance(e, ev.VmHealth)]
    assert [(h.probe, h.status) for h in health] == [("readiness", "healthy")]
    assert pub.vm_names("a")[:3] == ["vm.launched", "vm.health", "vm.ready"]


async def test_without_a_probe_vm_ready_follows_the_launch(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        worker = VmWorker(vm_with(), tmp_path, pub, spawner=FakeSpawner(nursery, {SIGINT: 0}))
        await nursery.start(worker.run)
        assert worker.ready
        await worker.stop("test")
    assert pub.vm_names("a")[:2] == ["vm.launched", "vm.ready"]
    assert not worker.ready


async def test_readiness_failing_again_makes_the_vm_not_ready(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Script(monkeypatch, forever(True, False, False, True))
    pub = RecordingPublisher()
    probe = {**TCP, "period_ms": 1000, "failure_threshold": 2}
    async with trio.open_nursery() as nursery:
        worker = VmWorker(
            vm_with(readiness=probe), tmp_path, pub, spawner=FakeSpawner(nursery, {SIGINT: 0})
        )
        await nursery.start(worker.run)
        with trio.fail_after(10):
            await worker.wait_until(lambda: worker.ready)
            await worker.wait_until(lambda: not worker.ready)
        assert worker.not_ready_reasons() == ["vm a: not ready (unhealthy: refused)"]
        assert worker.health_snapshot().status == "unhealthy"
        with trio.fail_after(10):
            await worker.wait_until(lambda: worker.ready)
        await worker.stop("test")
    statuses = [(e.status, e.failures) for e in pub.of("vm.health") if isinstance(e, ev.VmHealth)]
    assert statuses == [("healthy", 0), ("unhealthy", 2), ("healthy", 0)]
    assert [sev for e, sev in pub.events if e.NAME == "vm.health"] == [None, "warn", None]
    assert len(pub.of("vm.ready")) == 1  # the first pass of the launch only


async def test_an_attempt_that_hangs_fails_at_its_timeout(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(monkeypatch, forever("hang"))
    pub = RecordingPublisher()
    probe = {**TCP, "period_ms": 5000, "timeout_ms": 700, "failure_threshold": 1}
    async with trio.open_nursery() as nursery:
        worker = VmWorker(
            vm_with(readiness=probe), tmp_path, pub, spawner=FakeSpawner(nursery, {SIGINT: 0})
        )
        start = trio.current_time()
        await nursery.start(worker.run)
        with trio.fail_after(10):
            await worker.wait_until(lambda: worker.health_snapshot().status == "unhealthy")
        assert round(trio.current_time() - start, 3) == 0.7
        await trio.sleep(6)
        await worker.stop("test")
    assert [round(t - start, 3) for t in script.times] == [0.0, 5.0]  # the period, not back to back
    (health,) = pub.of("vm.health")
    assert isinstance(health, ev.VmHealth)
    assert health.detail == "timed out after 700 ms"


async def test_liveness_failure_restarts_through_the_ladder_counted_by_the_policy(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Script(monkeypatch, forever(True, False, False, False, True))
    pub = RecordingPublisher()
    probe = {**TCP, "period_ms": 1000, "failure_threshold": 3}
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, {SIGINT: 0.5})
        worker = VmWorker(vm_with(liveness=probe), tmp_path, pub, spawner=spawner)
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await worker.wait_until(lambda: worker.attempt == 2 and worker.ready)
        assert worker.restarts == 1
        await worker.stop("test")
    first = spawner.children[0]
    assert first.signals == [SIGINT]  # asked to stop through the ladder's cooperative rung
    names = pub.vm_names("a")
    cut = names.index("vm.restart_scheduled") + 1
    assert names[:cut] == [
        "vm.launched",
        "vm.ready",
        "vm.health",  # healthy
        "vm.health",  # unhealthy after 3 failures
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_succeeded",
        "vm.shutdown_complete",
        "vm.exited",
        "vm.restart_scheduled",
    ]
    (request, *_) = pub.of("vm.shutdown_requested")
    assert isinstance(request, ev.VmShutdownRequested)
    assert request.reason == "liveness failed: refused"
    exited = pub.of("vm.exited")[0]
    assert isinstance(exited, ev.VmExited) and not exited.expected
    assert names[cut] == "vm.launched"
    assert worker.probe_failures >= 3
    # the final stop said its own reason, not the liveness one
    assert isinstance(last := pub.of("vm.shutdown_requested")[-1], ev.VmShutdownRequested)
    assert last.reason == "test"


async def test_liveness_failure_of_a_transient_vm_is_abnormal(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Script(monkeypatch, forever(False))
    pub = RecordingPublisher()
    vm = vm_with(liveness={**TCP, "failure_threshold": 1}).model_copy(
        update={"restart": vm_with().restart.model_copy(update={"policy": "transient"})}
    )
    async with trio.open_nursery() as nursery:
        worker = VmWorker(vm, tmp_path, pub, spawner=FakeSpawner(nursery, {SIGINT: 0}))
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await worker.wait_until(lambda: worker.attempt == 2)
        await worker.stop("test")
    # the child exited 0 on SIGINT, yet transient restarted it: a liveness kill is abnormal
    assert worker.restarts >= 1


async def test_reload_of_health_alone_keeps_the_process(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Script(monkeypatch, forever(False))
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        worker = VmWorker(
            vm_with(readiness={**TCP, "failure_threshold": 1}),
            tmp_path,
            pub,
            spawner=FakeSpawner(nursery, {SIGINT: 0}),
        )
        pid = await nursery.start(worker.run)
        with trio.fail_after(10):
            await worker.wait_until(lambda: worker.health_snapshot().status == "unhealthy")
        worker.reconfigure(vm_with())  # the probe removed: ready at once
        assert worker.ready and worker.pid == pid
        await worker.stop("test")
    assert len(pub.of("vm.ready")) == 1


async def test_watchdog_miss_restarts(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = RecordingPublisher()
    vm = vm_with().model_copy(update={"watchdog_ms": 2000})
    async with trio.open_nursery() as nursery:
        spawner = FakeSpawner(nursery, {SIGINT: 0})
        worker = VmWorker(vm, tmp_path, pub, spawner=spawner)
        start = trio.current_time()
        await nursery.start(worker.run)
        assert spawner.launches[0][1]["WATCHDOG_USEC"] == "2000000"
        with trio.fail_after(10):
            await worker.wait_until(lambda: worker.state is VmState.BACKOFF)
        assert round(trio.current_time() - start, 3) == 2.0
        await worker.stop("test")
    health = pub.of("vm.health")[0]
    assert isinstance(health, ev.VmHealth)
    assert (health.probe, health.status, health.detail) == (
        "liveness",
        "unhealthy",
        "no WATCHDOG=1 within 2000 ms",
    )


# --- each real kind ---------------------------------------------------------------------------


class Changes:
    def __init__(self) -> None:
        self.event = trio.Event()

    def __call__(self) -> None:
        self.event.set()
        self.event = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(30):
            while not predicate():
                await self.event.wait()


async def probe_once(
    tmp_path: Path, probe: dict[str, Any], which: str = "readiness"
) -> tuple[LaunchHealth, RecordingPublisher]:
    """Run `probe` until its status is decided; the health and what it published."""
    # a generous timeout unless the test sets one: a busy machine may take a second to fork
    vm = vm_with(**{which: {"timeout_ms": 10_000, **probe, "failure_threshold": 1}})
    pub, changes = RecordingPublisher(), Changes()
    health = LaunchHealth(
        vm,
        VmPaths.of(vm, tmp_path),
        dict(os.environ),
        pub,
        launched_at=trio.current_time(),
        on_change=changes,
        on_liveness_failed=lambda detail: None,
    )
    state = health.readiness if which == "readiness" else health.liveness
    assert state is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await changes.until(lambda: state.status != "unknown")
        nursery.cancel_scope.cancel()
    return health, pub


async def test_exec_probe_passes_and_fails_with_its_output(tmp_path: Path) -> None:
    ok, _ = await probe_once(tmp_path, {"exec": {"command": ["sh", "-c", "echo fine"]}})
    assert ok.readiness is not None
    assert (ok.readiness.status, ok.readiness.detail) == ("healthy", "fine")
    script = "printf 'bad\\033[2J\\n'; exit 3"
    bad, _ = await probe_once(tmp_path, {"exec": {"command": ["sh", "-c", script]}})
    assert bad.readiness is not None
    assert (bad.readiness.status, bad.readiness.detail) == ("unhealthy", "exit 3: bad[2J")
    missing, _ = await probe_once(tmp_path, {"exec": {"command": ["/nonexistent/probe"]}})
    assert missing.readiness is not None
    assert missing.readiness.detail.startswith("cannot start '/nonexistent/probe'")


async def test_exec_probe_that_hangs_is_killed_with_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 1000 & echo $$ $! > {pids}; wait"
    probe = {"exec": {"command": ["sh", "-c", script]}, "timeout_ms": 300}
    health, _ = await probe_once(tmp_path, probe)
    assert health.readiness is not None
    assert health.readiness.detail == "timed out after 300 ms"
    group = [int(pid) for pid in pids.read_text().split()]
    await until(lambda: not any(procfs.is_alive(pid) for pid in group))  # SIGKILL lands async
    assert not list((tmp_path / "procs").glob("*.pid"))  # its tracking pidfile is gone too


async def test_http_probe_statuses(tmp_path: Path) -> None:
    replies = iter([b"200 OK", b"503 Unavailable", b"418 Teapot"])

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        status = next(replies)
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        url = f"http://127.0.0.1:{port}/healthz"
        ok, _ = await probe_once(tmp_path, {"http": {"url": url}})
        bad, _ = await probe_once(tmp_path, {"http": {"url": url}})
        teapot, _ = await probe_once(tmp_path, {"http": {"url": url, "status": [418]}})
        nursery.cancel_scope.cancel()
    assert ok.readiness is not None and bad.readiness is not None and teapot.readiness is not None
    assert (ok.readiness.status, ok.readiness.detail) == ("healthy", "HTTP 200")
    assert (bad.readiness.status, bad.readiness.detail) == ("unhealthy", "HTTP 503")
    assert teapot.readiness.status == "healthy"
    refused, _ = await probe_once(tmp_path, {"http": {"url": url}})
    assert refused.readiness is not None
    assert refused.readiness.status == "unhealthy"
    assert refused.readiness.detail.startswith(f"GET {url}: ")
    assert refused.readiness.detail.endswith("Connection refused")


async def test_tcp_probe_connects(tmp_path: Path) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        ok, _ = await probe_once(tmp_path, {"tcp": {"port": port}}, "liveness")
        nursery.cancel_scope.cancel()
    assert ok.liveness is not None
    assert (ok.liveness.status, ok.liveness.detail) == ("healthy", f"connected to 127.0.0.1:{port}")
    refused, pub = await probe_once(tmp_path, {"tcp": {"port": port}}, "liveness")
    assert refused.liveness is not None
    assert refused.liveness.detail.startswith(f"connect 127.0.0.1:{port}: ")
    (health,) = pub.of("vm.health")
    assert isinstance(health, ev.VmHealth) and health.probe == "liveness"


def test_reload_applies_health_live_and_restarts_for_watchdog_ms() -> None:
    from frameos.config import FrameConfig
    from frameos.workers.reload import classify

    def frame(**vm: Any) -> FrameConfig:
        return FrameConfig.model_validate({"vms": [{"name": "a", "command": ["x"], **vm}]})

    probe = {"readiness": {"tcp": {"port": 80}}}
    live = classify(frame(), frame(health=probe))
    assert (live.updated, live.restarted, live.changed) == (["a"], [], ["vms[0].health"])
    again = classify(frame(), frame(watchdog_ms=1000))
    assert (again.updated, again.restarted) == ([], ["a"])


async def test_https_probe_does_not_verify_the_certificate(tmp_path: Path) -> None:
    require_tools("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await trio.run_process(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        capture_stdout=True, capture_stderr=True,
    )  # fmt: skip
    assert made.returncode == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            partial(trio.serve_ssl_over_tcp, serve, 0, context, host="127.0.0.1")
        )
        port = listener.transport_listener.socket.getsockname()[1]
        ok, _ = await probe_once(tmp_path, {"http": {"url": f"https://127.0.0.1:{port}/"}})
        nursery.cancel_scope.cancel()
    assert ok.readiness is not None
    assert (ok.readiness.status, ok.readiness.detail) == ("healthy", "HTTP 204")


async def test_an_attempt_that_raises_is_a_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(probe: object) -> tuple[bool, str]:
        raise RuntimeError("boom\x1b[2J")

    monkeypatch.setattr(probes, "tcp_attempt", broken)
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        worker = VmWorker(
            vm_with(readiness={**TCP, "failure_threshold": 2}),
            tmp_path,
            pub,
            spawner=FakeSpawner(nursery, {SIGINT: 0}),
        )
        await nursery.start(worker.run)
        with trio.fail_after(60):
            await worker.wait_until(lambda: worker.health_snapshot().status == "unhealthy")
        assert worker.state is VmState.RUNNING
        await worker.stop("test")
    readiness = worker.health_snapshot().readiness
    assert readiness is not None
    assert readiness.detail == "probe error: RuntimeError: boom[2J"


async def test_a_pool_reload_of_health_keeps_the_pid_and_probes_anew(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frameos.config import validate_config as validate
    from frameos.workers.pool import VmPool

    Script(monkeypatch, forever(False))

    def frame(**health: Any) -> Any:
        data = {"name": "a", "command": ["x"], "cooperative": {"method": "signal"}}
        if health:
            data["health"] = health
        config = validate({"state_dir": str(tmp_path), "vms": [data]}, "test")
        return config.model_copy(update={"state_dir": tmp_path})

    pub = RecordingPublisher()
    async with trio.open_nursery() as outer:
        spawner = FakeSpawner(outer, {SIGINT: 0})
        pool = VmPool(frame(), pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            worker = pool.worker("a")
            assert worker.ready
            diff = await pool.apply(frame(readiness={**TCP, "failure_threshold": 1}))
            assert (diff.updated, diff.restarted) == (["a"], [])
            assert not worker.ready  # a readiness probe now decides, and it fails
            with trio.fail_after(10):
                await worker.wait_until(lambda: worker.health_snapshot().status == "unhealthy")
            assert pool.snapshot("a").health is not None
            assert len(spawner.launches) == 1
            await pool.stop("test")


async def test_an_attempt_that_ends_after_the_stop_began_changes_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D9: once `end` is called (the stop began), an attempt still in flight that passes makes
    no `vm.health`, and the probe's status stays as it was."""
    started, gate = trio.Event(), trio.Event()

    async def attempt(probe: object) -> tuple[bool, str]:
        started.set()
        await gate.wait()
        return True, "ok"

    monkeypatch.setattr(probes, "tcp_attempt", attempt)
    vm = vm_with(readiness={**TCP, "failure_threshold": 1})
    pub = RecordingPublisher()
    health = LaunchHealth(
        vm,
        VmPaths.of(vm, tmp_path),
        {},
        pub,
        launched_at=trio.current_time(),
        on_change=lambda: None,
        on_liveness_failed=lambda detail: None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(health.run)
        await started.wait()
        health.end()
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert health.readiness is not None and health.readiness.status == "unknown"
    assert not health.ready and pub.of("vm.health") == []
