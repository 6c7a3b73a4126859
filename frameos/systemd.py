"""Telling systemd what the supervisor is doing (SPEC §9).

    bus subscription ──► ServiceView: event models → datagrams ──┐
    reload ── before_reload ─► "RELOADING=1 MONOTONIC_USEC=…" ───┼─► bounded channel ─► sender
    watchdog task ── LoopHealth says healthy ──► "WATCHDOG=1" ───┘     (one writer: NotifySocket)

- `READY=1` at runtime:ready (the server is bound and every permanent VM is ready or gave up,
  SPEC §9), and again after a reload; `STOPPING=1` at runtime:stopping; `STATUS=` whenever the
  line an operator would read changes ("3/3 VMs running · 2 watchers", "stopping (received
  SIGTERM) · 1 VM left: db (SIGTERM)"); while ready it begins "degraded: " with the reasons of
  /readyz whenever /readyz answers 503 (a VM gave up, say); while starting it says what the
  VMs wait for.
- `EXTEND_TIMEOUT_USEC=` on every stop-ladder event (while starting or stopping): the longest
  remaining rung of the VMs still in their ladder, plus `EXTEND_MARGIN_S`. Each rung's budget is
  the ladder event's own (`deadline_ms`, `timeout_ms`: the timeouts that VM was launched with),
  never the config, which after a SIGHUP holds the new timeouts. A ladder that keeps making
  progress never runs into TimeoutStopSec; one that stalls still does.
- `WATCHDOG=1` every `WATCHDOG_USEC / 2`, only once ready and only while the loop is healthy: the
  heartbeat ticker is on time and the event log writer is moving. A frozen or wedged process stops
  pinging and systemd restarts it.

Derived from the event models (matched on their classes) and `RuntimeState` only, not from the
workers' objects. With `NOTIFY_SOCKET` unset, `run` returns at once and nothing is sent. The
notifier ends when the bus closes its subscription (the drain, after the run's last event),
once its datagrams are out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import trio

from frameos.bus import BACKOFF_MAX_S, Subscription
from frameos.envelope import Envelope
from frameos.events import (
    Event,
    Message,
    RuntimeReady,
    RuntimeReload,
    RuntimeStop,
    RuntimeStopping,
    Severity,
    Summary,
    VmCooperativeAttempted,
    VmCooperativeSucceeded,
    VmCooperativeTimedOut,
    VmLaunched,
    VmShutdownComplete,
    VmShutdownEscalated,
    VmShutdownRequested,
)
from frameos.render import plural
from frameos.sdnotify import NotifySocket, monotonic_usec, watchdog_usec
from frameos.state import Phase, RuntimeState

EXTEND_MARGIN_S = 5.0
QUEUE_DEPTH = 64  # datagrams waiting for systemd's socket
SUBSCRIPTION_DEPTH = 256  # written batches waiting for the view (a drop here loses a change)
MAX_NAMES = 4  # VMs named in a stopping STATUS line before "…"

Datagram = tuple[str, ...]


class BusView(Protocol):
    """What the notifier needs of the bus."""

    @property
    def last_seq(self) -> int: ...

    written_seq: int
    write_errors: int  # failed write/fsync attempts: it moves while the writer retries

    @property
    def fault(self) -> str | None: ...

    def subscribe(self, name: str, depth: int) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> Envelope: ...


class ServiceView:
    """Turns events into the datagrams systemd should see; pure, so tests read it directly.

    `phase` is what systemd has been told (starting → ready → stopping → stopped), and
    `reloading` marks a reload in flight while ready.
    """

    def __init__(self, state: RuntimeState, watchers: Callable[[], int]) -> None:
        self.state = state
        self.watchers = watchers
        self.phase = Phase.STARTING
        self.reloading = False
        self.launched: set[str] = set()
        self.ladder: dict[str, tuple[str, float]] = {}  # vm → (rung, when its next step is due)
        self.ends: dict[str, float] = {}  # vm → when its whole ladder is due to end
        self.stopped_vms = 0
        self.reason = ""
        self.note = ""
        self.exit_status: int | None = None
        self.last_status = ""

    # --- events --------------------------------------------------------------------------------

    def observe(self, batch: Sequence[Envelope], now: float) -> list[Datagram]:
        """The datagrams for one written batch, in order: one per state change, then updates."""
        out: list[Datagram] = []
        extend = False
        for envelope in batch:
            if envelope.event is None:
                continue  # an external producer's ext.* event: no model, nothing for systemd
            event = envelope.event
            extend |= self._vm_event(event, now)
            change = self._runtime_event(event)
            if change is not None:
                self.last_status = self._status_line()
                out.append((change, self.last_status))
        extend = extend and self.phase in (Phase.STARTING, Phase.STOPPING)
        status = self._status_line()
        tail = [status] if status != self.last_status else []
        tail += [f"EXTEND_TIMEOUT_USEC={self.extend_usec(now)}"] if extend else []
        if tail:
            out.append(tuple(tail))
        self.last_status = status
        return out

    def _runtime_event(self, event: Event) -> str | None:
        """The state-change line an event calls for, if any. Events out of place (a reload that
        began before ready) change nothing here."""
        match event:
            case RuntimeReady() if self.phase is Phase.STARTING:
                self.phase = Phase.READY
                return "READY=1"
            case RuntimeReload(error=error) if self.reloading:
                self.reloading = False
                self.note = "last reload failed, running config kept" if error else ""
                return "READY=1"
            case RuntimeStopping(reason=reason) if self.phase in (Phase.STARTING, Phase.READY):
                self.phase, self.reloading = Phase.STOPPING, False
                self.reason = reason or "requested"
                return "STOPPING=1"
            case RuntimeStop():
                self.phase, self.reloading = Phase.STOPPED, False
            case Summary(exit_status=status):
                self.exit_status = status
        return None

    def _vm_event(self, event: Event, now: float) -> bool:
        """Track launches and stop ladders; True when the event is a stop-ladder step. Each rung's
        budget is the event's own (the timeouts that VM was launched with), never the config."""
        match event:
            case VmLaunched(vm=vm):
                self.launched.add(vm)
                return False
            case VmShutdownComplete(vm=vm):
                self.ladder.pop(vm, None)
                self.ends.pop(vm, None)
                self.launched.discard(vm)
                self.stopped_vms += 1
                return True
            case VmShutdownRequested(vm=vm, deadline_ms=deadline_ms):
                self.ends[vm] = now + (deadline_ms or 0) / 1000
                self.ladder[vm] = ("stop requested", self.ends[vm])
            case VmCooperativeAttempted(vm=vm, method=method, timeout_ms=timeout_ms):
                self.ladder[vm] = (f"cooperative {method}", now + timeout_ms / 1000)
            case VmCooperativeTimedOut(vm=vm):
                self.ladder[vm] = ("cooperative timed out", self.ends.get(vm, now))
            case VmCooperativeSucceeded(vm=vm):
                self.ladder[vm] = ("cleaning up", now)
            case VmShutdownEscalated(vm=vm, signal=signal, timeout_ms=timeout_ms):
                self.ladder[vm] = (signal, now + timeout_ms / 1000)
            case _:
                return False
        return True

    def extend_usec(self, now: float) -> int:
        """The longest remaining rung of the VMs still stopping, plus the margin, in µs."""
        remaining = max((deadline - now for _, deadline in self.ladder.values()), default=0.0)
        return int((max(remaining, 0.0) + EXTEND_MARGIN_S) * 1_000_000)

    # --- reload --------------------------------------------------------------------------------

    def begin_reload(self) -> Datagram | None:
        """The datagram that starts a reload, or None when not running (start-up, stopping)."""
        if self.phase is not Phase.READY or self.reloading:
            return None
        self.reloading = True
        self.last_status = self._status_line()
        return ("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", self.last_status)

    # --- the STATUS line -----------------------------------------------------------------------

    def _status_line(self) -> str:
        return "STATUS=" + " · ".join(part for part in self._status_parts() if part)

    def _status_parts(self) -> list[str]:
        if self.phase is Phase.STARTING:
            total = len(self.state.config.vms)
            waiting = self.state.vm_reasons()
            return [
                "starting",
                f"{len(self.launched)}/{total} VMs launched" if total else "",
                f"not ready: {_first(waiting)}" if waiting else "",
                self._ladder_text("stopping"),
            ]
        if self.reloading:
            return ["reloading configuration"]
        if self.phase is Phase.STOPPING:
            left = (
                f"{plural(len(self.ladder), 'VM')} left: {self._ladder_text('')}"
                if self.ladder
                else "all VMs stopped"
                if self.stopped_vms
                else ""
            )
            return [f"stopping ({self.reason})", left]
        if self.phase is Phase.STOPPED:
            if self.exit_status is not None:
                return [f"exiting with status {self.exit_status}"]
            return ["stopped", "flushing the event log"]
        counts = self.state.worker_counts()
        vms = f"{counts.running}/{counts.total} VMs running" if counts.total else "running · no VMs"
        reasons = self.state.vm_reasons()  # what /readyz says once ready: 503 is "degraded"
        return [
            f"degraded: {_first(reasons)}" if reasons else "",
            vms,
            plural(self.watchers(), "watcher"),
            f"{counts.failed} failed" if counts.failed else "",
            self._ladder_text("stopping"),
            self.note,
        ]

    def _ladder_text(self, prefix: str) -> str:
        if not self.ladder:
            return ""
        names = sorted(self.ladder)
        shown = ", ".join(f"{vm} ({self.ladder[vm][0]})" for vm in names[:MAX_NAMES])
        more = ", …" if len(names) > MAX_NAMES else ""
        return f"{prefix} {shown}{more}".strip() if prefix else f"{shown}{more}"


def _first(reasons: list[str]) -> str:
    """The first few reasons of /readyz, for a STATUS line."""
    more = ", …" if len(reasons) > MAX_NAMES else ""
    return ", ".join(reasons[:MAX_NAMES]) + more


class LoopHealth:
    """Is the trio loop doing its job? The heartbeat ticker is on time and the log writer moves.

    A full or failing disk is a degraded state, not a stuck loop (issue 8): while `bus.fault`
    is set, a failed attempt counts as the writer moving (it retries at least every
    BACKOFF_MAX_S); pings stop only when the writer stops attempting (a hung write or fsync).
    """

    def __init__(self, bus: BusView, state: RuntimeState, watchdog_s: float, now: float) -> None:
        self.bus, self.state, self.watchdog_s = bus, state, watchdog_s
        self.started = now
        self._written = bus.written_seq
        self._errors = bus.write_errors
        self._progress = now

    def limit(self) -> float:
        """How old the heartbeat (or the writer's progress) may be: max(2 × heartbeat, wd / 2)."""
        return max(2 * self.state.config.heartbeat_interval, self.watchdog_s / 2)

    def problem(self, now: float) -> str | None:
        """Why the loop is not healthy, or None when it is."""
        limit = self.limit()
        bus = self.bus
        pending = bus.last_seq - bus.written_seq
        # a failing log above its high-water mark holds the heartbeat's `publish`: then the
        # writer's attempts (below) say whether the loop is alive
        if self.state.phase in (Phase.STARTING, Phase.READY) and not (bus.fault and pending):
            age = now - max(self.state.last_heartbeat_mono, self.started)
            if age > limit:
                return f"the heartbeat is {age:.1f} s late (limit {limit:g} s)"
        if pending <= 0 or (bus.written_seq, bus.write_errors) != (self._written, self._errors):
            self._written, self._errors, self._progress = bus.written_seq, bus.write_errors, now
        elif now - self._progress > (limit + BACKOFF_MAX_S if bus.fault else limit):
            return (
                f"the event log writer has not moved for {now - self._progress:.1f} s "
                f"({plural(pending, 'event')} pending)"
            )
        return None


class SystemdNotifier:
    """Readiness, status, stop progress, reloads and watchdog pings for systemd. Run in the
    outer nursery (`await outer.start(notifier.run)`) and register `before_reload`."""

    def __init__(
        self,
        bus: BusView,
        state: RuntimeState,
        *,
        watchers: Callable[[], int] = lambda: 0,
        env: Mapping[str, str] | None = None,
        pid: int | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.bus, self.state = bus, state
        self.socket = NotifySocket.from_env(env, on_error=self._socket_failed)
        usec = watchdog_usec(env, pid) if self.socket.enabled else None
        self.watchdog_s = usec / 1_000_000 if usec else None
        self.view = ServiceView(state, watchers)
        self.dropped = 0
        self.pings = 0
        self._withheld = False
        self._send, self._receive = trio.open_memory_channel[Datagram](QUEUE_DEPTH)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Observe the bus until it closes this subscription, then send what is queued and
        return. Returns at once when NOTIFY_SOCKET is unset.

        On cancellation, what is queued is not sent.
        """
        if not self.socket.enabled:
            self._send.close()
            task_status.started()
            return
        subscription = self.bus.subscribe("systemd", SUBSCRIPTION_DEPTH)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                watchdog = trio.CancelScope()
                if self.watchdog_s is not None:
                    nursery.start_soon(self._watchdog, self.watchdog_s, watchdog)
                task_status.started()
                async for batch in subscription:
                    self._queue(self.view.observe(batch, trio.current_time()))
                watchdog.cancel()
                self._send.close()  # the sender sends what is queued, then ends
        finally:
            self._send.close()
            self.bus.unsubscribe(subscription)
            self.socket.close()

    async def _sender(self) -> None:
        async for datagram in self._receive:
            await self.socket.send(*datagram)

    async def before_reload(self) -> None:
        """Supervisor hook: `RELOADING=1` + `MONOTONIC_USEC=` before the config is re-read.

        Queued like everything else (never waits on systemd); the checkpoint lets it go out.
        """
        datagram = self.view.begin_reload()
        if datagram is not None:
            self._queue([datagram])
        await trio.lowlevel.checkpoint()

    def _queue(self, datagrams: Iterable[Datagram]) -> None:
        for datagram in datagrams:
            try:
                self._send.send_nowait(datagram)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.dropped += 1

    async def _watchdog(self, watchdog_s: float, scope: trio.CancelScope) -> None:
        """Every `watchdog_s / 2` once ready (systemd arms its watchdog at READY=1): ping when
        the loop is healthy, else withhold the ping. Ends when `scope` is cancelled."""
        interval = watchdog_s / 2
        health = LoopHealth(self.bus, self.state, watchdog_s, trio.current_time())
        deadline = trio.current_time()
        with scope:
            while True:
                deadline += interval
                await trio.sleep_until(deadline)
                now = trio.current_time()
                if deadline + interval <= now:  # late by a whole interval or more: skip
                    deadline = now
                if self.view.phase is Phase.READY:  # reloading too: the watchdog stays armed
                    self._ping_if_healthy(health.problem(now), watchdog_s)

    def _ping_if_healthy(self, problem: str | None, watchdog_s: float) -> None:
        """Ping, or withhold it; say so (once) when pings stop and when they resume."""
        if problem is None:
            self.pings += 1
            self._queue([("WATCHDOG=1",)])
            if self._withheld:
                self._withheld = False
                self._report("watchdog pings to systemd resumed", "info")
        elif not self._withheld:
            self._withheld = True
            self._report(
                f"withholding watchdog pings: {problem}; systemd restarts frameos "
                f"if this lasts {watchdog_s:g} s",
                "warn",
            )

    def _socket_failed(self, text: str) -> None:
        self._report(
            f"{text}; systemd gets no readiness, status or watchdog pings from frameos "
            f"while this lasts (said once)"
        )

    def _report(self, text: str, severity: Severity = "warn") -> None:
        with contextlib.suppress(trio.ClosedResourceError):  # the run's last events are out
            self.bus.publish_nowait(Message(text=text), severity)
