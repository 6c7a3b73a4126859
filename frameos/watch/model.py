"""The view's state: the instance as the /v1 snapshots said it, moved on by every event since.

`Model.apply(envelope)` is the only way an event changes it (and is cheap: the stream never
waits for the screen); the snapshots (`set_health`, `set_vms`, `set_workers`) are taken at
every (re)connect and whenever an event says a VM changed in a way an event alone cannot tell.
Events are matched on their model classes (frameos/events.py), never on their names.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from frameos import events as ev
from frameos.envelope import Envelope
from frameos.render import describe

WATCHED = frozenset(
    cls.NAME
    for cls in (
        ev.RuntimeStart, ev.RuntimeReady, ev.RuntimeStopping, ev.RuntimeReload,
        ev.VmLaunched, ev.VmExited, ev.VmRestartScheduled, ev.VmGaveUp,
        ev.VmShutdownRequested, ev.VmShutdownComplete, ev.VmOverlayPrepared,
        ev.VmCooperativeAttempted, ev.VmCooperativeSucceeded, ev.VmCooperativeTimedOut,
        ev.VmShutdownEscalated, ev.VmLayerDiscarded, ev.VmReady, ev.VmHealth,
        ev.BootstrapStarted, ev.BootstrapStep, ev.BootstrapCompleted, ev.BootstrapFailed,
        ev.CommandAccepted, ev.CommandCompleted, ev.CommandFailed, ev.CommandCanceled,
    )
)  # fmt: skip  # the events that move a VM row, the header, or a run on
WORKER_EVENTS = frozenset(
    cls.NAME for cls in (ev.WorkerRegistered, ev.WorkerStatus, ev.WorkerStale)
)  # the external workers pane is asked for again after these
MESSAGES = 500  # recent messages kept
VM_EVENTS = 50  # recent events kept per VM (the detail screen)
LOG_LINES = 200  # output log lines kept for the detail screen
PROBLEMS = ("warn", "error", "blocker")
STOPPED = ("idle", "finished", "gave_up", "stopped")
# The HEALTH column (7 wide) of each snapshot `health.status`; events move it on (`_vm_event`).
HEALTH_WORDS = {"ready": "ready", "starting": "waiting", "unhealthy": "failing", "down": "down"}


class Msg:
    """One line of the messages pane; a repeated progress event bumps `count`. Its text is made
    when it is first shown (most lines of a fast stream never are)."""

    __slots__ = (
        "_text",
        "count",
        "envelope",
        "name",
        "resolved",
        "seq",
        "severity",
        "step",
        "timestamp",
        "vm",
    )

    def __init__(self, envelope: Envelope, vm: str | None, step: str | None = None) -> None:
        self.envelope = envelope
        self.seq, self.timestamp = envelope.seq, envelope.timestamp
        self.severity, self.name, self.vm, self.step = envelope.severity, envelope.name, vm, step
        self.count = 1
        self.resolved = False
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = describe(self.envelope)
        return self._text

    def again(self, envelope: Envelope) -> None:
        """The same progress once more: this one's text and time, one more in the count."""
        self.envelope, self.seq, self.timestamp = envelope, envelope.seq, envelope.timestamp
        self.count += 1
        self._text = None


@dataclass
class Vm:
    """One VM row: the snapshot's fields (dict) and when they were true."""

    name: str
    state: str = "idle"
    pid: int | None = None
    started: float | None = None  # epoch seconds the current process started
    restarts: int = 0
    last_exit: str = "-"
    health: str = "-"
    bootstrap: str = "none"
    steps: list[list[str]] = field(default_factory=list)  # [name, status]
    config: dict[str, Any] = field(default_factory=dict)
    events: deque[Msg] = field(default_factory=lambda: deque(maxlen=VM_EVENTS))

    def uptime(self, now: float) -> float | None:
        return now - self.started if self.state == "running" and self.started else None

    def progress(self) -> tuple[int, int, str | None]:
        """(steps done, steps in all, the step running or next)."""
        done = sum(1 for _, status in self.steps if status in ("success", "skipped", "failed"))
        current = next((n for n, status in self.steps if status in ("running", "pending")), None)
        return done, len(self.steps), current


@dataclass
class Run:
    """The run an operator started from the view (s, r, b): followed until it ends."""

    op: str
    vm: str
    run_id: str | None = None
    state: str = "requested"  # requested, accepted, succeeded, failed, canceled
    detail: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ("succeeded", "failed", "canceled", "lost")


def exit_text(exit_code: object, signal: object) -> str:
    return str(signal) if signal else f"exit {exit_code}"


class Model:
    """Everything the screen shows; `dirty` says it changed since the last draw."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.host = url.split("://", 1)[-1]
        self.version = "?"
        self.started_at: float | None = None
        self.ready: bool | None = None
        self.reasons: list[str] = []
        self.connection = "connecting"
        self.seq = 0
        self.vms: dict[str, Vm] = {}
        self.workers: list[dict[str, Any]] = []
        self.messages: deque[Msg] = deque(maxlen=MESSAGES)
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.selected = 0
        self.detail = False
        self.help = False
        self.filter = ""
        self.editing_filter = False
        self.confirm: tuple[str, str] | None = None  # (op, vm) waiting for y/n
        self.run: Run | None = None
        self.stale = True  # the VM snapshots need asking for again
        self.workers_stale = False  # the external workers need asking for again
        self.health_stale = False  # readiness needs asking for again (/readyz says why)
        self.snapshot_seq = 0  # the head seq when the VM snapshots were taken
        self.dirty = True

    # --- snapshots ----------------------------------------------------------------------------

    def set_health(self, health: dict[str, Any], ready: dict[str, Any]) -> None:
        self.version = str(health.get("version", "?"))
        self.started_at = float(health.get("started_at") or time.time())
        self.ready = ready.get("status") == "ready"
        self.reasons = [str(r) for r in ready.get("reasons", [])]
        self.dirty = True

    def set_vms(self, snapshots: list[dict[str, Any]]) -> None:
        now = time.time()
        vms: dict[str, Vm] = {}
        for snap in snapshots:
            name = str(snap["name"])
            vm = self.vms.get(name) or Vm(name)
            vm.state = str(snap.get("state", "?"))
            vm.pid = snap.get("pid")
            vm.started = now - float(snap.get("uptime_s") or 0) if vm.pid else None
            vm.restarts = int(snap.get("restarts", 0))
            last = snap.get("last_exit")
            vm.last_exit = exit_text(last.get("exit_code"), last.get("signal")) if last else "-"
            health = snap.get("health")
            status = str(health.get("status", "?")) if isinstance(health, dict) else "-"
            vm.health = HEALTH_WORDS.get(status, status)
            boot = snap.get("bootstrap") or {}
            vm.bootstrap = str(boot.get("status", "none"))
            vm.steps = [[str(s["name"]), str(s["status"])] for s in boot.get("steps", [])]
            vm.config = dict(snap.get("config") or {})
            vms[name] = vm
        self.vms = vms
        self.selected = min(self.selected, max(0, len(vms) - 1))
        self.stale = False
        self.dirty = True

    def set_workers(self, workers: list[dict[str, Any]]) -> None:
        self.workers = workers
        self.dirty = True

    def set_connection(self, text: str) -> None:
        if text != self.connection:
            self.connection = text
            self.dirty = True

    # --- events -------------------------------------------------------------------------------

    def apply(self, envelope: Envelope) -> None:
        """Move the picture on by one event (never one seen before)."""
        if envelope.seq <= self.seq:
            return
        self.seq = envelope.seq
        self.dirty = True
        if envelope.name in WORKER_EVENTS:
            self.workers_stale = True
        event = None
        if envelope.name in WATCHED:  # decoding a model is the costly part: only when it matters
            try:
                event = envelope.model()
            except ValueError:
                event = None
        vm_name = getattr(event, "vm", None) if event is not None else None
        vm = self.vms.get(vm_name) if isinstance(vm_name, str) else None
        if vm is not None and event is not None and envelope.seq > self.snapshot_seq:
            self._vm_event(vm, event, envelope.timestamp)
        elif isinstance(event, ev.RuntimeStart):
            self.stale = True  # a new frameos: new pids, maybe new VMs
            self.started_at = envelope.timestamp
        elif isinstance(event, ev.RuntimeReady):
            # READY=1 also goes out "degraded" (a VM gave up with `stay`): /readyz says which
            self.health_stale = True
        elif isinstance(event, ev.RuntimeStopping):
            self.ready, self.reasons = False, [f"stopping ({event.reason})"]
        elif isinstance(event, ev.RuntimeReload):
            self.stale = True
        run_id = getattr(event, "run_id", None)
        if self.run is not None and run_id is not None and run_id == self.run.run_id:
            self._run_event(event)
        if envelope.severity == "debug":
            return
        step = event.step if isinstance(event, ev.BootstrapStep) else None
        self._message(envelope, vm_name if isinstance(vm_name, str) else None, vm, step)

    def _vm_event(self, vm: Vm, event: ev.Event, at: float) -> None:
        if isinstance(event, ev.VmLaunched):
            vm.state, vm.pid, vm.started = "running", event.pid, at
            vm.health = "waiting"
            self._resolve(vm.name)
        elif isinstance(event, ev.VmReady):
            vm.health = "ready"
        elif isinstance(event, ev.VmHealth):  # healthy: the snapshot says whether it is ready
            vm.health = "failing" if event.status == "unhealthy" else vm.health
            self.stale = self.stale or event.status == "healthy"
        elif isinstance(event, ev.VmExited):
            vm.pid, vm.started, vm.health = None, None, "down"
            vm.last_exit = exit_text(event.exit_code, event.signal)
            vm.state = "stopping" if event.expected else "backoff"
            self.stale = True  # the policy decides what comes next; the snapshot says
        elif isinstance(event, ev.VmRestartScheduled):
            vm.state = "backoff"
            self.stale = True
        elif isinstance(event, ev.VmGaveUp):
            vm.state = "gave_up"
        elif isinstance(event, ev.VmShutdownRequested):
            vm.state = "stopping"
        elif isinstance(event, ev.VmShutdownComplete):
            self.stale = True
        elif isinstance(event, ev.BootstrapStarted):
            vm.bootstrap = "running"
            vm.steps = [[name, "pending"] for name, _ in vm.steps]
            if vm.steps:
                vm.steps[0][1] = "running"
        elif isinstance(event, ev.BootstrapStep):
            for index, step in enumerate(vm.steps):
                if step[0] == event.step:
                    step[1] = event.status
                    if index + 1 < len(vm.steps) and vm.steps[index + 1][1] == "pending":
                        vm.steps[index + 1][1] = "running"
                    break
        elif isinstance(event, ev.BootstrapCompleted):
            vm.bootstrap = "ok"
            self._resolve(vm.name)
        elif isinstance(event, ev.BootstrapFailed):
            vm.bootstrap = "failed"

    def _run_event(self, event: ev.Event | None) -> None:
        assert self.run is not None
        if isinstance(event, ev.CommandCompleted):
            self.run.state = "succeeded"
        elif isinstance(event, ev.CommandFailed):
            self.run.state = "failed"
            self.run.detail = event.error  # the why itself: the footer names the run already
        elif isinstance(event, ev.CommandCanceled):
            self.run.state = "canceled"
            self.run.detail = event.reason
        elif event is not None:
            self.run.detail = describe_event(event)

    def _message(
        self, envelope: Envelope, vm_name: str | None, vm: Vm | None, step: str | None
    ) -> None:
        """A new line, or the last one again when this is the same progress once more (same
        event, same VM and, for bootstrap steps, the same step: two steps are two lines)."""
        last = self.messages[-1] if self.messages else None
        if (
            last is not None
            and envelope.severity == "progress"
            and last.severity == "progress"
            and last.name == envelope.name
            and last.vm == vm_name
            and last.step == step
        ):
            last.again(envelope)
            return
        msg = Msg(envelope, vm_name, step)
        self.messages.append(msg)
        if vm is not None:
            vm.events.append(msg)

    def _resolve(self, vm_name: str) -> None:
        """The VM is back: its earlier problems are dimmed."""
        for msg in self.messages:
            if msg.vm == vm_name and msg.severity in PROBLEMS:
                msg.resolved = True

    # --- what the screen shows ----------------------------------------------------------------

    def visible_messages(self) -> list[Msg]:
        if not self.filter:
            return list(self.messages)
        needle = self.filter.lower()
        return [m for m in self.messages if needle in m.text.lower() or needle in m.name.lower()]

    @property
    def selected_vm(self) -> Vm | None:
        names = list(self.vms)
        return self.vms[names[self.selected]] if names else None

    def uptime(self, now: float) -> float | None:
        return now - self.started_at if self.started_at is not None else None


def describe_event(event: ev.Event) -> str:
    from frameos.render import sentence

    try:
        return sentence(event)
    except (KeyError, ValueError, TypeError, IndexError):
        return type(event).__name__
