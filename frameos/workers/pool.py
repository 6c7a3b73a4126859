"""All the VMs of one instance (SPEC §5, §5.1, §5.2, §7.1): started together (in the order of
`depends_on`), stopped together (in reverse), and operated one by one (R2: start_vm, stop_vm,
restart_vm, bootstrap_vm, clean_vm, apply).

`run` goes in the supervisor's work nursery (`await work.start(pool.run)` returns once every
VM without `depends_on` has launched or failed to launch; each other VM waits behind its gate,
`vm.waiting`, and launches once every VM it names is started or ready) and keeps running (a VM
may be started later) until `stop` or its cancellation. `stop` stops every VM through its
ladder, a VM once its dependants are down (VMs that do not depend on each other in parallel),
within shutdown_timeout_s, and returns when all are down. Cancelling the nursery that runs
`run` does the same, so shutdown can be done by nesting; `force` cuts the running ladders short
(SIGKILL, bounded) and ends the waits for dependants. `wait_ready` returns once every permanent
VM is ready or gave up (the supervisor's runtime:ready, READY=1). The pool also answers
/healthz (`workers`), /readyz (reasons per VM) and /metrics (`frameos_vm_*`), and stops what a
killed instance left: bootstrap steps, stop commands, and VMs under names no longer in the
config.

Operations run in the caller's task; each raises `OperationFailed` (a message saying why) when
it did not do its job. An operator's stop holds: the VM's session ends, no restart policy runs,
until `start_vm`. A stop cancels a start, restart or bootstrap in flight on the same VM: that
operation raises `OperationCanceled` (or `trio.Cancelled` when its caller's own scope was
cancelled) after the VM is left stopped through its ladder. Every event an operation causes
carries its `run_id` (each worker's publisher, publisher.RunTagger). Concurrent operations on
one VM other than a winning stop are the caller's to refuse (the runs service answers 409).

The VM's stdout and stderr go to `state_dir/vms/NAME.log` (`VmSnapshot.output_log`), copied to
`NAME.log.1` and truncated once past `LOG_MAX_BYTES` (checked at each launch and every
`LOG_CHECK_S` while it runs).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from frameos import events as ev
from frameos.config import FrameConfig, VmConfig, graph
from frameos.config.graph import Condition
from frameos.state import RuntimeState, WorkerCounts
from frameos.workers import OperationCanceled, OperationFailed, VmBusy, pidfile
from frameos.workers.launch import LOG_MAX_BYTES, rotate_if_large
from frameos.workers.orphans import clean_up_after, discard_overlay, stop_helpers
from frameos.workers.publisher import Publisher

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    # imported where used: their pydantic models are for reloads and the API, not the launches
    from frameos.workers.reload import ReloadDiff
    from frameos.workers.snapshot import VmSnapshot

from frameos.workers.vm import (
    LADDER_SLACK_S,
    PARKED,
    STOP_REASON,
    LaunchRecord,
    Spawner,
    VmState,
    VmWorker,
    default_spawner,
)

# The exit status of `frameos run` when a VM with `on_exhausted: exit` gave up.
EXIT_EXHAUSTED = 3
# How often the output logs of running VMs are checked against LOG_MAX_BYTES.
LOG_CHECK_S = 10.0
OPERATOR_REASON = "operator"
REMOVED_REASON = "removed from the config by a reload"
CHANGED_REASON = "its process settings changed in a reload"
NO_PROCESS = (VmState.IDLE, VmState.STOPPED)
# A dependency in one of these states comes back only when an operator starts it (or never).
DEAD_ENDS = (VmState.STOPPED, VmState.GAVE_UP, VmState.FINISHED)

__all__ = ["EXIT_EXHAUSTED", "LOG_MAX_BYTES", "VmPool"]


class VmPool:
    """The VM workers of one `frameos run`."""

    def __init__(
        self,
        config: FrameConfig,
        publisher: Publisher,
        *,
        on_exhausted: Callable[[str], None] | None = None,
        base_env: Mapping[str, str] | None = None,
        spawner: Spawner = default_spawner,
    ) -> None:
        assert config.state_dir is not None, "resolve() fills state_dir"
        self.config = config
        self.state_dir: Path = config.state_dir
        self.publisher = publisher
        self.on_exhausted, self.spawner = on_exhausted, spawner
        # what every VM's processes start from: os.environ decoded once, not once per VM
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._workers: dict[str, VmWorker] = {vm.name: self._worker_for(vm) for vm in config.vms}
        self._nursery: trio.Nursery | None = None  # the VMs' tasks (stopped in order, shielded)
        self._tasks: trio.Nursery | None = None  # the pool's own: gates, log rotation
        self._stopping = trio.Event()  # `run` was cancelled: the ordered stop begins
        self._stop_reason = STOP_REASON
        self._gates: dict[str, trio.CancelScope] = {}  # launches waiting on depends_on
        self._waiting: dict[str, int] = {}  # VMs whose launch waits on depends_on (→ gates)
        self._hurry: set[trio.CancelScope] = set()  # waits of the ordered stop (`force` ends)
        self._closed = trio.Event()  # set as `run` begins to stop: no operation starts a VM
        self._run_scope: trio.CancelScope | None = None
        self._run_done = trio.Event()
        self._ops: dict[str, trio.CancelScope] = {}  # start/restart/bootstrap in flight
        self._applying = trio.Lock()

    def _worker_for(self, vm: VmConfig) -> VmWorker:
        return VmWorker(
            vm,
            self.state_dir,
            self.publisher,
            on_exhausted=self.on_exhausted,
            base_env=self.base_env,
            spawner=self.spawner,
        )

    @property
    def names(self) -> list[str]:
        """The VM names, in config order."""
        return list(self._workers)

    @property
    def workers(self) -> list[VmWorker]:
        """The workers, in config order."""
        return list(self._workers.values())

    def worker(self, name: str) -> VmWorker:
        """The worker of VM `name`; KeyError when there is none."""
        return self._workers[name]

    @property
    def restarts(self) -> int:
        """Restarts granted so far, over every VM (the `summary` figure)."""
        return sum(w.restarts for w in self.workers)

    def counts(self) -> WorkerCounts:
        states = [w.state for w in self.workers]
        failed = sum(
            1
            for w in self.workers
            if w.state is VmState.GAVE_UP or (w.state is VmState.FINISHED and w.last_abnormal)
        )
        return WorkerCounts(total=len(states), running=states.count(VmState.RUNNING), failed=failed)

    def not_ready_reasons(self) -> list[str]:
        """Why /readyz is 503 (and what STATUS names), VM by VM: the one source of both."""
        return [reason for w in self.workers for reason in self._reasons(w)]

    def ready_waits_for(self) -> list[str]:
        """The part of `not_ready_reasons` that READY=1 waits for: the reasons of the VMs not
        settled (a VM that gave up with `on_exhausted: stay` keeps /readyz 503, not READY=1)."""
        return [reason for w in self.workers if not self._settled(w) for reason in self._reasons(w)]

    def _reasons(self, w: VmWorker) -> list[str]:
        permanent = w.vm.restart.policy == "permanent" and not w.operator_stopped
        if permanent and w.name in self._waiting and (waiting := self._unmet(w)):
            return [f"vm {w.name}: waiting for {_conditions(waiting)}"]
        reasons = w.not_ready_reasons()
        if not reasons and permanent and not w.ready:
            reasons = [f"vm {w.name}: not ready"]
        return reasons

    def _settled(self, worker: VmWorker) -> bool:
        """Nothing more to wait for before READY=1 (SPEC §9): the VM is ready, or gave up with
        `on_exhausted: stay`, or does not count (not permanent, stopped by an operator, gone)."""
        if self._workers.get(worker.name) is not worker or worker.operator_stopped:
            return True
        if worker.vm.restart.policy != "permanent" or worker.ready:
            return True
        return worker.state is VmState.GAVE_UP and worker.vm.restart.on_exhausted == "stay"

    async def wait_ready(self) -> None:
        """Return once every permanent VM is ready or gave up with `on_exhausted: stay` (all at
        one moment). A VM in backoff, waiting on its dependencies or bootstrapping is not."""
        while pending := [w for w in self.workers if not self._settled(w)]:
            worker = pending[0]
            await worker.wait_until(functools.partial(self._settled, worker))

    def attach(self, state: RuntimeState) -> None:
        """Answer /healthz `workers` and /readyz for these VMs."""
        state.not_ready_providers.append(self.not_ready_reasons)
        state.worker_counts = self.counts

    # --- the pool's own task ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every VM until cancelled; `started` once each VM without `depends_on`
        launched or failed to launch (the others launch behind their gates).

        First, whatever a killed instance left running is stopped: its bootstrap steps and
        stop commands (a forced ladder), VMs no longer configured (their ladder); each
        configured VM's worker stops its own orphan before launching.
        Cancellation is the one way the pool stops (the supervisor cancels its work nursery;
        `stop` cancels this): operations fail from then on ("frameos is stopping"), those in
        flight are cancelled, and every VM goes through its ladder, dependants first (shielded,
        bounded by shutdown_timeout_s; see `force`). `run` returns once every VM has stopped.
        """
        try:
            with trio.CancelScope() as self._run_scope:
                await self._run(task_status)
        finally:
            self._run_done.set()

    async def _run(self, task_status: trio.TaskStatus[int]) -> None:
        """Two nurseries: `tasks` (the caller's cancellation reaches it: the launches, the gates
        of depends_on, log rotation, and `_sentinel`, which turns that cancellation into
        `_stopping`) around a shielded one holding the VMs' tasks, which the pool itself stops,
        dependants first (`_stop_in_order`, bounded by shutdown_timeout_s)."""
        async with trio.open_nursery() as cleaning:
            cleaning.start_soon(stop_helpers, self.state_dir, self.publisher)
            cleaning.start_soon(self._stop_unknown_orphans)
        launched = trio.Event()
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._sentinel, launched)
            with trio.CancelScope(shield=True) as shelter:
                async with trio.open_nursery() as vms:
                    self._nursery = vms
                    try:
                        tasks.start_soon(self._launch_all, vms, tasks, launched)
                        await launched.wait()
                        if not self._stopping.is_set():
                            task_status.started(len(self._workers))
                            tasks.start_soon(self._rotate_logs)
                        await self._stopping.wait()
                    finally:
                        self._nursery = None
                        self._closed.set()
                        for scope in [*self._ops.values(), *self._gates.values()]:
                            scope.cancel()
                        budget_s = self.config.shutdown_timeout_s
                        shelter.deadline = trio.current_time() + budget_s + LADDER_SLACK_S
                        await self._stop_in_order(self._stop_reason, budget_s)

    async def _sentinel(self, launched: trio.Event) -> None:
        """Sleep until `run` is cancelled; then start the ordered stop with the reason."""
        try:
            await trio.sleep_forever()
        except trio.Cancelled as exc:
            self._stop_reason = exc.reason or STOP_REASON
            raise
        finally:
            self._stopping.set()
            launched.set()

    async def _launch_all(
        self, vms: trio.Nursery, tasks: trio.Nursery, launched: trio.Event
    ) -> None:
        """The first launches: every VM without dependencies at once (each `vms.start` from a
        task of this cancellable nursery, so a stop cancels a launch under way), the others
        behind their gates. `launched` once each VM without dependencies launched or failed."""
        try:
            async with trio.open_nursery() as starting:
                for worker in self.workers:
                    if worker.vm.depends_on:
                        tasks.start_soon(self._launch_when_ready, worker)
                    else:
                        starting.start_soon(vms.start, worker.run)
        finally:
            launched.set()

    async def _stop_in_order(self, reason: str, budget_s: float) -> None:
        """Every VM through its ladder, each once the VMs that depend on it have stopped (in
        parallel otherwise). Each waits at most until its own ladder would no longer fit in
        `budget_s` (shutdown_timeout_s); `force` ends the waits."""
        now = trio.current_time()
        after = graph.dependants(self.config.vms)
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                firsts = [self._workers[name] for name in after.get(worker.name, [])]
                ladder_s = worker.launched_vm.timeouts.total_ms / 1000
                latest = now + max(budget_s - ladder_s - LADDER_SLACK_S, 0.0)
                nursery.start_soon(self._stop_after, worker, firsts, latest, reason)

    async def _stop_after(
        self, worker: VmWorker, firsts: list[VmWorker], latest: float, reason: str
    ) -> None:
        if firsts:
            with trio.CancelScope(deadline=latest) as scope:
                self._hurry.add(scope)
                try:
                    for first in firsts:
                        await first.wait_until(functools.partial(_stopped, first))
                finally:
                    self._hurry.discard(scope)
        await worker.stop(reason)

    async def stop(self, reason: str) -> None:
        """Cancel `run` with `reason` (the same path as the supervisor's cancellation: every
        VM through its ladder, in parallel) and return once it has returned."""
        if self._run_scope is None:
            return  # never ran: nothing to stop
        self._run_scope.cancel(reason=reason)
        await self._run_done.wait()

    def force(self) -> None:
        """Cut every running ladder short: each VM's group is SIGKILLed at once (bounded), and
        the VMs still waiting for their dependants to stop stop now, all in parallel.
        For a second stop signal while `stop` (or the cancellation of `run`) is under way."""
        for worker in self.workers:
            worker.force()
        for scope in self._hurry:
            scope.cancel()

    async def _stop_unknown_orphans(self) -> None:
        """Pidfiles of VMs no longer configured: their processes still go through the ladder."""
        known = set(self._workers)
        try:
            paths = pidfile.records(self.state_dir / "vms")
        except ValueError as exc:  # not a directory, not readable: said, and skipped
            await self.publisher.publish(ev.Message(text=str(exc)), "warn")
            return
        async with trio.open_nursery() as nursery:
            for path in paths:
                if path.stem not in known:
                    nursery.start_soon(clean_up_after, path.stem, path, None, self.publisher)

    async def _rotate_logs(self) -> None:
        """Keep each running VM's output file under LOG_MAX_BYTES (copy to .1, truncate)."""
        while True:
            await trio.sleep(LOG_CHECK_S)
            # one stat per running VM here (microseconds); the copy, when one is due, in a thread
            paths = [w.paths.log for w in self.workers if w.child is not None]
            if large := [path for path in paths if _size(path) > LOG_MAX_BYTES]:
                await trio.to_thread.run_sync(_rotate_all, large, LOG_MAX_BYTES)

    # --- operations (R2) ---------------------------------------------------------------------

    async def start_vm(self, name: str, *, run_id: str | None = None) -> None:
        """Launch the VM if it has no process (stopped, gave up, finished, backing off) and wait
        for its launch and bootstrap; clears an operator's stop. A running VM: waits for a
        bootstrap under way. OperationFailed when the launch or the bootstrap failed.

        With `depends_on`, the launch waits (vm.waiting) until each dependency is in its state;
        OperationFailed at once (or as soon as it happens) when a dependency is stopped, gave
        up or finished: nothing would bring it back, so the operator starts it first."""
        worker = self.worker(name)
        with self._tagged(worker, run_id), self._cancellable(worker) as scope:
            await self._start(worker)
        _raise_if_canceled(scope, name, "start")

    async def stop_vm(
        self, name: str, *, run_id: str | None = None, reason: str = OPERATOR_REASON
    ) -> None:
        """Stop the VM through its ladder; it stays stopped (no restart policy) until
        `start_vm`. Cancels a start, restart or bootstrap in flight on it. The ladder runs in
        the VM's own task: cancelling this call does not stop the ladder."""
        worker = self.worker(name)
        with self._tagged(worker, run_id):
            worker.operator_stopped = True
            self._cancel_pending(name)
            await worker.stop(reason)

    async def restart_vm(self, name: str, *, run_id: str | None = None) -> None:
        """The ladder, then a launch (and its bootstrap) as `start_vm`."""
        worker = self.worker(name)
        with self._tagged(worker, run_id), self._cancellable(worker) as scope:
            try:
                await worker.stop("restart requested by an operator")
            except BaseException:
                worker.operator_stopped = True
                raise
            await self._start(worker)
        _raise_if_canceled(scope, name, "restart")

    async def bootstrap_vm(self, name: str, *, run_id: str | None = None) -> None:
        """Run the VM's bootstrap pipeline again now, whatever its stamp (trigger always).
        OperationFailed unless it is running; VmBusy while a bootstrap runs."""
        worker = self.worker(name)
        with self._tagged(worker, run_id), self._cancellable(worker) as scope:
            await worker.rebootstrap()
        _raise_if_canceled(scope, name, "bootstrap")

    async def clean_vm(self, name: str, *, run_id: str | None = None) -> None:
        """Remove the VM's overlay and bootstrap stamp (`cleanup.progress` for each), only
        while it is stopped (VmBusy otherwise): its next start bootstraps from scratch."""
        worker = self.worker(name)
        with self._tagged(worker, run_id):
            if worker.state not in NO_PROCESS:
                raise VmBusy(
                    f"vm {name} is {worker.state.value}: clean works only on a stopped VM; "
                    f"stop it first"
                )
            targets = [("stamp", worker.paths.stamp)]
            if worker.paths.overlay is not None:
                targets.insert(0, ("overlay", worker.paths.overlay))
            for kind, path in targets:
                try:
                    size = await trio.to_thread.run_sync(_remove, path)
                except OSError as exc:
                    raise OperationFailed(
                        f"vm {name}: cannot remove {kind} {path}: {exc.strerror or exc}"
                    ) from None
                await worker.publisher.publish(
                    ev.CleanupProgress(
                        path=str(path),
                        kind=kind,
                        bytes=size or 0,
                        dry_run=False,
                        skipped_reason=None if size is not None else "not there",
                    )
                )

    async def apply(self, new_config: FrameConfig, *, run_id: str | None = None) -> ReloadDiff:
        """Reload by diff (SPEC §5.1, reload.py): removed VMs stopped (ladder, overlay
        discarded), VMs with changed process settings restarted with the new config, other
        changes applied to the worker without touching its process, added VMs launched (their
        bootstrap follows in their own task). Returns once every launch is settled. A VM with
        no process to restart (stopped by an operator) just takes its new settings (`updated`).
        Launch failures are reported as events, not raised. One apply at a time.

        The pool takes the new config (names, settings) before it awaits anything; a
        cancellation midway leaves the ladders under way to finish in the VMs' own tasks, and a
        VM it stopped but did not relaunch stays stopped as by an operator (start it)."""
        from frameos.workers.reload import ReloadDiff, classify

        async with self._applying:
            planned = classify(self.config, new_config)
            wanted = {vm.name: vm for vm in new_config.vms}
            restarted, updated = [], list(planned.updated)
            for name in planned.restarted:
                worker = self._workers[name]
                if worker.operator_stopped or worker.state in NO_PROCESS or self._closed.is_set():
                    updated.append(name)
                else:
                    restarted.append(name)
            for name in planned.updated + planned.restarted:
                self._workers[name].reconfigure(wanted[name])
                if (gate := self._gates.get(name)) is not None:  # waits on the new depends_on
                    gate.cancel()
                    if self._tasks is not None and not self._closed.is_set():
                        self._tasks.start_soon(self._launch_when_ready, self._workers[name])
            removed = [self._workers[name] for name in planned.removed]
            added = [self._worker_for(wanted[name]) for name in planned.added]
            by_name = {**self._workers, **{w.name: w for w in added}}
            self._workers = {vm.name: by_name[vm.name] for vm in new_config.vms}
            self.config = new_config
            async with trio.open_nursery() as nursery:
                for worker in removed:
                    nursery.start_soon(self._remove_vm, worker, run_id)
                for name in restarted:
                    nursery.start_soon(self._replace_vm, self._workers[name], run_id)
                if self._nursery is not None and not self._closed.is_set():
                    for worker in added:
                        nursery.start_soon(self._launch_added, worker, run_id)
        order = {name: i for i, name in enumerate(self._workers)}
        return ReloadDiff(
            added=planned.added,
            removed=planned.removed,
            restarted=restarted,
            updated=sorted(updated, key=order.__getitem__),
            unchanged=planned.unchanged,
            changed=planned.changed,
        )

    def snapshot(self, name: str) -> VmSnapshot:
        """The VM's state for `GET /v1/vms/{name}`; KeyError when unknown."""
        from frameos.workers.snapshot import (
            BootstrapSnapshot,
            LastExit,
            StepSnapshot,
            VmSnapshot,
            redacted_config,
        )

        worker = self.worker(name)
        last = worker.last_exit
        steps = worker.vm.bootstrap.steps if worker.vm.bootstrap else []
        recorded = worker.boot_steps
        return VmSnapshot(
            name=name,
            state=worker.state.value,
            pid=worker.pid,
            uptime_s=round(uptime_s(worker), 3),
            attempt=worker.attempt,
            restarts=worker.restarts,
            last_exit=None
            if last is None
            else LastExit(exit_code=last.exit_code, signal=last.signal, at=last.at),
            backoff_until=worker.backoff_until,
            operator_stopped=worker.operator_stopped,
            bootstrap=BootstrapSnapshot(
                status=worker.boot.value,
                steps=[
                    StepSnapshot(
                        name=step.name,
                        status=recorded.get(step.name, ("pending", None))[0],
                        duration_ms=recorded.get(step.name, ("pending", None))[1],
                    )
                    for step in steps
                ],
            ),
            health=worker.health_snapshot(),
            config=redacted_config(worker.vm),
            output_log=str(worker.paths.log),
            waiting_for=_conditions(waiting)
            if name in self._waiting and (waiting := self._unmet(worker))
            else None,
        )

    # --- helpers of the operations ----------------------------------------------------------

    @contextlib.contextmanager
    def _tagged(self, worker: VmWorker, run_id: str | None) -> Iterator[None]:
        """Events of `worker` carry `run_id` while the operation runs."""
        tagger = worker.publisher
        if run_id is not None:
            tagger.run_id = run_id
        try:
            yield
        finally:
            if run_id is not None and tagger.run_id == run_id:
                tagger.run_id = None

    @contextlib.contextmanager
    def _cancellable(self, worker: VmWorker) -> Iterator[trio.CancelScope]:
        """A scope a stop of the same VM cancels (`stop_vm`, `stop`)."""
        with trio.CancelScope() as scope:
            if self._closed.is_set():
                scope.cancel()
            self._ops[worker.name] = scope
            try:
                yield scope
            finally:
                if self._ops.get(worker.name) is scope:
                    del self._ops[worker.name]

    async def _start(self, worker: VmWorker) -> None:
        """Launch (unless running), wait for the launch and the bootstrap. Cancelled: the VM
        is left stopped through its ladder (shielded; the ladder's rungs bound it)."""
        try:
            if worker.state is not VmState.RUNNING:
                await self._gate(worker, refuse=True)
            record = await self._launch(worker)
            if record.error is not None:
                raise OperationFailed(f"vm {worker.name}: launch failed: {record.error}")
            await record.booted.wait()
            if not record.boot_ok:
                why = worker.boot_error or "the VM exited before its bootstrap finished"
                raise OperationFailed(f"vm {worker.name}: bootstrap failed: {why}")
        except OperationFailed:
            raise
        except BaseException as exc:
            worker.operator_stopped = True
            with trio.CancelScope(shield=True):
                await worker.stop(_canceled_because(exc))
            raise

    async def _launch(self, worker: VmWorker) -> LaunchRecord:
        """Make the VM launch (a new session, or wake a parked one) unless it is running or
        launching; return the settled record of that launch."""
        if self._closed.is_set():
            raise OperationFailed("frameos is stopping: no VM is started now")
        if worker.state is VmState.STOPPING:
            await worker.wait_stopped()
        state, attempt = worker.state, worker.attempt
        current = worker.launch_record(attempt)
        launching = current is not None and not current.settled.is_set()
        if state is VmState.RUNNING or (state is VmState.STARTING and launching):
            target = attempt
        elif state in NO_PROCESS:
            nursery = self._nursery
            if nursery is None:
                raise OperationFailed("the VM pool is not running")
            worker.rearm()
            target = attempt + 1
            await nursery.start(worker.run)
        else:
            target = attempt + 1
            if state in PARKED:
                worker.operator_stopped = False
                worker.relaunch()

        def settled() -> bool:
            record = worker.launch_record(target)
            return (record is not None and record.settled.is_set()) or (
                worker.state is VmState.STOPPED
            )

        await worker.wait_until(settled)
        record = worker.launch_record(target)
        if record is None or not record.settled.is_set():
            raise OperationFailed(f"vm {worker.name} was stopped before it launched")
        return record

    async def _remove_vm(self, worker: VmWorker, run_id: str | None) -> None:
        with self._tagged(worker, run_id):
            self._cancel_pending(worker.name)
            await worker.stop(REMOVED_REASON)
            await discard_overlay(worker.name, worker.paths.overlay, "shutdown", worker.publisher)

    async def _replace_vm(self, worker: VmWorker, run_id: str | None) -> None:
        """The ladder (with the launch's settings), then a launch with the new config."""
        with self._tagged(worker, run_id):
            if (scope := self._ops.get(worker.name)) is not None:
                scope.cancel()
            try:
                if worker.state not in PARKED:
                    await worker.stop(CHANGED_REASON)
                with contextlib.suppress(OperationFailed):  # reported by its events
                    await self._launch(worker)
            except BaseException:
                if worker.state in (VmState.STOPPING, VmState.STOPPED):
                    worker.operator_stopped = True  # the reload was canceled: it stays down
                raise

    def _cancel_pending(self, name: str) -> None:
        """End the VM's operation in flight and its launch waiting on depends_on, if any."""
        for scope in (self._ops.get(name), self._gates.get(name)):
            if scope is not None:
                scope.cancel()

    async def _launch_added(self, worker: VmWorker, run_id: str | None) -> None:
        if self._unmet(worker) and self._tasks is not None:  # the reload does not wait on it
            self._tasks.start_soon(self._launch_when_ready, worker)
            return
        with self._tagged(worker, run_id), contextlib.suppress(OperationFailed):
            await self._launch(worker)

    # --- depends_on (SPEC §5.2) -------------------------------------------------------------

    def _holds(self, on: str, condition: Condition) -> bool:
        """Is VM `on` in `condition` (started: its process runs; ready: `VmWorker.ready`)?
        A VM no longer configured holds nothing back."""
        worker = self._workers.get(on)
        if worker is None:
            return True
        return worker.ready if condition == "ready" else worker.state is VmState.RUNNING

    def _unmet(self, worker: VmWorker) -> list[tuple[str, Condition]]:
        return [(on, c) for on, c in worker.vm.depends_on.items() if not self._holds(on, c)]

    async def _gate(self, worker: VmWorker, *, refuse: bool) -> None:
        """Return once every VM `worker` depends on is in its state, all at one moment;
        `vm.waiting` once for each it waits on. `refuse` (an operator's start): OperationFailed
        when a dependency is at a dead end (stopped, gave up, finished)."""
        said: set[str] = set()
        self._waiting[worker.name] = self._waiting.get(worker.name, 0) + 1
        try:
            while unmet := self._unmet(worker):
                for on, condition in unmet:
                    if on not in said:
                        said.add(on)
                        await worker.publisher.publish(
                            ev.VmWaiting(vm=worker.name, on=on, condition=condition)
                        )
                if refuse and (stuck := [on for on, _ in unmet if self._dead_end(on)]):
                    raise OperationFailed(
                        f"vm {worker.name} depends on {_conditions(unmet)}; "
                        f"{', '.join(stuck)} is {self._workers[stuck[0]].state.value}: "
                        f"start {stuck[0]} first"
                    )
                on, condition = unmet[0]
                dependency = self._workers[on]

                def moved(
                    on: str = on, condition: Condition = condition, dep: VmWorker = dependency
                ) -> bool:
                    return (
                        self._holds(on, condition)
                        or self._workers.get(on) is not dep
                        or (refuse and self._dead_end(on))
                    )

                await dependency.wait_until(moved)
        finally:
            self._waiting[worker.name] -= 1
            if not self._waiting[worker.name]:
                del self._waiting[worker.name]

    def _dead_end(self, name: str) -> bool:
        worker = self._workers.get(name)
        return worker is not None and (worker.operator_stopped or worker.state in DEAD_ENDS)

    async def _launch_when_ready(self, worker: VmWorker) -> None:
        """A launch behind its gate, in the pool's task nursery (cancelled by a stop, by an
        operator's stop of the VM, or by a reload that changes it)."""
        with trio.CancelScope() as scope:
            previous = self._gates.get(worker.name)
            self._gates[worker.name] = scope
            if previous is not None:
                previous.cancel()
            try:
                await self._gate(worker, refuse=False)
                with contextlib.suppress(OperationFailed):  # reported by its events
                    await self._launch(worker)
            finally:
                if self._gates.get(worker.name) is scope:
                    del self._gates[worker.name]

    def collector(self) -> Collector:
        """The VMs' Prometheus collector (prometheus_client loads with the HTTP stack, after the
        VMs launched: not before, B6)."""
        from frameos.workers.metrics import PoolCollector

        return PoolCollector(self)


def _canceled_because(exc: BaseException) -> str:
    """The stop reason of a canceled start: the cancellation's reason when it has one (the
    runs service says which run won), else a plain one."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, trio.Cancelled) and exc.reason:
        return f"the start was canceled: {exc.reason}"
    return "the start was canceled"


def _stopped(worker: VmWorker) -> bool:
    return worker.state is VmState.STOPPED


def _conditions(pairs: list[tuple[str, Condition]]) -> str:
    """`db (ready), cache (started)`."""
    return ", ".join(f"{on} ({condition})" for on, condition in pairs)


def _raise_if_canceled(scope: trio.CancelScope, name: str, op: str) -> None:
    if scope.cancelled_caught:
        raise OperationCanceled(f"vm {name}: the {op} was canceled: a stop of the VM won")


def _remove(path: Path) -> int | None:
    """Remove a file; the bytes it held on disk, or None when it was not there."""
    try:
        size = os.stat(path).st_blocks * 512
        os.unlink(path)
    except FileNotFoundError:
        return None
    return size


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _rotate_all(paths: list[Path], limit: int) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            rotate_if_large(path, limit)


def uptime_s(worker: VmWorker) -> float:
    """Seconds since the running VM was launched; 0 outside trio (a scrape from a thread)."""
    try:
        return worker.uptime_s()
    except RuntimeError:
        return 0.0
