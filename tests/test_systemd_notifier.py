"""The systemd notifier: exact datagrams and their order for start, reload and stop, against a
real datagram socket standing in for systemd; watchdog pings on trio's autojump clock."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import FrameConfig
from frameos.envelope import Envelope, encode
from frameos.events import Event, Severity
from frameos.state import Phase, RuntimeState, WorkerCounts
from frameos.systemd import EXTEND_MARGIN_S, SystemdNotifier

VMS = [
    {"name": "web", "command": ["/bin/true"]},
    {
        "name": "db",
        "command": ["/bin/true"],
        "timeouts": {"cooperative_ms": 4000, "sigterm_ms": 3000, "sigkill_ms": 2000},
    },
]


class FakeSubscription:
    """Interface B's subscription: a bounded channel of written batches."""

    def __init__(self, depth: int) -> None:
        self.send, self.receive = trio.open_memory_channel[Sequence[Envelope]](depth)
        self.dropped = 0

    async def __aiter__(self) -> AsyncIterator[Sequence[Envelope]]:
        async for batch in self.receive:
            yield batch


class FakeBus:
    """What the notifier reads of the bus: seqs, subscriptions, and `publish_nowait`."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.written_seq = 0
        self.subscriptions: list[FakeSubscription] = []
        self.published: list[Envelope] = []
        self.stuck = False  # when set, nothing published is ever written
        self.write_errors = 0
        self.fault: str | None = None

    def subscribe(self, name: str, depth: int) -> FakeSubscription:
        subscription = FakeSubscription(depth)
        self.subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: FakeSubscription) -> None:
        subscription.send.close()
        self.subscriptions.remove(subscription)

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> Envelope:
        self.last_seq += 1
        if not self.stuck:
            self.written_seq = self.last_seq
        envelope = encode(event, self.last_seq, 0.0, severity)
        self.published.append(envelope)
        return envelope

    def feed(self, *events: Event) -> None:
        """Publish `events` as one written batch and deliver it."""
        batch = [self.publish_nowait(event) for event in events]
        for subscription in self.subscriptions:
            subscription.send.send_nowait(batch)

    def close(self) -> None:
        """What `bus.aclose()` does to subscribers: close every channel (the drain)."""
        for subscription in self.subscriptions:
            subscription.send.close()

    def texts(self) -> list[tuple[str, str]]:
        messages = [e.model() for e in self.published]
        return [
            (e.severity, m.text)
            for e, m in zip(self.published, messages, strict=True)
            if isinstance(m, ev.Message)
        ]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notification socket."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock


async def received(sock: socket.socket) -> list[str]:
    """Every datagram systemd got so far (after the notifier had a chance to send)."""
    out: list[str] = []
    while True:
        await trio.testing.wait_all_tasks_blocked()
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def make_state(running: int = 2) -> RuntimeState:
    state = RuntimeState(config=FrameConfig.model_validate({"vms": VMS}), config_source="test")
    state.worker_counts = lambda: WorkerCounts(total=2, running=running)
    return state


class Harness:
    def __init__(
        self,
        bus: FakeBus,
        state: RuntimeState,
        notifier: SystemdNotifier,
        sock: socket.socket,
        nursery: trio.Nursery,
    ) -> None:
        self.bus, self.state, self.notifier, self.sock = bus, state, notifier, sock
        self.nursery = nursery

    async def got(self) -> list[str]:
        return await received(self.sock)

    async def start(self) -> None:
        self.bus.feed(
            ev.RuntimeStart(
                server="http://127.0.0.1:8787", apps_loaded=0, scenes_loaded=0, config="test"
            )
        )
        self.bus.feed(ev.VmLaunched(vm="web", pid=10, attempt=1))
        self.bus.feed(ev.VmLaunched(vm="db", pid=11, attempt=1))
        self.state.set_phase(Phase.READY)
        self.bus.feed(ready())


def ready() -> ev.RuntimeReady:
    return ev.RuntimeReady(
        server="http://127.0.0.1:8787",
        health_endpoint="/healthz",
        event_stream_transport="websocket",
        metrics_interval_seconds=60,
        apps_loaded=0,
        scenes_loaded=0,
    )


def stop_events(status: int = 0) -> list[Event]:
    return [
        ev.RuntimeStop(
            server="x",
            metrics_interval_seconds=60,
            apps_loaded=0,
            scenes_loaded=0,
            duration_ms=1234,
        ),
        ev.Summary(
            duration_ms=1234,
            exit_status=status,
            vms=2,
            restarts=0,
            events_published=9,
            events_dropped=0,
            bytes_logged=900,
        ),
    ]


@pytest.fixture
async def harness(systemd: tuple[str, socket.socket]) -> AsyncIterator[Harness]:
    path, sock = systemd
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, watchers=lambda: 2, env={"NOTIFY_SOCKET": path})
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        yield Harness(bus, state, notifier, sock, nursery)
        nursery.cancel_scope.cancel()


async def test_start_reports_launches_then_ready(harness: Harness) -> None:
    await harness.start()
    assert await harness.got() == [
        "STATUS=starting · 0/2 VMs launched",
        "STATUS=starting · 1/2 VMs launched",
        "STATUS=starting · 2/2 VMs launched",
        "READY=1\nSTATUS=2/2 VMs running · 2 watchers",
    ]


async def test_one_batch_gives_one_datagram(harness: Harness) -> None:
    harness.bus.feed(
        ev.VmLaunched(vm="web", pid=10, attempt=1),
        ready(),
        ev.RuntimeHeartbeat(uptime_seconds=1, server="x", loop_lag_ms=0),
    )
    assert await harness.got() == ["READY=1\nSTATUS=2/2 VMs running · 2 watchers"]


async def test_status_follows_the_vms_and_says_nothing_when_nothing_changed(
    harness: Harness,
) -> None:
    await harness.start()
    await harness.got()
    heartbeat = ev.RuntimeHeartbeat(uptime_seconds=1, server="x", loop_lag_ms=0)
    harness.bus.feed(heartbeat)
    assert await harness.got() == []
    harness.state.worker_counts = lambda: WorkerCounts(total=2, running=1, failed=1)
    harness.bus.feed(ev.VmGaveUp(vm="db", restarts=5, window_s=60))
    assert await harness.got() == ["STATUS=1/2 VMs running · 2 watchers · 1 failed"]


async def test_reload_sends_reloading_with_monotonic_usec_then_ready(harness: Harness) -> None:
    await harness.start()
    await harness.got()
    before = trio_monotonic_usec()
    await harness.notifier.before_reload()
    harness.bus.feed(ev.RuntimeReload(changed=["metrics_interval"], error=None))
    reloading, readied = await harness.got()
    lines = reloading.split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= trio_monotonic_usec()
    assert lines[2:] == ["STATUS=reloading configuration"]
    assert readied == "READY=1\nSTATUS=2/2 VMs running · 2 watchers"


async def test_a_failed_reload_is_ready_again_and_says_so(harness: Harness) -> None:
    await harness.start()
    await harness.got()
    await harness.notifier.before_reload()
    harness.bus.feed(ev.RuntimeReload(changed=[], error="frame.json: invalid JSON"))
    got = await harness.got()
    assert got[1] == (
        "READY=1\nSTATUS=2/2 VMs running · 2 watchers · last reload failed, running config kept"
    )


async def test_no_reload_notifications_before_ready(harness: Harness) -> None:
    await harness.notifier.before_reload()
    harness.bus.feed(ev.RuntimeReload(changed=[], error=None))
    assert await harness.got() == ["STATUS=starting · 0/2 VMs launched"]


async def test_stop_ladder_extends_the_timeout_by_the_longest_remaining_rung(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await harness.start()
    await harness.got()
    bus, margin = harness.bus, int(EXTEND_MARGIN_S * 1_000_000)
    harness.state.set_phase(Phase.STOPPING)
    bus.feed(ev.RuntimeStopping(reason="received SIGTERM", signal="SIGTERM"))
    bus.feed(
        ev.VmShutdownRequested(vm="web", reason="stopping", deadline_ms=35_000),
        ev.VmShutdownRequested(vm="db", reason="stopping", deadline_ms=9_000),
    )
    # web: ladder 20 + 10 + 5 s; db: 4 + 3 + 2 s
    bus.feed(ev.VmCooperativeAttempted(vm="db", method="signal", timeout_ms=4000))
    await trio.sleep(4)
    bus.feed(
        ev.VmCooperativeTimedOut(vm="db", waited_ms=4000, reason="timeout_expired"),
        ev.VmShutdownEscalated(vm="db", signal="SIGTERM", timeout_ms=3000),
    )
    bus.feed(ev.VmCooperativeAttempted(vm="web", method="qmp", timeout_ms=20000))
    await trio.sleep(3)
    bus.feed(ev.VmShutdownEscalated(vm="db", signal="SIGKILL", timeout_ms=2000))
    bus.feed(ev.VmShutdownComplete(vm="db", outcome="forced", total_ms=7100, changed=True))
    await trio.sleep(1)
    bus.feed(ev.VmCooperativeSucceeded(vm="web", elapsed_ms=4000))
    bus.feed(ev.VmShutdownComplete(vm="web", outcome="graceful", total_ms=8100, changed=True))
    stopping = "STATUS=stopping (received SIGTERM)"
    assert await harness.got() == [
        f"STOPPING=1\n{stopping}",
        f"{stopping} · 2 VMs left: db (stop requested), web (stop requested)\n"
        f"EXTEND_TIMEOUT_USEC={35_000_000 + margin}",
        f"{stopping} · 2 VMs left: db (cooperative signal), web (stop requested)\n"
        f"EXTEND_TIMEOUT_USEC={35_000_000 + margin}",
        # t=4: web's whole ladder (requested at 0) still has 31 s
        f"{stopping} · 2 VMs left: db (SIGTERM), web (stop requested)\n"
        f"EXTEND_TIMEOUT_USEC={31_000_000 + margin}",
        f"{stopping} · 2 VMs left: db (SIGTERM), web (cooperative qmp)\n"
        f"EXTEND_TIMEOUT_USEC={20_000_000 + margin}",
        # t=7: web's cooperative rung (from 4, 20 s) has 17 s left
        f"{stopping} · 2 VMs left: db (SIGKILL), web (cooperative qmp)\n"
        f"EXTEND_TIMEOUT_USEC={17_000_000 + margin}",
        f"{stopping} · 1 VM left: web (cooperative qmp)\nEXTEND_TIMEOUT_USEC={17_000_000 + margin}",
        f"{stopping} · 1 VM left: web (cleaning up)\nEXTEND_TIMEOUT_USEC={margin}",
        f"{stopping} · all VMs stopped\nEXTEND_TIMEOUT_USEC={margin}",
    ]
    bus.feed(*stop_events())
    assert await harness.got() == ["STATUS=exiting with status 0"]


async def test_the_drain_ends_the_notifier_after_what_is_queued(
    systemd: tuple[str, socket.socket],
) -> None:
    path, sock = systemd
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            state.set_phase(Phase.STOPPING)
            bus.feed(ev.RuntimeStopping(reason="received SIGINT", signal="SIGINT"))
            bus.feed(*stop_events(status=1))
            await trio.testing.wait_all_tasks_blocked()
            assert len(bus.subscriptions) == 1  # `summary` is an event like any other
            bus.close()  # what bus.aclose() does once the last event is written
    assert bus.subscriptions == []
    assert await received(sock) == [
        "STOPPING=1\nSTATUS=stopping (received SIGINT)",
        "STATUS=exiting with status 1",
    ]
    await notifier.before_reload()  # after the end: nothing queued, nothing raised
    assert notifier.dropped == 0


async def test_a_single_vm_stop_while_running_shows_but_does_not_extend(harness: Harness) -> None:
    await harness.start()
    await harness.got()
    harness.bus.feed(ev.VmShutdownRequested(vm="web", reason="control API stop"))
    assert await harness.got() == [
        "STATUS=2/2 VMs running · 2 watchers · stopping web (stop requested)"
    ]


async def test_nothing_is_sent_or_subscribed_without_notify_socket() -> None:
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, env={"WATCHDOG_USEC": "1000000"})
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
    assert bus.subscriptions == []
    assert notifier.watchdog_s is None
    await notifier.before_reload()
    assert notifier.socket.sent == 0


async def test_a_missing_socket_is_one_warn_message_not_a_crash(tmp_path: Path) -> None:
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        bus.feed(ev.VmLaunched(vm="web", pid=10, attempt=1))
        bus.feed(ready())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    texts = bus.texts()
    assert len(texts) == 1
    severity, text = texts[0]
    assert severity == "warn"
    assert text.startswith(f"systemd notify socket {tmp_path / 'gone'}: No such file")
    assert notifier.socket.failed == 2


# --- the watchdog -----------------------------------------------------------------------------


async def heartbeats(state: RuntimeState, until: float) -> None:
    """The heartbeat ticker's effect on the state, until trio time `until`."""
    while trio.current_time() < until:
        state.last_heartbeat_mono = trio.current_time()
        await trio.sleep(state.config.heartbeat_interval)


async def ping_times(
    sock: socket.socket,
    log: list[float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Record the trio time of every WATCHDOG=1 systemd gets."""
    receiver = trio.socket.from_stdlib_socket(sock)
    task_status.started()
    while True:
        if await receiver.recv(4096) == b"WATCHDOG=1":
            log.append(trio.current_time())


async def run_watchdog(
    systemd: tuple[str, socket.socket],
    env: dict[str, str],
    heartbeat_until: float,
    total: float,
    stuck_bus: bool = False,
) -> tuple[list[float], FakeBus]:
    path, sock = systemd
    bus = FakeBus()
    state = make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path, **env}, pid=4242)
    pings: list[float] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(ping_times, sock, pings)
        nursery.start_soon(heartbeats, state, start + heartbeat_until)
        if stuck_bus:
            bus.stuck = True
            bus.publish_nowait(ev.Message(text="never written"))
        await nursery.start(notifier.run)
        state.set_phase(Phase.READY)
        bus.feed(ready())
        await trio.sleep(total)
        nursery.cancel_scope.cancel()
    return [round(t - start, 6) for t in pings], bus


async def test_pings_every_half_interval_while_healthy(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    pings, bus = await run_watchdog(
        systemd, {"WATCHDOG_USEC": "10000000"}, heartbeat_until=1000, total=30.5
    )
    assert pings == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert bus.texts() == []


async def test_no_pings_once_the_heartbeat_is_stale_and_again_when_it_resumes(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    path, sock = systemd
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    pings: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ping_times, sock, pings)
        nursery.start_soon(heartbeats, state, 10.5)  # the heartbeat stops after t=10
        await nursery.start(notifier.run)
        state.set_phase(Phase.READY)
        bus.feed(ready())
        await trio.sleep(40.5)
        assert pings == [5.0, 10.0, 15.0]  # at 15 the last beat (10) is within the 5 s limit
        nursery.start_soon(heartbeats, state, 1000.0)  # beats again from t=40.5
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert pings == [5.0, 10.0, 15.0, 45.0, 50.0]
    assert bus.texts() == [
        (
            "warn",
            "withholding watchdog pings: the heartbeat is 10.0 s late (limit 5 s); "
            "systemd restarts frameos if this lasts 10 s",
        ),
        ("info", "watchdog pings to systemd resumed"),
    ]


async def test_no_pings_while_the_event_log_writer_is_stuck(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    pings, bus = await run_watchdog(
        systemd, {"WATCHDOG_USEC": "4000000"}, heartbeat_until=1000, total=20.5, stuck_bus=True
    )
    # limit = max(2 × 1 s heartbeat, 4 s / 2) = 2 s, counted from the notifier's start
    assert pings == [2.0]
    assert bus.texts()[-1] == (
        "warn",
        "withholding watchdog pings: the event log writer has not moved for 4.0 s "
        "(2 events pending); systemd restarts frameos if this lasts 4 s",
    )


async def test_the_limit_follows_a_slow_heartbeat_interval(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    path, _ = systemd
    state = make_state()
    state = RuntimeState(
        config=state.config.model_copy(update={"heartbeat_interval": 30.0}), config_source="test"
    )
    notifier = SystemdNotifier(
        FakeBus(), state, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}
    )
    assert notifier.watchdog_s == 10.0
    from frameos.systemd import LoopHealth

    health = LoopHealth(FakeBus(), state, 10.0, now=0.0)
    assert health.limit() == 60.0
    assert health.problem(59.0) is None
    assert health.problem(61.0) == "the heartbeat is 61.0 s late (limit 60 s)"


async def test_watchdog_pid_of_another_process_means_no_pings(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    pings, _ = await run_watchdog(
        systemd, {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, heartbeat_until=1000, total=20
    )
    assert pings == []


async def test_watchdog_pid_of_ours_pings(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    pings, _ = await run_watchdog(
        systemd,
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"},
        heartbeat_until=1000,
        total=3.5,
    )
    assert pings == [1.0, 2.0, 3.0]


async def test_no_pings_before_ready(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    path, sock = systemd
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    pings: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ping_times, sock, pings)
        await nursery.start(notifier.run)
        await trio.sleep(30)  # a long start-up (orphans to stop first): no heartbeat yet
        nursery.cancel_scope.cancel()
    assert pings == []
    assert bus.texts() == []  # and no "withholding" warning: systemd's watchdog is not armed


def trio_monotonic_usec() -> int:
    from frameos.sdnotify import monotonic_usec

    return monotonic_usec()


async def test_view_takes_an_orphans_budget_from_its_event_and_stop_before_summary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from frameos.systemd import ServiceView

    view = ServiceView(make_state(), watchers=lambda: 0)
    now = trio.current_time()
    batch = [
        encode(ev.RuntimeStopping(reason="on_exhausted"), 1, 0.0),
        encode(ev.VmShutdownRequested(vm="orphan-7", reason="orphan", deadline_ms=35_000), 2, 0.0),
    ]
    assert view.observe(batch, now) == [
        ("STOPPING=1", "STATUS=stopping (on_exhausted)"),
        (
            "STATUS=stopping (on_exhausted) · 1 VM left: orphan-7 (stop requested)",
            f"EXTEND_TIMEOUT_USEC={35_000_000 + int(EXTEND_MARGIN_S * 1_000_000)}",
        ),
    ]
    stop, summary = stop_events()
    assert view.observe([encode(stop, 3, 0.0)], now) == [
        ("STATUS=stopped · flushing the event log",)
    ]
    assert view.observe([encode(summary, 4, 0.0)], now) == [("STATUS=exiting with status 0",)]


async def test_rung_budgets_come_from_the_events_not_a_reloaded_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from frameos.systemd import ServiceView

    state = make_state()
    view = ServiceView(state, watchers=lambda: 0)
    # a SIGHUP put 1 s rungs in the config; db still stops with what it was launched with
    fast = {"cooperative_ms": 1000, "sigterm_ms": 1000, "sigkill_ms": 1000}
    reloaded = [{**vm, "timeouts": fast} for vm in VMS]
    state.config = FrameConfig.model_validate({"vms": reloaded})
    margin = int(EXTEND_MARGIN_S * 1_000_000)
    start = trio.current_time()

    def extend(*events: Event) -> str:
        batch = [encode(event, 1, 0.0) for event in events]
        return view.observe(batch, trio.current_time())[-1][-1]

    view.observe([encode(ev.RuntimeStopping(reason="received SIGTERM"), 1, 0.0)], start)
    requested = ev.VmShutdownRequested(vm="db", reason="stopping", deadline_ms=9_000)
    assert extend(requested) == f"EXTEND_TIMEOUT_USEC={9_000_000 + margin}"
    attempted = ev.VmCooperativeAttempted(vm="db", method="qmp", timeout_ms=4_000)
    assert extend(attempted) == f"EXTEND_TIMEOUT_USEC={4_000_000 + margin}"
    await trio.sleep(4)
    # timed out: the rest of the whole ladder (9 s from the request) is left, 5 s
    timed_out = ev.VmCooperativeTimedOut(vm="db", waited_ms=4_000, reason="timeout_expired")
    assert extend(timed_out) == f"EXTEND_TIMEOUT_USEC={5_000_000 + margin}"
    escalated = ev.VmShutdownEscalated(vm="db", signal="SIGTERM", timeout_ms=3_000)
    assert extend(escalated) == f"EXTEND_TIMEOUT_USEC={3_000_000 + margin}"


async def test_with_the_real_bus_the_drain_ends_the_notifier(
    systemd: tuple[str, socket.socket], tmp_path: Path
) -> None:
    from frameos.bus import Bus
    from frameos.eventlog import EventLog

    path, sock = systemd
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    bus, state = Bus(log, fsync="never"), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path})
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await nursery.start(notifier.run)
            state.set_phase(Phase.STOPPING)
            # one batch (no checkpoint in between), so the datagrams do not depend on timing
            bus.publish_nowait(ev.RuntimeStopping(reason="received SIGTERM", signal="SIGTERM"))
            for event in stop_events():
                bus.publish_nowait(event)
            await bus.aclose()  # writes the rest, then closes every subscription
    log.close()
    assert await received(sock) == [
        "STOPPING=1\nSTATUS=stopping (received SIGTERM)",
        "STATUS=exiting with status 0",
    ]
    assert bus.dropped == 0


@pytest.mark.parametrize("load", ["below the high-water mark", "above the high-water mark"])
async def test_pings_go_on_while_the_writer_retries_a_full_disk(
    systemd: tuple[str, socket.socket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
    load: str,
) -> None:
    """M3: with the real bus retrying ENOSPC, written_seq stood still with events pending, so
    the pings stopped and systemd killed frameos without the stop ladder: a full disk is a
    degraded state (issue 8), the writer is alive as long as it keeps attempting. Above the
    high-water mark the heartbeat ticker itself waits in `publish`: not a stuck loop either."""
    import errno
    import os

    from frameos.bus import Bus
    from frameos.eventlog import EventLog
    from frameos.tickers import heartbeat

    path, sock = systemd
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    # fsync=batch: the writes happen on the loop, so the virtual clock never races a thread
    bus, state = Bus(log, fsync="batch"), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    full = False
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        if fd == log._fd and full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    pings: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ping_times, sock, pings)
        await nursery.start(bus.run)
        if load == "above the high-water mark":
            bus.high_water_bytes = 1  # any unwritten event is above the mark
            nursery.start_soon(heartbeat, bus, state)  # the real ticker: it publishes
        else:
            nursery.start_soon(heartbeats, state, 1000.0)
        await nursery.start(notifier.run)
        state.set_phase(Phase.READY)
        written = bus.subscribe("test", 16)
        bus.publish_nowait(ready())
        async for _ in written:  # runtime:ready is in the log: the notifier saw it
            break
        bus.unsubscribe(written)
        start = trio.current_time()
        full = True
        bus.publish_nowait(ev.Message(text="waits for room"))
        await trio.sleep(30.5)
        assert bus.fault is not None and "No space left" in bus.fault
        assert bus.last_seq > bus.written_seq
        # limit max(2 x 1 s, 4 s / 2) = 2 s: a ping every 2 s all along
        assert [round(t - start, 6) for t in pings] == [2.0 * i for i in range(1, 16)]
        full = False
        nursery.cancel_scope.cancel()  # the bus writes out what is pending as it ends
    log.close()
    assert not [e for e in bus.ring if b"withholding" in e.line]


async def test_pings_stop_when_a_failing_writer_stops_attempting(
    systemd: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    """M3: a fault is no blank cheque: a writer that stops retrying (a write hung in its
    thread) stops the pings after the limit plus one backoff step."""
    from frameos.bus import BACKOFF_MAX_S

    path, sock = systemd
    bus, state = FakeBus(), make_state()
    notifier = SystemdNotifier(bus, state, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    pings: list[float] = []

    async def failing_writer(until: float) -> None:
        bus.fault = "event log write failed: No space left on device"
        await trio.sleep(1)  # attempts at odd seconds, the watchdog looks at even ones
        while trio.current_time() < until:
            bus.write_errors += 1
            await trio.sleep(BACKOFF_MAX_S)

    async with trio.open_nursery() as nursery:
        await nursery.start(ping_times, sock, pings)
        nursery.start_soon(heartbeats, state, 1000.0)
        await nursery.start(notifier.run)
        state.set_phase(Phase.READY)
        bus.feed(ready())
        start = trio.current_time()
        bus.stuck = True
        bus.publish_nowait(ev.Message(text="never written"))
        nursery.start_soon(failing_writer, start + 20.5)  # retries every 2 s, then hangs
        await trio.sleep(40.5)
        nursery.cancel_scope.cancel()
    # the last attempt at t=19 is seen at t=20; limit 2 s + BACKOFF_MAX_S 2 s: pings up to 24
    assert [round(t - start, 6) for t in pings] == [2.0 * i for i in range(1, 13)]
    assert bus.texts()[-1] == (
        "warn",
        "withholding watchdog pings: the event log writer has not moved for 6.0 s "
        "(1 event pending); systemd restarts frameos if this lasts 4 s",
    )
