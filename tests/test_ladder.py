"""The stop ladder on a fake process and trio's autojump clock: every path, every rung."""

from __future__ import annotations

import signal

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import CooperativeMethod, TimeoutsConfig
from frameos.workers import ChannelError, ChannelUnavailable
from frameos.workers.cooperative import Request, request_for
from frameos.workers.ladder import Ladder, LadderResult
from frameos.workers.testing import FakeChild, RecordingPublisher

TIMEOUTS = TimeoutsConfig(cooperative_ms=2000, sigterm_ms=1000, sigkill_ms=1000)
SIGINT, SIGTERM, SIGKILL = int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGKILL)


async def stop(
    child: FakeChild,
    pub: RecordingPublisher,
    request: Request | None = None,
    method: CooperativeMethod = "signal",
) -> LadderResult:
    if request is None:
        request = request_for(method, child, sig="SIGINT")
    ladder = Ladder("a", child, method=method, request=request, timeouts=TIMEOUTS, publisher=pub)
    return await ladder.run("test")


def complete(pub: RecordingPublisher) -> ev.VmShutdownComplete:
    (event,) = pub.of("vm.shutdown_complete")
    assert isinstance(event, ev.VmShutdownComplete)
    return event


def timed_out(pub: RecordingPublisher) -> ev.VmCooperativeTimedOut:
    (event,) = pub.of("vm.cooperative_timed_out")
    assert isinstance(event, ev.VmCooperativeTimedOut)
    return event


async def test_cooperative_success(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, {SIGINT: 0.3})
        result = await stop(child, pub)
    assert pub.names() == [
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_succeeded",
        "vm.shutdown_complete",
    ]
    assert result == LadderResult("graceful", 300, changed=True, exited=True)
    assert child.signals == [SIGINT]
    assert complete(pub).outcome == "graceful"
    assert child.leftover_kills == 1


async def test_cooperative_timeout_then_sigterm(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, {SIGTERM: 0.2})
        result = await stop(child, pub)
    assert pub.names() == [
        "vm.shutdown_requested",
        "vm.cooperative_attempted",
        "vm.cooperative_timed_out",
        "vm.shutdown_escalated",
        "vm.shutdown_complete",
    ]
    assert timed_out(pub).reason == "timeout_expired"
    assert timed_out(pub).waited_ms == 2000
    assert result.outcome == "forced"
    assert result.total_ms == 2200
    assert child.signals == [SIGINT, SIGTERM]


async def test_channel_unavailable_escalates_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pub = RecordingPublisher()

    async def no_socket() -> None:
        raise ChannelUnavailable("QMP socket /x.qmp: No such file or directory")

    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, {SIGTERM: 0.1})
        result = await stop(child, pub, request=no_socket, method="qmp")
    event = timed_out(pub)
    assert (event.reason, event.waited_ms) == ("channel_unavailable", 0)
    assert "No such file" in (event.detail or "")
    assert result.total_ms == 100
    assert result.outcome == "forced"


async def test_channel_error(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()

    async def broken() -> None:
        await trio.sleep(0.05)
        raise ChannelError("QMP sent something that is not JSON")

    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, {SIGTERM: 0})
        await stop(child, pub, request=broken, method="qmp")
    assert timed_out(pub).reason == "channel_error"
    assert timed_out(pub).waited_ms == 50


async def test_method_none_goes_straight_to_sigterm(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, {SIGTERM: 0})
        await stop(child, pub, method="none")
    attempted = pub.of("vm.cooperative_attempted")[0]
    assert isinstance(attempted, ev.VmCooperativeAttempted)
    assert attempted.method == "none"
    assert timed_out(pub).reason == "channel_unavailable"
    assert child.signals == [SIGTERM]


async def test_sigterm_ignored_then_sigkill(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)  # honours only SIGKILL
        result = await stop(child, pub)
    escalations = [
        e.signal for e in pub.of("vm.shutdown_escalated") if isinstance(e, ev.VmShutdownEscalated)
    ]
    assert escalations == ["SIGTERM", "SIGKILL"]
    assert child.signals == [SIGINT, SIGTERM, SIGKILL]
    assert result == LadderResult("forced", 3000, changed=True, exited=True)
    assert child.returncode == -SIGKILL


async def test_unkillable_is_reported_not_waited_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, unkillable=True)
        start = trio.current_time()
        result = await stop(child, pub)
        assert trio.current_time() - start == pytest.approx(4.0)
    assert result.exited is False
    assert any("still there" in getattr(e, "text", "") for e in pub.of("message"))


async def test_exit_mid_ladder_during_sigterm_rung(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)
        child.exit_later(2.5, 0)  # on its own, half a second into the SIGTERM rung
        result = await stop(child, pub)
    assert result.total_ms == 2500
    assert result.outcome == "forced"
    assert child.signals == [SIGINT, SIGTERM]


async def test_exit_while_request_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()

    async def slow_handshake() -> None:
        await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)
        child.exit_later(0.4, 0)
        result = await stop(child, pub, request=slow_handshake, method="qmp")
    assert result.outcome == "graceful"
    assert result.total_ms == 400


async def test_already_exited(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)
        child.exit(0)
        result = await stop(child, pub)
    assert result == LadderResult("graceful", 0, changed=False, exited=True)
    assert child.signals == []
    assert child.leftover_kills == 1
    # nothing was asked, so nothing cooperated: requested (no budget), then complete
    assert pub.names() == ["vm.shutdown_requested", "vm.shutdown_complete"]
    (requested,) = pub.of("vm.shutdown_requested")
    assert isinstance(requested, ev.VmShutdownRequested)
    assert requested.deadline_ms == 0
    assert complete(pub).outcome == "graceful"


async def test_forced_ladder_announces_only_the_sigkill_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)  # honours only SIGKILL
        ladder = Ladder(
            "a",
            child,
            method="signal",
            request=request_for("signal", child, sig="SIGINT"),
            timeouts=TIMEOUTS,
            publisher=pub,
            forced=True,
        )
        result = await ladder.run("test")
    (requested,) = pub.of("vm.shutdown_requested")
    assert isinstance(requested, ev.VmShutdownRequested)
    assert requested.deadline_ms == TIMEOUTS.sigkill_ms == 1000
    assert child.signals == [SIGKILL]
    assert result.outcome == "forced"


@pytest.mark.parametrize(
    ("cancel_at", "rung"), [(0.5, "cooperative"), (2.5, "SIGTERM"), (3.5, "SIGKILL")]
)
async def test_cancellation_in_each_rung_leaves_nothing_alive(
    autojump_clock: trio.testing.MockClock, cancel_at: float, rung: str
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        # ignores everything; in the SIGKILL case, SIGKILL takes 0.8 s to land
        child = FakeChild(nursery)
        if rung == "SIGKILL":
            child.unkillable = True
            child.exits_on[SIGKILL] = 0.8
        with trio.move_on_after(cancel_at) as scope:
            await stop(child, pub)
        assert scope.cancelled_caught
    assert child.exited
    assert SIGKILL in child.signals
    assert child.leftover_kills >= 1
    # every shutdown_requested ends in shutdown_complete, a cancelled ladder too (M5)
    assert pub.names()[-1] == "vm.shutdown_complete"
    assert complete(pub).outcome == "forced"
    assert complete(pub).changed is True
    (message,) = pub.of("message")
    assert f"interrupted during {rung}" in getattr(message, "text", "")


async def test_cancellation_kill_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery, unkillable=True)
        start = trio.current_time()
        with trio.move_on_after(0.5):
            await stop(child, pub)
        # the shielded kill waits at most sigkill_ms, then gives up
        assert trio.current_time() - start == pytest.approx(1.5)
    assert not child.exited
    assert "still there" in getattr(pub.of("message")[0], "text", "")


async def test_every_rung_event_carries_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pub = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)  # honours only SIGKILL
        await stop(child, pub)
    (requested,) = pub.of("vm.shutdown_requested")
    assert isinstance(requested, ev.VmShutdownRequested)
    assert requested.deadline_ms == TIMEOUTS.total_ms == 4000
    (attempted,) = pub.of("vm.cooperative_attempted")
    assert isinstance(attempted, ev.VmCooperativeAttempted)
    assert attempted.timeout_ms == 2000
    assert [getattr(e, "timeout_ms", None) for e in pub.of("vm.shutdown_escalated")] == [1000, 1000]


class StuckPublisher(RecordingPublisher):
    """A bus whose log is stuck above its high-water mark: `publish` never returns."""

    async def publish(self, event: ev.Event, severity: ev.Severity | None = None) -> object:
        await trio.sleep_forever()


async def test_a_stuck_bus_never_delays_a_signal(autojump_clock: trio.testing.MockClock) -> None:
    pub = StuckPublisher()
    async with trio.open_nursery() as nursery:
        child = FakeChild(nursery)
        start = trio.current_time()
        result = await stop(child, pub)
        assert trio.current_time() - start == pytest.approx(3.0)
    assert child.signals == [SIGINT, SIGTERM, SIGKILL]
    assert result == LadderResult("forced", 3000, changed=True, exited=True)
    assert pub.names()[-1] == "vm.shutdown_complete"
