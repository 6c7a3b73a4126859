"""One supervised VM (SPEC §5): launch, watch, bootstrap, restart by policy, stop by ladder.

    idle ─► starting ─► running ─► backoff ─► starting ...
              │            ├─────► finished   (the policy does not restart this exit)
              │            └─────► gave_up    (more than max_restarts in window_s)
              └─ (a failed launch counts as an abnormal exit)
    any of them ─► stopping ─► stopped        (stop(): the ladder, when a process runs)

A single task owns the process from launch to exit: `stop()` only asks (it cancels whatever
the task waits on) and then waits for the task to finish the ladder. The exit is awaited, never
polled, so a restart follows the backoff's end within milliseconds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from pathlib import Path

import trio

from frameos import events as ev
from frameos.config import VmConfig
from frameos.workers import LaunchError, overlay, pidfile, procfs
from frameos.workers.bootstrap import BootstrapContext, run_bootstrap
from frameos.workers.child import (
    SPAWN_ERRORS,
    Child,
    Tracking,
    kill_group,
    record_or_kill,
    signal_name,
    spawn,
)
from frameos.workers.cooperative import request_for
from frameos.workers.ladder import Ladder, Method
from frameos.workers.orphans import clean_up_after, discard_overlay, remove_stale_socket
from frameos.workers.paths import VmPaths, child_env, substitute, uses_qmp
from frameos.workers.publisher import Publisher
from frameos.workers.restart import Decision, RestartTracker, Verdict

LOG_MAX_BYTES = 8 * 1024 * 1024
STOP_REASON = "frameos is stopping"
LAUNCH_ERRORS: tuple[type[Exception], ...] = (LaunchError, *SPAWN_ERRORS)
Spawner = Callable[[list[str], Mapping[str, str], Path | None, int], Awaitable[Child]]


class VmState(Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FINISHED = "finished"
    GAVE_UP = "gave_up"
    STOPPING = "stopping"
    STOPPED = "stopped"


_S = VmState
TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    _S.IDLE: frozenset({_S.STARTING, _S.STOPPING}),
    _S.STARTING: frozenset({_S.RUNNING, _S.BACKOFF, _S.FINISHED, _S.GAVE_UP, _S.STOPPING}),
    _S.RUNNING: frozenset({_S.BACKOFF, _S.FINISHED, _S.GAVE_UP, _S.STOPPING}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPING}),
    _S.FINISHED: frozenset({_S.STOPPING}),
    _S.GAVE_UP: frozenset({_S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
}


class BootState(Enum):
    """The bootstrap of the current launch (SPEC §6)."""

    NONE = "none"  # not launched yet
    PENDING = "pending"  # launched; the bootstrap task has not begun
    RUNNING = "running"
    OK = "ok"  # succeeded, had nothing to do, or there are no steps
    FAILED = "failed"  # failed or was interrupted


_B = BootState
BOOT_TRANSITIONS: dict[BootState, frozenset[BootState]] = {
    _B.NONE: frozenset({_B.PENDING, _B.OK}),
    _B.PENDING: frozenset({_B.RUNNING}),
    _B.RUNNING: frozenset({_B.OK, _B.FAILED}),
    _B.OK: frozenset({_B.PENDING, _B.OK}),
    _B.FAILED: frozenset({_B.PENDING, _B.OK}),
}
# The bound on a ladder run under cancellation, beyond its rungs: the final kill's wait.
LADDER_SLACK_S = 0.5


async def default_spawner(
    argv: list[str], env: Mapping[str, str], cwd: Path | None, log: int
) -> Child:
    return await spawn(argv, env=env, cwd=cwd, output=log)


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
        self.vm, self.publisher, self.spawner = vm, publisher, spawner
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

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def restarts(self) -> int:
        return self.tracker.restarts

    def set_state(self, to: VmState) -> None:
        """Move to `to`; an illegal transition is a bug and raises."""
        if to not in TRANSITIONS[self.state]:
            raise RuntimeError(
                f"vm {self.name}: illegal transition {self.state.value} → {to.value}"
            )
        self.state = to

    def set_boot(self, to: BootState) -> None:
        """Move the bootstrap state to `to`; an illegal transition is a bug and raises."""
        if to not in BOOT_TRANSITIONS[self.boot]:
            raise RuntimeError(
                f"vm {self.name}: illegal bootstrap transition {self.boot.value} → {to.value}"
            )
        self.boot = to

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
        if self.state is not VmState.IDLE:  # stop() came first and did it all
            task_status.started(None)
            return
        try:
            self.set_state(VmState.STARTING)
            self.paths.make_dirs()
            await clean_up_after(self.name, self.paths.pidfile, self.paths.overlay, self.publisher)
            await self._supervise(task_status)
        finally:
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
        """Back off and return (to relaunch), or park until `stop` when there is no restart."""
        if decision.verdict is Verdict.RESTART:
            self.set_state(VmState.BACKOFF)
            await self.publisher.publish(
                ev.VmRestartScheduled(
                    vm=self.name, attempt=self.attempt + 1, backoff_ms=decision.backoff_ms
                )
            )
            await self._interruptible(trio.sleep, decision.backoff_ms / 1000)
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
        await self._stop_requested.wait()

    async def _interruptible(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Await `fn(*args)` unless or until `stop` is requested."""
        with trio.CancelScope() as scope:
            self._wake = scope
            if self._stop_requested.is_set():
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
        made_overlay = False
        try:
            argv = substitute(self.vm.command, self.paths)
            if uses_qmp(self.vm.command):
                self.paths.check_socket()
                remove_stale_socket(self.paths.qmp_socket)
            if self.paths.overlay is not None and self.vm.base_image is not None:
                await discard_overlay(self.name, self.paths.overlay, "orphan", self.publisher)
                await overlay.prepare(self.vm.base_image, self.paths.overlay)
                made_overlay = True
                await self.publisher.publish(
                    ev.VmOverlayPrepared(
                        vm=self.name,
                        overlay_path=str(self.paths.overlay),
                        base_image=str(self.vm.base_image),
                    )
                )
            child = await self._start(argv)
            # Before any checkpoint: a pidfile, or no process (killed at once).
            await record_or_kill(
                child, lambda: self._write_pidfile(child), self.vm.timeouts.sigkill_ms / 1000
            )
        except LAUNCH_ERRORS as exc:
            await self.publisher.publish(
                ev.Message(text=f"{self.name}: launch {self.attempt} failed: {_why(exc, self.vm)}"),
                "error",
            )
            if made_overlay:
                await discard_overlay(self.name, self.paths.overlay, "shutdown", self.publisher)
            return None
        # No checkpoint from the pidfile to `_run_child`'s try: nothing can cancel us in between.
        self.child, self.launched_at = child, trio.current_time()
        return child

    async def _start(self, argv: list[str]) -> Child:
        env = child_env(
            self.base_env,
            {"FRAMEOS_VM": self.name, "FRAMEOS_VM_ATTEMPT": str(self.attempt), **self.vm.env},
        )
        log = _open_log(self.paths.log)
        try:
            return await self.spawner(argv, env, self.vm.cwd, log)
        finally:
            os.close(log)

    def _write_pidfile(self, child: Child) -> None:
        """The VM's pidfile, with what an orphan's ladder needs: the settings of this launch."""
        vm = self.vm
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
        self.set_state(VmState.RUNNING)
        has_steps = self.vm.bootstrap is not None and bool(self.vm.bootstrap.steps)
        self.set_boot(BootState.PENDING if has_steps else BootState.OK)
        boot_scope = trio.CancelScope()
        try:
            self._say(ev.VmLaunched(vm=self.name, pid=child.pid, attempt=self.attempt))
            async with trio.open_nursery() as nursery:
                if has_steps:
                    nursery.start_soon(self._bootstrap, child, boot_scope)
                await self._interruptible(child.wait)
                boot_scope.cancel()
                if not child.exited:  # stop() was called
                    await self._stop_child(child, self._stop_reason, shielded=False)
        except BaseException as exc:
            if not child.exited and not self._laddered:  # cancelled: still through the ladder
                await self._stop_child(child, _cancel_reason(exc), shielded=True)
            raise
        finally:
            await self._reap(child)
        return trio.current_time() - self.launched_at

    async def _stop_child(self, child: Child, reason: str, *, shielded: bool) -> None:
        """The ladder, in a scope `force` cancels; under cancellation shielded and bounded by
        the rungs' timeouts."""
        if self.state is not VmState.STOPPING:
            self.set_state(VmState.STOPPING)
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
        """Cut a running ladder short: its group is SIGKILLed at once (bounded)."""
        if self._ladder_scope is not None:
            self._ladder_scope.cancel()

    async def _bootstrap(self, child: Child, scope: trio.CancelScope) -> None:
        with scope:
            self.set_boot(BootState.RUNNING)
            ok = False
            try:
                ok = await run_bootstrap(
                    BootstrapContext(
                        self.vm,
                        self.paths,
                        child_env(self.base_env, self.vm.env),
                        self.publisher,
                        child.pid,
                    )
                )
            finally:
                self.set_boot(BootState.OK if ok else BootState.FAILED)

    def _ladder(self, child: Child) -> Ladder:
        vm = self.vm
        method: Method = vm.cooperative_method  # type: ignore[assignment]  # validated literal
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
        )

    def _stop_command(self) -> list[str] | None:
        """`cooperative.command` with its placeholders filled in (as written if one cannot be)."""
        command = self.vm.cooperative.command
        if not command:
            return None
        try:
            return substitute(command, self.paths)
        except LaunchError:
            return command

    async def _reap(self, child: Child) -> None:
        """However the run ended (exit, ladder, cancellation): no process of the group left,
        the exit reported, the pidfile and the overlay gone."""
        await kill_group(child, self.vm.timeouts.sigkill_ms / 1000)
        self.child = None
        code = child.returncode
        self.last_abnormal = code != 0
        self._say(
            ev.VmExited(
                vm=self.name,
                pid=child.pid,
                exit_code=code if code is None or code >= 0 else None,
                signal=signal_name(-code) if code is not None and code < 0 else None,
                uptime_ms=int((trio.current_time() - self.launched_at) * 1000),
                expected=self._stop_requested.is_set() or self._laddered,
            ),
            None if self._laddered else "warn",
        )
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
            if self._wake is not None:
                self._wake.cancel()
        if self.state is VmState.IDLE:  # run() never began: nothing to stop
            self._finish_stop()
            self._done.set()
        await self._done.wait()

    def not_ready_reasons(self) -> list[str]:
        """Why this VM keeps /readyz at 503 (SPEC §7.1)."""
        if self.state is VmState.GAVE_UP:
            return [f"vm {self.name}: gave up"]
        if self.state is VmState.RUNNING and self.boot in (BootState.PENDING, BootState.RUNNING):
            return [f"vm {self.name}: bootstrap running"]
        if self.vm.restart.policy != "permanent":
            return []
        if self.state is not VmState.RUNNING:
            return [f"vm {self.name}: not running"]
        if self.boot is BootState.FAILED:
            return [f"vm {self.name}: bootstrap failed"]
        return []


def _open_log(path: Path) -> int:
    """The VM's stdout/stderr file, appended to; rotated once to NAME.log.1 past 8 MiB."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(path, flags, 0o640)
    if os.fstat(fd).st_size > LOG_MAX_BYTES:
        os.close(fd)
        os.replace(path, path.with_name(path.name + ".1"))
        fd = os.open(path, flags, 0o640)
    return fd


def _cancel_reason(exc: BaseException) -> str:
    """The reason a cancellation carries (trio's `cancel(reason=...)`), or STOP_REASON."""
    if isinstance(exc, BaseExceptionGroup):
        match, _ = exc.split(trio.Cancelled)
        exc = match.exceptions[0] if match is not None else exc
        return _cancel_reason(exc) if not isinstance(exc, BaseExceptionGroup) else STOP_REASON
    if isinstance(exc, trio.Cancelled) and exc.reason:
        return exc.reason
    return STOP_REASON


def _why(exc: BaseException, vm: VmConfig) -> str:
    missing = isinstance(exc, FileNotFoundError)
    if missing and vm.cwd is not None and str(getattr(exc, "filename", "")) == str(vm.cwd):
        return f"cwd {vm.cwd} does not exist"
    if missing:
        return f"command {vm.command[0]!r} not found; check the VM's command (argv[0])"
    if isinstance(exc, PermissionError):
        return f"command {vm.command[0]!r} is not executable (permission denied)"
    if isinstance(exc, OSError):
        return f"cannot start {vm.command[0]!r}: {exc.strerror or exc}"
    if isinstance(exc, LaunchError):
        return str(exc)
    return (
        f"cannot start {vm.command[0]!r}: {exc}; check the VM's command and env "
        f"(no NUL bytes, no '=' or empty env names)"
    )
