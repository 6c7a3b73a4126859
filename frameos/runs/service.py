"""The run service: accepts runs, executes them on the VM pool, remembers them (SPEC §7.3).

    supervisor work nursery ── RunService.run ── runs nursery ── one task per run in flight
                                               └── watcher (wakes readers once the log has a seq)

`submit` is synchronous (the API calls it from a request): it checks idempotency, the VM and
conflicts, publishes `command.accepted` and starts the run's task. At most one run is in flight
per VM, and a reload excludes every other run; a stop wins over a start, restart or bootstrap in
flight on its VM (that run is canceled, then the stop runs). A run's task ends it with
`command.completed`, `command.failed` or `command.canceled`. Every event carries the `run_id`
(the pool sets it on the VM events it publishes for the op; the reload path on runtime:reload).

At start the runs are rebuilt from the command.* events of the log; a run that had not ended
when frameos died ends `failed` with reason `interrupted` (and a command.failed says so).
Cancelling the service (frameos stopping) ends the runs in flight `canceled` ("frameos is
stopping").
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from frameos import events as ev
from frameos.bus import Bus, Subscription, Wakeup
from frameos.envelope import Envelope, decode
from frameos.errors import FrameosError, StaleCursorError
from frameos.eventlog import EventLog
from frameos.runs.model import (
    CANCELABLE,
    STOP_WINS_OVER,
    Conflict,
    IdempotencyMismatch,
    IllegalTransition,
    Op,
    Run,
    RunError,
    RunRequest,
    RunState,
    UnknownRun,
    UnknownVm,
)
from frameos.runs.receipt import Receipt, make_receipt, run_events
from frameos.workers import OperationCanceled

# How long `events`/`receipt` wait for the log writer to have a finished run's last event.
WRITE_WAIT_S = 5.0
# Runs kept in memory; past this the oldest ended ones are forgotten (their events stay in the
# log, but GET /v1/runs/{id} and their Idempotency-Key no longer find them).
MAX_RUNS = 10_000
STOPPING = "frameos is stopping"
INTERRUPTED = "interrupted"
# Where the reload run sits in the in-flight table (VM runs sit under their VM's name).
_RELOAD = "*"


class Pool(Protocol):
    """What runs need of the VM pool (frameos.workers.pool.VmPool, interface R2)."""

    @property
    def names(self) -> list[str]: ...

    async def start_vm(self, name: str, *, run_id: str | None = None) -> None: ...

    async def stop_vm(
        self, name: str, *, run_id: str | None = None, reason: str = "operator"
    ) -> None: ...

    async def restart_vm(self, name: str, *, run_id: str | None = None) -> None: ...

    async def bootstrap_vm(self, name: str, *, run_id: str | None = None) -> None: ...

    async def clean_vm(self, name: str, *, run_id: str | None = None) -> None: ...


# The supervisor's reload, for a run: re-read the config and apply it (runtime:reload carries
# the run id); returns the error text when it changed nothing, else None.
Reloader = Callable[[str], Awaitable[str | None]]


class NotAccepting(RunError):
    """The service is not running (frameos is starting or stopping): 503."""


@dataclass(eq=False)
class _Flight:
    """A run in flight: its task's cancel scope, and an event set when the task has ended."""

    run: Run
    key: str
    started: float = 0.0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class RunService:
    """Every run of this instance (and of the ones before it, from the log)."""

    def __init__(
        self,
        pool: Pool,
        bus: Bus,
        *,
        reload: Reloader,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.log: EventLog = bus.log
        self._reload = reload
        self._clock = clock
        self.runs: dict[str, Run] = {}  # creation order
        self._by_key: dict[str, str] = {}  # Idempotency-Key → run_id
        self._in_flight: dict[str, _Flight] = {}  # VM name (or _RELOAD) → its run in flight
        self._flights: dict[str, _Flight] = {}  # run_id → flight, while in flight
        self._nursery: trio.Nursery | None = None
        self._written = Wakeup()

    # --- lifetime ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rebuild the runs from the log, then execute runs until cancelled."""
        await self._rebuild()
        subscription = self.bus.subscribe("runs", 64)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_writes, subscription)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.bus.unsubscribe(subscription)

    async def _watch_writes(self, subscription: Subscription) -> None:
        """Wake the readers waiting for the log writer (`_events`) after each written batch."""
        async for _ in subscription:
            subscription.take_ready()  # batches queued meanwhile: one wake-up is enough
            self._written.set()

    # --- requests ------------------------------------------------------------------------------

    def submit(self, request: RunRequest, idempotency_key: str | None = None) -> tuple[Run, bool]:
        """Accept a run; (run, True) when created, (the original run, False) when the same
        Idempotency-Key came with the same request before.

        Raises IdempotencyMismatch, UnknownVm, Conflict (each with command.rejected), and
        NotAccepting while frameos starts or stops.
        """
        if idempotency_key is not None and idempotency_key in self._by_key:
            original = self.runs[self._by_key[idempotency_key]]
            if original.request().same_as(request):
                return original, False
            self._rejected(request, IdempotencyMismatch(idempotency_key, original))
        nursery = self._nursery
        if nursery is None:
            raise NotAccepting("frameos is not accepting runs now (starting or stopping)")
        vm = request.vm
        if vm is not None and vm not in self.pool.names:
            self._rejected(request, UnknownVm(vm, list(self.pool.names)))
        beaten = self._in_the_way(request)
        run_id = self._new_id()
        accepted = self.bus.publish_nowait(
            ev.CommandAccepted(
                run_id=run_id, op=request.op.value, target=vm, idempotency_key=idempotency_key
            )
        )
        at = _logged_time(accepted)  # as the log has it: the same after a restart
        run = Run(
            run_id=run_id,
            op=request.op,
            target=vm,
            created_at=at,
            updated_at=at,
            idempotency_key=idempotency_key,
            first_seq=accepted.seq,
        )
        self._remember(run)
        flight = _Flight(run, vm if vm is not None else _RELOAD)
        if beaten is not None:
            self._cancel(beaten, f"stopped by run {run.run_id}")
        self._in_flight[flight.key] = flight
        self._flights[run.run_id] = flight
        nursery.start_soon(self._execute, flight, beaten)
        return run, True

    def _remember(self, run: Run) -> None:
        """Keep the run (and its key); forget the oldest ended runs past MAX_RUNS."""
        self.runs[run.run_id] = run
        if run.idempotency_key is not None:
            self._by_key[run.idempotency_key] = run.run_id
        self._trim()

    def _trim(self) -> None:
        if len(self.runs) <= MAX_RUNS:
            return
        ended = [r for r in self.runs.values() if r.finished][: len(self.runs) - MAX_RUNS]
        for old in ended:
            del self.runs[old.run_id]
            if (
                old.idempotency_key is not None
                and self._by_key.get(old.idempotency_key) == old.run_id
            ):
                del self._by_key[old.idempotency_key]

    def _in_the_way(self, request: RunRequest) -> _Flight | None:
        """The run a stop beats (to cancel), or None; raises Conflict for any other overlap."""
        reload = self._in_flight.get(_RELOAD)
        if request.op is Op.RELOAD:
            if self._in_flight:
                self._rejected(request, Conflict(request, next(iter(self._in_flight.values())).run))
            return None
        if reload is not None:
            self._rejected(request, Conflict(request, reload.run))
        assert request.vm is not None
        flight = self._in_flight.get(request.vm)
        if flight is None:
            return None
        if request.op is Op.STOP and flight.run.op in STOP_WINS_OVER:
            return flight
        self._rejected(request, Conflict(request, flight.run))
        return None  # unreachable: _rejected raises

    def _rejected(self, request: RunRequest, error: RunError) -> None:
        """Log command.rejected, then raise `error`."""
        reason = {
            UnknownVm: "unknown_vm",
            Conflict: "conflict",
            IdempotencyMismatch: "idempotency_mismatch",
        }.get(type(error), "rejected")
        with suppress(trio.ClosedResourceError):  # stopping: the refusal still stands
            self.bus.publish_nowait(
                ev.CommandRejected(
                    op=request.op.value, target=request.vm, reason=reason, detail=str(error)
                )
            )
        raise error

    def get(self, run_id: str) -> Run:
        """The run; raises UnknownRun (a KeyError)."""
        try:
            return self.runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    def list(self, *, limit: int, before: str | None = None) -> list[Run]:
        """Up to `limit` runs, newest first; `before`: only runs created before that run."""
        ids = list(self.runs)
        end = ids.index(self.get(before).run_id) if before is not None else len(ids)
        return [self.runs[i] for i in reversed(ids[max(0, end - limit) : end])]

    def cancel(self, run_id: str) -> Run:
        """Cancel a run in flight: running → canceling → canceled once its op lets go (the
        pool's next rung). Raises UnknownRun; IllegalTransition when it has ended, or is a
        clean or a reload (those run to their end)."""
        run = self.get(run_id)
        flight = self._flights.get(run_id)
        if flight is None or run.finished:
            raise IllegalTransition(run, RunState.CANCELED)
        if run.op not in CANCELABLE:
            raise IllegalTransition(
                run,
                RunState.CANCELED,
                f"run {run.run_id} ({run.op.value}) cannot be canceled: a {run.op.value} runs to "
                "its end (bounded); wait for it",
            )
        if run.state is not RunState.CANCELING:
            self._cancel(flight, "canceled by the operator")
        return run

    def _cancel(self, flight: _Flight, reason: str) -> None:
        run = flight.run
        if run.state is RunState.CREATED:  # its task has not begun: it never runs
            self._finish(flight, RunState.CANCELED, reason)
        elif run.state is RunState.RUNNING:
            run.advance(RunState.CANCELING, self._clock(), reason)
        flight.scope.cancel()

    async def wait(self, run_id: str) -> Run:
        """The run once it has ended (at once when it has)."""
        run = self.get(run_id)
        flight = self._flights.get(run_id)
        if flight is not None:
            await flight.done.wait()
        return run

    async def events(self, run_id: str) -> builtins.list[bytes]:
        """The run's envelope lines, from the log (oldest first)."""
        return [line for line, _ in await self._events(self.get(run_id))]

    async def receipt(self, run_id: str) -> Receipt:
        """The run's receipt; the same log gives the same receipt (`Receipt.canonical`)."""
        run = self.get(run_id)
        return make_receipt(run, [data for _, data in await self._events(run)])

    async def _events(self, run: Run) -> builtins.list[tuple[bytes, dict[str, Any]]]:
        assert run.first_seq is not None, "a run is accepted before anyone sees it"
        last = run.last_seq if run.last_seq is not None else self.bus.last_seq
        with trio.move_on_after(WRITE_WAIT_S):
            while self.bus.written_seq < last and not self.bus.closed:
                await self._written.wait()
        last = min(last, self.bus.written_seq)
        return await trio.to_thread.run_sync(run_events, self.log, run.run_id, run.first_seq, last)

    # --- execution -----------------------------------------------------------------------------

    async def _execute(self, flight: _Flight, beaten: _Flight | None) -> None:
        run = flight.run
        try:
            if run.finished:  # canceled before its task began
                return
            run.advance(RunState.RUNNING, self._clock())
            flight.started = trio.current_time()
            error: str | None = None
            canceled = False
            with flight.scope:
                try:
                    if beaten is not None:
                        await beaten.done.wait()  # the beaten op unwinds (its VM left stopped)
                    error = await self._op(run)
                except OperationCanceled as exc:  # the pool says a stop won over it
                    canceled = True
                    if run.state is RunState.RUNNING:
                        run.advance(RunState.CANCELING, self._clock(), str(exc))
                except Exception as exc:  # a failed op ends its run, never the supervisor
                    error = _describe(exc)
            if error is not None:
                self._finish(flight, RunState.FAILED, error)
            elif canceled or flight.scope.cancelled_caught:
                self._finish(flight, RunState.CANCELED, run.reason or "canceled")
            else:
                self._finish(flight, RunState.SUCCEEDED, None)
        finally:
            if not run.finished:  # cancelled from outside: frameos is stopping
                if run.state is RunState.RUNNING:
                    run.advance(RunState.CANCELING, self._clock(), STOPPING)
                self._finish(flight, RunState.CANCELED, STOPPING)
            if self._in_flight.get(flight.key) is flight:
                del self._in_flight[flight.key]
            self._flights.pop(run.run_id, None)
            flight.done.set()

    async def _op(self, run: Run) -> str | None:
        """Run the op; the error text when it failed without raising (a reload), else None."""
        pool, run_id, vm = self.pool, run.run_id, run.target or ""
        match run.op:
            case Op.START:
                await pool.start_vm(vm, run_id=run_id)
            case Op.STOP:
                await pool.stop_vm(vm, run_id=run_id, reason="operator")
            case Op.RESTART:
                await pool.restart_vm(vm, run_id=run_id)
            case Op.BOOTSTRAP:
                await pool.bootstrap_vm(vm, run_id=run_id)
            case Op.CLEAN:
                await pool.clean_vm(vm, run_id=run_id)
            case Op.RELOAD:
                return await self._reload(run_id)
        return None

    def _finish(self, flight: _Flight, to: RunState, reason: str | None) -> None:
        """End the run: its state, then its last event (published without waiting: this also
        runs while frameos stops)."""
        run = flight.run
        run.advance(to, run.updated_at, reason)  # checked now; the time once it is logged
        event: ev.Event
        match to:
            case RunState.SUCCEEDED:
                elapsed = trio.current_time() - flight.started if flight.started else 0.0
                event = ev.CommandCompleted(run_id=run.run_id, duration_ms=int(elapsed * 1000))
            case RunState.FAILED:
                event = ev.CommandFailed(run_id=run.run_id, error=reason or "failed")
            case _:
                event = ev.CommandCanceled(run_id=run.run_id, reason=reason or "canceled")
        with suppress(trio.ClosedResourceError):  # a closed bus: nothing more can be logged
            envelope = self.bus.publish_nowait(event)
            run.last_seq, run.updated_at = envelope.seq, _logged_time(envelope)

    def _new_id(self) -> str:
        while (run_id := secrets.token_hex(8)) in self.runs:
            pass
        return run_id

    # --- rebuilt from the log ------------------------------------------------------------------

    async def _rebuild(self) -> None:
        """The runs of earlier instances, from their command.* events; end the unfinished."""
        found = await trio.to_thread.run_sync(_command_events, self.log)
        for seq, at, event in found:
            match event:
                case ev.CommandAccepted(run_id=run_id, op=op, target=target, idempotency_key=key):
                    try:
                        run = Run(
                            run_id=run_id,
                            op=Op(op),
                            target=target,
                            created_at=at,
                            updated_at=at,
                            idempotency_key=key,
                            first_seq=seq,
                        )
                    except ValueError:
                        continue  # an op this version does not know
                    self.runs[run_id] = run  # trimmed once all are read
                    if key is not None:
                        self._by_key[key] = run_id
                case ev.CommandCompleted(run_id=run_id):
                    _ended(self.runs.get(run_id), RunState.SUCCEEDED, None, seq, at)
                case ev.CommandFailed(run_id=run_id, error=error):
                    _ended(self.runs.get(run_id), RunState.FAILED, error, seq, at)
                case ev.CommandCanceled(run_id=run_id, reason=reason):
                    _ended(self.runs.get(run_id), RunState.CANCELED, reason, seq, at)
        for run in self.runs.values():
            if not run.finished:
                envelope = await self.bus.publish(
                    ev.CommandFailed(run_id=run.run_id, error=INTERRUPTED)
                )
                _ended(run, RunState.FAILED, INTERRUPTED, envelope.seq, _logged_time(envelope))
        self._trim()


def _logged_time(envelope: Envelope) -> float:
    """The envelope's time as its line says it (6 decimals), so a rebuilt run is equal."""
    return float(f"{envelope.timestamp:.6f}")


def _ended(run: Run | None, state: RunState, reason: str | None, seq: int, at: float) -> None:
    """A run's end as the log says it (the log is the authority: no transition check)."""
    if run is not None:
        run.state, run.reason, run.last_seq, run.updated_at = state, reason, seq, at


# The rebuild's page: bigger than a client's (one worker-thread call reads the whole log).
SCAN_PAGE = 5000
# Lines of the command.* family, found without decoding the others.
_COMMAND = b'"event":"%s.' % ev.CommandAccepted.NAME.split(".")[0].encode()


def _command_events(log: EventLog) -> list[tuple[int, float, ev.Event]]:
    """(seq, timestamp, model) of every command.* event in the log, oldest first (synchronous:
    a worker thread). Cursor pages; restarts past a rotation that overtook it."""
    found: list[tuple[int, float, ev.Event]] = []
    cursor = (log.oldest_seq() or 1) - 1
    while True:
        try:
            page = log.read_after(cursor, SCAN_PAGE)
        except StaleCursorError as exc:
            cursor = exc.oldest - 1
            continue
        # most pages have no command.* line: one search over the page, not one per line
        lines = page.lines if _COMMAND in b"".join(page.lines) else []
        for line in lines:
            if _COMMAND not in line:
                continue
            try:
                envelope = decode(line)
                found.append((envelope.seq, envelope.timestamp, envelope.model()))
            except ValueError:
                continue  # not ours to judge here: the log reader reports bad lines
        if not page.lines:
            return found
        cursor = page.next_cursor


def _describe(exc: Exception) -> str:
    if isinstance(exc, FrameosError):
        return str(exc)
    return f"internal fault: {type(exc).__name__}: {exc}"
