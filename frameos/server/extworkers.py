"""External workers (SPEC §7.3 `/v1/workers`): a guest agent, a renderer, anything outside
frameos that registers itself, reports its status and proves it is alive by heartbeats.

    starting ──► running ──► stopping ──► stopped | failed
       ▲                                      │
       └──────────────────────────────────────┘   (any other move: IllegalWorkerMove → 409)

A worker belongs to its owner (the `X-Frameos-Owner` header, or the token's name): only the
owner heartbeats it or moves it. A live worker (starting, running, stopping) whose last heartbeat
is older than its `ttl_s` is stale: `worker.stale` once, until a heartbeat brings it back. One
task (`run`, in the app's lifespan nursery) waits for the earliest heartbeat deadline: no polling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum

import trio
from pydantic import BaseModel, ConfigDict, Field

from frameos import events as ev
from frameos.bus import Bus, Wakeup

MAX_WORKERS = 1000
WORKER_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
OWNER = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


class WorkerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.RUNNING}),
    WorkerState.RUNNING: frozenset({WorkerState.STOPPING}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPED, WorkerState.FAILED}),
    WorkerState.STOPPED: frozenset({WorkerState.STARTING}),
    WorkerState.FAILED: frozenset({WorkerState.STARTING}),
}
LIVE = frozenset({WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING})


class WorkerRegistration(BaseModel):
    """The body of `POST /v1/workers`."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=WORKER_ID, description="the worker's id, chosen by the worker")
    owner: str | None = Field(
        default=None,
        pattern=OWNER,
        description="who owns it; unset: the X-Frameos-Owner header, else the token's name. "
        "Must match the caller when set",
    )
    ttl_s: float = Field(
        gt=0, le=86_400, description="seconds without a heartbeat before it is stale"
    )


class WorkerStatusChange(BaseModel):
    """The body of `POST /v1/workers/{id}/status`."""

    model_config = ConfigDict(extra="forbid")
    status: WorkerState


class ExtWorker(BaseModel):
    """One external worker, as `GET /v1/workers/{id}` shows it."""

    id: str
    owner: str
    ttl_s: float
    status: WorkerState
    stale: bool = Field(description="no heartbeat for longer than ttl_s")
    registered_at: float = Field(description="epoch seconds")
    last_heartbeat_at: float = Field(description="epoch seconds")


class WorkerError(Exception):
    """A refused worker request, with its HTTP status and error code."""

    def __init__(self, status: int, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class _Entry:
    __slots__ = ("beat", "worker")

    def __init__(self, worker: ExtWorker, beat: float) -> None:
        self.worker = worker
        self.beat = beat  # trio clock of the last heartbeat


class WorkerRegistry:
    """Every registered external worker; `run` marks the stale ones."""

    def __init__(self, bus: Bus, *, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._changed = Wakeup()

    def list(self) -> list[ExtWorker]:
        return [entry.worker for entry in self._entries.values()]

    def get(self, worker_id: str) -> ExtWorker:
        return self._entry(worker_id).worker

    def register(self, body: WorkerRegistration, caller: str) -> tuple[ExtWorker, bool]:
        """(worker, True) when new; (worker, False) when its owner registers it again (its
        ttl and heartbeat renewed, its status kept)."""
        owner = body.owner or caller
        if owner != caller:
            raise WorkerError(
                403,
                "not_owner",
                f"owner {owner!r} is not the caller {caller!r}; register as yourself (set "
                "X-Frameos-Owner, or leave owner out)",
                owner=owner,
                caller=caller,
            )
        now = self._clock()
        entry = self._entries.get(body.id)
        if entry is not None:
            self._owned(entry, caller)
            entry.worker = entry.worker.model_copy(
                update={"ttl_s": body.ttl_s, "stale": False, "last_heartbeat_at": now}
            )
            entry.beat = trio.current_time()
            self._changed.set()
            return entry.worker, False
        if len(self._entries) >= MAX_WORKERS:
            raise WorkerError(
                409,
                "too_many_workers",
                f"{MAX_WORKERS} workers are registered; stop and forget some first",
            )
        worker = ExtWorker(
            id=body.id,
            owner=owner,
            ttl_s=body.ttl_s,
            status=WorkerState.STARTING,
            stale=False,
            registered_at=now,
            last_heartbeat_at=now,
        )
        self._entries[body.id] = _Entry(worker, trio.current_time())
        self.bus.publish_nowait(ev.WorkerRegistered(worker_id=body.id, owner=owner))
        self._changed.set()
        return worker, True

    def heartbeat(self, worker_id: str, caller: str) -> ExtWorker:
        entry = self._entry(worker_id)
        self._owned(entry, caller)
        entry.beat = trio.current_time()
        entry.worker = entry.worker.model_copy(
            update={"stale": False, "last_heartbeat_at": self._clock()}
        )
        self._changed.set()
        return entry.worker

    def move(self, worker_id: str, to: WorkerState, caller: str) -> ExtWorker:
        entry = self._entry(worker_id)
        self._owned(entry, caller)
        current = entry.worker.status
        if to not in MOVES[current]:
            allowed = ", ".join(sorted(MOVES[current])) or "none"
            raise WorkerError(
                409,
                "illegal_transition",
                f"worker {worker_id} is {current.value}; it cannot become {to.value} (from "
                f"{current.value}: {allowed})",
                current=current.value,
                to=to.value,
            )
        entry.worker = entry.worker.model_copy(update={"status": to})
        entry.beat = trio.current_time()  # a status report is a sign of life too
        entry.worker = entry.worker.model_copy(
            update={"stale": False, "last_heartbeat_at": self._clock()}
        )
        self.bus.publish_nowait(
            ev.WorkerStatus.model_validate(
                {"worker_id": worker_id, "from": current.value, "to": to.value}
            )
        )
        self._changed.set()
        return entry.worker

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Mark workers stale as their heartbeat deadlines pass, until cancelled."""
        task_status.started()
        while True:
            with trio.move_on_at(self._mark_stale()):
                await self._changed.wait()

    def _mark_stale(self) -> float:
        """Mark the overdue workers stale (worker.stale each); the next deadline (inf: none)."""
        now = trio.current_time()
        upcoming = math.inf
        for entry in self._entries.values():
            worker = entry.worker
            if worker.stale or worker.status not in LIVE:
                continue
            deadline = entry.beat + worker.ttl_s
            if deadline <= now:
                entry.worker = worker.model_copy(update={"stale": True})
                self.bus.publish_nowait(
                    ev.WorkerStale(
                        worker_id=worker.id, last_heartbeat_age_s=round(now - entry.beat, 3)
                    )
                )
            else:
                upcoming = min(upcoming, deadline)
        return upcoming

    def _entry(self, worker_id: str) -> _Entry:
        entry = self._entries.get(worker_id)
        if entry is None:
            raise WorkerError(
                404,
                "not_found",
                f"no worker {worker_id!r}; POST /v1/workers registers one",
                worker_id=worker_id,
            )
        return entry

    @staticmethod
    def _owned(entry: _Entry, caller: str) -> None:
        if entry.worker.owner != caller:
            raise WorkerError(
                403,
                "not_owner",
                f"worker {entry.worker.id} belongs to {entry.worker.owner!r}, not {caller!r}; "
                "only its owner may change it (X-Frameos-Owner, or the token's name)",
                owner=entry.worker.owner,
                caller=caller,
            )
