"""One supervised VM (SPEC §5): launch, watch, bootstrap, restart by policy, stop by ladder.

Its lifecycle and the bootstrap of each launch are the state tables of states.py (`VmState`,
`BootState`); launch.py starts the process. A single task owns the process from launch to
exit: `stop()` only asks (it cancels whatever the task waits on) and then waits for the task to
finish the ladder. The exit is awaited, never polled, so a restart follows the backoff's end
within milliseconds.

A `run` is one session, from the first launch to the stop; after a stop (STOPPED) the pool may
`rearm` the worker and run a new session (an operator's start). `relaunch` wakes a session
parked in backoff, gave_up or finished. Each launch leaves a `LaunchRecord` (pid or error, then
the bootstrap's outcome) that the pool's operations wait on; `wait_until` is the one way to wait
for a change of the worker (a broadcast event replaced at every change).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from frameos import events as ev
from frameos.config import VmConfig
from frameos.workers import LaunchError, OperationFailed, VmBusy, overlay, pidfile, procfs
from frameos.workers.bootstrap import BootstrapContext, run_bootstrap
from frameos.workers.child import Child, Tracking, kill_group, signal_name
from frameos.workers.cooperative import request_for
from frameos.workers.ladder import Ladder
from frameos.workers.launch import LAUNCH_ERRORS, Spawner, default_spawner, why
from frameos.workers.notify import NotifyChannels
from frameos.workers.orphans import clean_up_after, discard_overlay, remove_stale_socket
from frameos.workers.paths import VmPaths, child_env, substitute, uses_notify_chardev, uses_qmp
from frameos.workers.probes import LaunchHealth, after_ms
from frameos.workers.publisher import Publisher, RunTagger
from frameos.workers.restart import Decision, RestartTracker, Verdict
from frameos.workers.states import BOOT_TRANSITIONS, TRANSITIONS, BootState, VmState

if TYPE_CHECKING:  # imported where used: the API's pydantic models, not needed to launch
    from frameos.workers.snapshot import HealthSnapshot

__all__ = ["BootState", "LaunchRecord", "Spawner", "VmState", "VmWorker", "default_spawner"]

STOP_REASON = "frameos is stopping"
# The bound on a ladder run under cancellation, beyond its rungs: the final kill's wait.
LADDER_SLACK_S = 0.5
# Launch records kept for the operations waiting on them (the newest few are enough).
KEPT_LAUNCHES = 8
# A session without a process (backoff, gave_up, finished): `relaunch` may wake it.
PARKED = (VmState.BACKOFF, VmState.GAVE_UP, VmState.FINISHED)


@dataclass
class LaunchRecord:
    """One launch: its pid or why it failed (`settled`), then its bootstrap (`booted`)."""

    attempt: int
    pid: int | None = None
    error: str | None = None
    boot_ok: bool = False
    settled: trio.Event = field(default_factory=trio.Event)
    booted: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int | None
    signal: str | None
    at: float  # epoch seconds


class VmWorker:
    """Supervises one VM; `run` in the pool's nursery, `stop` from the supervisor's stop."""

    def __init__(
        self,
        vm: VmConfig,
        state_dir: Path,
        publisher: Publisher,
        *,
        on_exhausted: Callable[[str], None] | None = None,
        base_env: Mapping[str, str] | None = None,
        spawner: Spawner = default_spawner,
    ) -> None:
        self.vm, self.spawner, self.state_dir = vm, spawner, state_dir
        self.publisher = RunTagger(publisher, self._observe)
        self.launched_vm = vm  # the settings of the current (or last) launch: its ladder's
        self.paths = VmPaths.of(vm, state_dir)
        self.on_exhausted = on_exhausted
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.tracker = RestartTracker(vm.restart)
        self.state = VmState.IDLE
        self.attempt = 0
        self.child: Child | None = None
        self.launched_at = 0.0
        self.boot = BootState.NONE
        self.last_abnormal = False
        self._stop_reason = ""
        self._stop_requested = trio.Event()
        self._done = trio.Event()
        self._wake: trio.CancelScope | None = None
        self._ladder_scope: trio.CancelScope | None = None  # set while a ladder runs
        self._laddered = False  # a ladder ran in this stop
        self.operator_stopped = False  # stop_vm: no policy restarts it until start_vm
        self.launches: deque[LaunchRecord] = deque(maxlen=KEPT_LAUNCHES)
        self.last_exit: ExitRecord | None = None
        self.backoff_until: float | None = None  # epoch seconds
        self.boot_steps: dict[str, tuple[str, int | None]] = {}  # step: (status, duration_ms)
        self.boot_error: str | None = None
        self._relaunch = False
        self._in_session = False  # a `run` is under way
        self._forced = False  # `force`: ladders of this session are cut short
        self._changed = trio.Event()
        self._boot_scopes: set[trio.CancelScope] = set()
        self.health: LaunchHealth | None = None  # the probes of the current (or last) launch
        self.notify: NotifyChannels | None = None  # the notify socket of the current launch
        self._ready_armed = False  # this launch has not said `vm.ready` yet
        self._liveness_kill: str | None = None  # why a liveness failure is stopping the VM
        self._past_probe_failures = 0  # failed probe attempts of the earlier launches
        self._past_notify_drops = 0

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def restarts(self) -> int:
        return self.tracker.restarts

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def set_state(self, to: VmState) -> None:
        """Move to `to`; an illegal transition is a bug and raises."""
        if to not in TRANSITIONS[self.state]:
            raise RuntimeError(
                f"vm {self.name}: illegal transition {self.state.value} → {to.value}"
            )
        self.state = to
        self._notify()

    def _notify(self) -> None:
        """Wake every `wait_until`: the worker changed. The first time in a launch that it is
        ready, say `vm.ready`."""
        self._changed.set()
        self._changed = trio.Event()
        if self._ready_armed and self.ready:
            self._ready_armed = False
            self._say(ev.VmReady(vm=self.name, after_ms=after_ms(self.launched_at)))

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds, checked at every change of the worker."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    @property
    def ready(self) -> bool:
        """Ready (SPEC §5.2): running, bootstrapped, and its readiness probe (if any) healthy in
        this launch (False again while it fails). Every change calls `_notify`, so
        `wait_until(lambda: w.ready)` works."""
        return (
            self.state is VmState.RUNNING
            and self.boot is BootState.OK
            and (self.health is None or self.health.ready)
        )

    @property
    def probe_failures(self) -> int:
        """Failed probe attempts (and missed watchdog pings) so far, every launch."""
        return self._past_probe_failures + (self.health.failures if self.health else 0)

    @property
    def notify_drops(self) -> int:
        """Notify messages dropped (not from the VM's group, oversize) so far, every launch."""
        return self._past_notify_drops + (self.notify.dropped if self.notify else 0)

    def launch_record(self, attempt: int) -> LaunchRecord | None:
        return next((r for r in self.launches if r.attempt == attempt), None)

    def set_boot(self, to: BootState) -> None:
        """Move the bootstrap state to `to`; an illegal transition is a bug and raises."""
        if to not in BOOT_TRANSITIONS[self.boot]:
            raise RuntimeError(
                f"vm {self.name}: illegal bootstrap transition {self.boot.value} → {to.value}"
            )
        self.boot = to
        self._notify()

    def _boot_is(self, state: BootState) -> bool:
        """`self.boot is state`, read afresh (after an await, another task may have moved it)."""
        return self.boot is state

    def _observe(self, event: ev.Event) -> None:
        """Every event of this worker passes here: the snapshot's bootstrap steps."""
        match event:
            case ev.BootstrapStarted():
                steps = self.vm.bootstrap.steps if self.vm.bootstrap else []
                self.boot_steps = {step.name: ("pending", None) for step in steps}
                self.boot_error = None
            case ev.BootstrapStep(step=step, status=status, duration_ms=duration_ms):
                self.boot_steps[step] = (status, duration_ms)
            case ev.BootstrapFailed(error=error):
                self.boot_error = error

    def uptime_s(self) -> float:
        if self.state is not VmState.RUNNING:
            return 0.0
        return trio.current_time() - self.launched_at

    # --- the owning task --------------------------------------------------------------------

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Clean up after a previous instance, then launch and supervise until `stop`.

        `started` comes after the first launch (with its pid, or None when it failed).
        Cancellation stops a running VM through its ladder (shielded, bounded by the rungs'
        timeouts; `force` cuts it short) and leaves no process and no pidfile.
        """
        if self._in_session:  # started twice (a start raced the pool's own start)
            task_status.started(self.pid)
            return
        if self._stop_requested.is_set():  # stop() came first
            self._finish_stop()
            self._done.set()
            task_status.started(None)
            return
        self._in_session = True
        try:
            self.set_state(VmState.STARTING)
            self.paths.make_dirs()
            await clean_up_after(self.name, self.paths.pidfile, self.paths.overlay, self.publisher)
            await self._supervise(task_status)
        except BaseException as exc:
            if not self._stop_reason:  # ended by a cancellation: say whose, when it says
                self._stop_reason = _cancel_reason(exc)
            raise
        finally:
            self._in_session = False
            self._finish_stop()
            self._done.set()

    async def _supervise(self, task_status: trio.TaskStatus[int | None]) -> None:
        reported = False
        while not self._stop_requested.is_set():
            if self.state is not VmState.STARTING:
                self.set_state(VmState.STARTING)
            child = await self._launch()
            if not reported:
                task_status.started(child.pid if child else None)
                reported = True
            if child is not None:
                uptime = await self._run_child(child)
            else:
                uptime, self.last_abnormal = 0.0, True
            if self._stop_requested.is_set():
                break
            await self._follow(
                self.tracker.on_exit(trio.current_time(), uptime, self.last_abnormal)
            )
        if not reported:
            task_status.started(None)

    async def _follow(self, decision: Decision) -> None:
        """Back off and return (to relaunch), or park until `stop` or `relaunch` when there is
        no restart. A relaunch (an operator's start) also starts the restart window anew."""
        if decision.verdict is Verdict.RESTART:
            self.set_state(VmState.BACKOFF)
            self.backoff_until = time.time() + decision.backoff_ms / 1000
            try:
                await self.publisher.publish(
                    ev.VmRestartScheduled(
                        vm=self.name, attempt=self.attempt + 1, backoff_ms=decision.backoff_ms
                    )
                )
                await self._interruptible(trio.sleep, decision.backoff_ms / 1000)
            finally:
                self.backoff_until = None
            self._take_relaunch()
            return
        if decision.verdict is Verdict.GIVE_UP:
            self.set_state(VmState.GAVE_UP)
            await self.publisher.publish(
                ev.VmGaveUp(
                    vm=self.name,
                    restarts=decision.restarts_in_window,
                    window_s=self.vm.restart.window_s,
                )
            )
            if self.vm.restart.on_exhausted == "exit" and self.on_exhausted is not None:
                self.on_exhausted(
                    f"vm {self.name} gave up after {decision.restarts_in_window} "
                    f"restarts in {self.vm.restart.window_s:g} s"
                )
        else:
            self.set_state(VmState.FINISHED)
        await self._interruptible(trio.sleep_forever)
        self._take_relaunch()

    def relaunch(self) -> bool:
        """Wake a session parked in backoff, gave_up or finished: it launches again at once.
        False when there is no such session (the pool then starts a new one)."""
        if self.state not in PARKED or self._stop_requested.is_set():
            return False
        self._relaunch = True
        if self._wake is not None:
            self._wake.cancel()
        return True

    def _take_relaunch(self) -> None:
        if self._relaunch:
            self._relaunch = False
            self.tracker.reset()

    async def _interruptible(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Await `fn(*args)` unless or until `stop` (or, parked, `relaunch`) is requested."""
        with trio.CancelScope() as scope:
            self._wake = scope
            if self._stop_requested.is_set() or (self._relaunch and self.state in PARKED):
                scope.cancel()
            await fn(*args)
        self._wake = None

    def _finish_stop(self) -> None:
        """However the run ended (stop, cancellation): STOPPED, and said so."""
        if self.state is VmState.STOPPED:
            return
        if self.state is not VmState.STOPPING:
            self.set_state(VmState.STOPPING)
        if not self._laddered:  # nothing was running: say so, in the same two events
            self._say(
                ev.VmShutdownRequested(
                    vm=self.name, reason=self._stop_reason or STOP_REASON, deadline_ms=0
                )
            )
            self._say(
                ev.VmShutdownComplete(vm=self.name, outcome="graceful", total_ms=0, changed=False)
            )
        self.set_state(VmState.STOPPED)

    def _say(self, event: ev.Event, severity: ev.Severity | None = None) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self.publisher.publish_nowait(event, severity)

    # --- launch ----------------------------------------------------------------------------

    async def _launch(self) -> Child | None:
        """Overlay, process, pidfile; None (reported) when it failed."""
        self.attempt += 1
        record = LaunchRecord(self.attempt)
        self.launches.append(record)
        self.launched_vm = vm = self.vm
        self.paths = VmPaths.of(vm, self.state_dir)  # a reload may have changed them
        made_overlay = False
        try:
            argv = substitute(vm.command, self.paths)
            if uses_qmp(vm.command):
                self.paths.check_socket()
                remove_stale_socket(self.paths.qmp_socket)
            self.notify = self._open_notify(vm)
            if self.paths.overlay is not None and vm.base_image is not None:
                await discard_overlay(self.name, self.paths.overlay, "orphan", self.publisher)
                await overlay.prepare(vm.base_image, self.paths.overlay)
                made_overlay = True
                await self.publisher.publish(
                    ev.VmOverlayPrepared(
                        vm=self.name,
                        overlay_path=str(self.paths.overlay),
                        base_image=str(vm.base_image),
                    )
                )
            child = await self._start(argv)  # recorded in its pidfile, or killed
        except LAUNCH_ERRORS as exc:
            record.error = why(exc, vm)
            try:
                await self.publisher.publish(
                    ev.Message(text=f"{self.name}: launch {self.attempt} failed: {record.error}"),
                    "error",
                )
                if made_overlay:
                    await discard_overlay(self.name, self.paths.overlay, "shutdown", self.publisher)
            finally:
                self._close_notify()
                self._settle(record)
                record.booted.set()
            return None
        except BaseException:
            self._close_notify()
            record.error = "the launch was interrupted (frameos or the operation was stopping)"
            self._settle(record)
            record.booted.set()
            raise
        # No checkpoint from the pidfile to `_run_child`'s try: nothing can cancel us in between.
        self.child, self.launched_at = child, trio.current_time()
        record.pid = child.pid
        self._settle(record)
        return child

    def _open_notify(self, vm: VmConfig) -> NotifyChannels | None:
        """The VM's notify socket (and serial listener); when its path cannot be bound, the
        launch fails only if the VM needs it (a notify probe, `watchdog_ms`, a guest port)."""
        serial = uses_notify_chardev(vm.command)
        readiness = vm.health.readiness if vm.health else None
        needed = (
            serial or vm.watchdog_ms is not None or (readiness is not None and readiness.notify)
        )
        try:
            return NotifyChannels.open(self.paths, serial=serial)
        except LaunchError:
            if needed:
                raise
            return None

    def _close_notify(self) -> None:
        if self.notify is not None:
            self._past_notify_drops += self.notify.dropped
            self.notify.close()
            self.notify = None

    def _settle(self, record: LaunchRecord) -> None:
        record.settled.set()
        self._notify()

    async def _start(self, argv: list[str]) -> Child:
        vm = self.launched_vm
        facts = {"FRAMEOS_VM": self.name, "FRAMEOS_VM_ATTEMPT": str(self.attempt)}
        if self.notify is not None:
            facts["NOTIFY_SOCKET"] = self.paths.notify_address
        if vm.watchdog_ms is not None:
            facts["WATCHDOG_USEC"] = str(vm.watchdog_ms * 1000)
        env = child_env(self.base_env, {**facts, **vm.env})
        return await self.spawner(argv, env, vm.cwd, self.paths.log, self._write_pidfile)

    def _write_pidfile(self, child: Child) -> None:
        """The VM's pidfile, with what an orphan's ladder needs: the settings of this launch."""
        vm = self.launched_vm
        pidfile.write(
            self.paths.pidfile,
            pidfile.PidRecord(
                vm=self.name,
                pid=child.pid,
                start_time=procfs.start_time(child.pid) or 0,
                pgid=child.pid,
                method=vm.cooperative_method,
                signal=vm.cooperative.signal,
                command=self._stop_command(),
                qmp_socket=str(self.paths.qmp_socket),
                overlay=str(self.paths.overlay) if self.paths.overlay else None,
                timeouts=vm.timeouts.model_dump(),
                owner_pid=os.getpid(),
            ),
        )

    # --- from launch to exit ---------------------------------------------------------------

    async def _run_child(self, child: Child) -> float:
        """Bootstrap alongside; the ladder on `stop` or cancellation; the exit reported.
        Returns the uptime."""
        self._ready_armed = False
        self._past_probe_failures += self.health.failures if self.health else 0
        self.health = LaunchHealth(
            self.vm,
            self.paths,
            child_env(self.base_env, self.vm.env),
            self.publisher,
            launched_at=self.launched_at,
            on_change=self._notify,
            on_liveness_failed=self._liveness_failed,
        )
        self.set_state(VmState.RUNNING)
        record = self.launches[-1]
        has_steps = self.vm.bootstrap is not None and bool(self.vm.bootstrap.steps)
        self.set_boot(BootState.PENDING if has_steps else BootState.OK)
        if not has_steps:
            self._booted(record, True)
        boot_scope, probe_scope = trio.CancelScope(), trio.CancelScope()
        notify_scope = trio.CancelScope()
        try:
            self._say(ev.VmLaunched(vm=self.name, pid=child.pid, attempt=self.attempt))
            self._ready_armed = True
            self._notify()  # ready at once without a probe or steps: `vm.ready` follows
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe, probe_scope)
                if self.notify is not None:
                    nursery.start_soon(self._listen, self.notify, child, notify_scope)
                if has_steps:
                    nursery.start_soon(self._bootstrap, child, boot_scope, record)
                await self._interruptible(child.wait)
                self.health.end()
                probe_scope.cancel()
                boot_scope.cancel()
                for scope in self._boot_scopes:  # a bootstrap_vm in flight: the VM is gone
                    scope.cancel()
                if not child.exited and self._killed_for_liveness():
                    await self._stop_child(child, self._liveness_kill or "", shielded=False)
                elif not child.exited:  # stop() was called
                    await self._stop_child(child, self._stop_reason, shielded=False)
                notify_scope.cancel()  # after the ladder: a STOPPING=1 while it ran is read
        except BaseException as exc:
            if not child.exited and not self._laddered:  # cancelled: still through the ladder
                await self._stop_child(child, _cancel_reason(exc), shielded=True)
            raise
        finally:
            self._ready_armed = False
            self._booted(record, False)  # unless the bootstrap already said how it went
            await self._reap(child)
        return trio.current_time() - self.launched_at

    async def _probe(self, scope: trio.CancelScope) -> None:
        """The probes of this launch, until the exit or the stop (before its ladder)."""
        assert self.health is not None
        with scope:
            await self.health.run()

    async def _listen(self, notify: NotifyChannels, child: Child, scope: trio.CancelScope) -> None:
        """The notify channels of this launch, until the exit (after a stop's ladder)."""
        assert self.health is not None
        with scope:
            await notify.serve(child.pid, self.health, self.publisher)

    def _liveness_failed(self, detail: str) -> None:
        """A liveness probe failed past its threshold (or a watchdog ping was missed): the
        VM goes through its ladder, then the restart policy decides as after an abnormal exit."""
        if self.state is not VmState.RUNNING or self._stop_requested.is_set():
            return
        self._liveness_kill = f"liveness failed: {detail}"
        if self._wake is not None:
            self._wake.cancel()

    def _killed_for_liveness(self) -> bool:
        return self._liveness_kill is not None and not self._stop_requested.is_set()

    def _booted(self, record: LaunchRecord, ok: bool) -> None:
        if not record.booted.is_set():
            record.boot_ok = ok
            record.booted.set()
            self._notify()

    async def _stop_child(self, child: Child, reason: str, *, shielded: bool) -> None:
        """The ladder, in a scope `force` cancels; under cancellation shielded and bounded by
        the rungs' timeouts."""
        if self.state is not VmState.STOPPING:
            self.set_state(VmState.STOPPING)
        if self.health is not None:  # a cancelled owner: its probes are gone too
            self.health.end()
        if not self._killed_for_liveness():
            self._stop_reason = self._stop_reason or reason
        self._laddered = True
        ladder = self._ladder(child)
        with trio.CancelScope(shield=shielded) as scope:
            if shielded:
                budget_s = ladder.timeouts.total_ms / 1000 + LADDER_SLACK_S
                scope.deadline = trio.current_time() + budget_s
            self._ladder_scope = scope
            try:
                await ladder.run(reason)
            finally:
                self._ladder_scope = None

    def force(self) -> None:
        """Cut a running ladder short: its group is SIGKILLed at once (bounded); a ladder that
        begins later in this session goes straight to its SIGKILL rung."""
        self._forced = True
        if self._ladder_scope is not None:
            self._ladder_scope.cancel()

    async def _bootstrap(self, child: Child, scope: trio.CancelScope, record: LaunchRecord) -> None:
        with scope:
            self.set_boot(BootState.RUNNING)
            ok = False
            try:
                ok = await run_bootstrap(self._boot_context(self.vm, child))
            finally:
                self.set_boot(BootState.OK if ok else BootState.FAILED)
                self._booted(record, ok)

    def _boot_context(self, vm: VmConfig, child: Child) -> BootstrapContext:
        return BootstrapContext(
            vm, self.paths, child_env(self.base_env, vm.env), self.publisher, child.pid
        )

    async def rebootstrap(self) -> None:
        """Run the bootstrap pipeline again now (trigger `always`), in the caller's task.

        OperationFailed when the VM is not running or the bootstrap fails (or the VM exits
        meanwhile: the run is cancelled); VmBusy while a bootstrap runs. Cancellation kills the
        running step and leaves the VM running with its bootstrap `failed`.
        """
        child = self.child
        if self.state is not VmState.RUNNING or child is None:
            raise OperationFailed(
                f"vm {self.name} is {self.state.value}, not running: start it first"
            )
        if self.boot in (BootState.PENDING, BootState.RUNNING):
            raise VmBusy(f"vm {self.name}: a bootstrap is already running; wait for it")
        boot = self.vm.bootstrap
        if boot is None or not boot.steps:
            return
        vm = self.vm.model_copy(update={"bootstrap": boot.model_copy(update={"trigger": "always"})})
        attempt, scope, ok = self.attempt, trio.CancelScope(), False
        self.set_boot(BootState.PENDING)
        self.set_boot(BootState.RUNNING)
        self._boot_scopes.add(scope)
        try:
            with scope:
                ok = await run_bootstrap(self._boot_context(vm, child))
        finally:
            self._boot_scopes.discard(scope)
            if self.attempt == attempt and self._boot_is(BootState.RUNNING):
                self.set_boot(BootState.OK if ok else BootState.FAILED)
        if scope.cancelled_caught:
            raise OperationFailed(f"vm {self.name} exited during its bootstrap")
        if not ok:
            raise OperationFailed(f"vm {self.name}: bootstrap failed: {self.boot_error}")

    def _ladder(self, child: Child) -> Ladder:
        vm = self.launched_vm
        method = vm.cooperative_method
        request = request_for(
            method,
            child,
            sig=vm.cooperative.signal,
            command=self._stop_command(),
            qmp_socket=self.paths.qmp_socket,
            env=child_env(self.base_env, vm.env),
            cwd=vm.cwd,
            tracking=Tracking(self.paths.procs, self.name, "command"),
        )
        return Ladder(
            self.name,
            child,
            method=method,
            request=request,
            timeouts=vm.timeouts,
            publisher=self.publisher,
            forced=self._forced,
        )

    def _stop_command(self) -> list[str] | None:
        """`cooperative.command` with its placeholders filled in (as written if one cannot be)."""
        command = self.launched_vm.cooperative.command
        if not command:
            return None
        try:
            return substitute(command, self.paths)
        except LaunchError:
            return command

    async def _reap(self, child: Child) -> None:
        """However the run ended (exit, ladder, cancellation): no process of the group left,
        the exit reported, the pidfile and the overlay gone."""
        await kill_group(child, self.launched_vm.timeouts.sigkill_ms / 1000)
        self._close_notify()
        self.child = None
        code = child.returncode
        for_liveness = self._killed_for_liveness()  # the policy counts it as abnormal
        self._liveness_kill = None
        self.last_abnormal = code != 0 or for_liveness
        self.last_exit = ExitRecord(
            exit_code=code if code is None or code >= 0 else None,
            signal=signal_name(-code) if code is not None and code < 0 else None,
            at=time.time(),
        )
        self._say(
            ev.VmExited(
                vm=self.name,
                pid=child.pid,
                exit_code=code if code is None or code >= 0 else None,
                signal=signal_name(-code) if code is not None and code < 0 else None,
                uptime_ms=int((trio.current_time() - self.launched_at) * 1000),
                expected=not for_liveness and (self._stop_requested.is_set() or self._laddered),
            ),
            None if self._laddered and not for_liveness else "warn",
        )
        if for_liveness:  # the ladder of a restart, not of a stop
            self._laddered = False
        pidfile.remove(self.paths.pidfile)
        reclaimed = overlay.discard(self.paths.overlay) if self.paths.overlay else None
        if reclaimed is not None:
            self._say(
                ev.VmLayerDiscarded(
                    vm=self.name,
                    overlay_path=str(self.paths.overlay),
                    reclaimed_bytes=reclaimed,
                    reason="shutdown",
                )
            )

    # --- asked from outside ----------------------------------------------------------------

    async def stop(self, reason: str) -> None:
        """Stop the VM through the ladder and wait until it is stopped.

        Cancellation of the caller does not cancel the ladder (the owning task runs it); the
        owning task's own cancellation kills the group.
        """
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()
            if self.health is not None:  # the stop begins: no health changes from here
                self.health.end()
            if self._wake is not None:
                self._wake.cancel()
        if self.state is VmState.IDLE:  # run() never began: nothing to stop
            self._finish_stop()
            self._done.set()
        await self._done.wait()

    async def wait_stopped(self) -> None:
        """Return once the session's task has finished (after a stop)."""
        await self._done.wait()

    def rearm(self) -> None:
        """Ready a stopped worker for a new session (`run` again): an operator's start."""
        if self.state is VmState.STOPPED:
            assert self._done.is_set(), "the previous session is still finishing"
            self._stop_requested = trio.Event()
            self._done = trio.Event()
            self._stop_reason, self._laddered, self._relaunch = "", False, False
            self._forced = False
            self.tracker.reset()
        self.operator_stopped = False

    def reconfigure(self, vm: VmConfig) -> None:
        """Take `vm` as this VM's settings. The running process keeps the ladder it was
        launched with; the restart policy applies from the next exit; process settings
        (command, env, ...) only from the next launch (the pool restarts it for those)."""
        assert vm.name == self.name
        health_changed = (vm.health, vm.watchdog_ms) != (self.vm.health, self.vm.watchdog_ms)
        self.vm = vm
        self.tracker.config = vm.restart
        if health_changed and self.health is not None and self.child is not None:
            self.health.reconfigure(vm)
        if self.child is None and self.state is not VmState.STARTING:  # else: at its launch
            self.paths = VmPaths.of(vm, self.state_dir)

    def health_snapshot(self) -> HealthSnapshot:
        """The snapshot's `health`: the probes of the current launch (or of the last one, when
        not running: what they said last)."""
        from frameos.workers.snapshot import HealthSnapshot, ProbeSnapshot

        health = self.health
        running = self.state is VmState.RUNNING
        probes = [health.readiness, health.liveness] if health else [None, None]
        if not running:
            status = "down"
        elif any(p is not None and p.status == "unhealthy" for p in probes):
            status = "unhealthy"
        else:
            status = "ready" if self.ready else "starting"
        readiness, liveness = (
            ProbeSnapshot(**p.snapshot()) if p is not None else None for p in probes
        )
        return HealthSnapshot(
            status=status,
            ready=self.ready,
            readiness=readiness,
            liveness=liveness,
            status_text=health.status_text if health else None,
            stopping=health.stopping if health else False,
            probe_failures=self.probe_failures,
            notify_dropped=self.notify_drops,
        )

    def not_ready_reasons(self) -> list[str]:
        """Why this VM keeps /readyz at 503 (SPEC §7.1)."""
        if self.operator_stopped:  # stopped on purpose: not a fault of readiness
            return []
        if self.state is VmState.GAVE_UP:
            return [f"vm {self.name}: gave up"]
        if self.state is VmState.RUNNING and self.boot in (BootState.PENDING, BootState.RUNNING):
            return [f"vm {self.name}: bootstrap running"]
        readiness = self.health.readiness if self.health else None
        if self.state is VmState.RUNNING and readiness and readiness.status != "healthy":
            why = readiness.detail or f"waiting for its {readiness.kind} probe"
            if readiness.kind == "notify" and not readiness.detail:
                why = "waiting for READY=1 on its notify socket"
            return [f"vm {self.name}: not ready ({readiness.status}: {why})"]
        if self.vm.restart.policy != "permanent":
            return []
        if self.state is not VmState.RUNNING:
            return [f"vm {self.name}: not running"]
        if self.boot is BootState.FAILED:
            return [f"vm {self.name}: bootstrap failed"]
        return []


def _cancel_reason(exc: BaseException) -> str:
    """The reason a cancellation carries (trio's `cancel(reason=...)`), or STOP_REASON."""
    if isinstance(exc, BaseExceptionGroup):
        match, _ = exc.split(trio.Cancelled)
        exc = match.exceptions[0] if match is not None else exc
        return _cancel_reason(exc) if not isinstance(exc, BaseExceptionGroup) else STOP_REASON
    if isinstance(exc, trio.Cancelled) and exc.reason:
        return exc.reason
    return STOP_REASON
