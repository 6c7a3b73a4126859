"""A run: one operator request (start, stop, restart, bootstrap, clean a VM; reload) and the
state it moves through (SPEC §7.3).

    created ──► running ──► succeeded | failed
       │           └──► canceling ──► canceled (or succeeded | failed: the op ended first)
       └──► canceled | failed (stopped before it ran; interrupted by a restart of frameos)

`Run.advance` refuses any other move with IllegalTransition. The run's events carry its
`run_id`; `first_seq` is its `command.accepted`, `last_seq` its `command.completed|failed|
canceled`, so its events are read from the log between the two.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from frameos.errors import FrameosError


class RunState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.CREATED: frozenset({RunState.RUNNING, RunState.CANCELED, RunState.FAILED}),
    RunState.RUNNING: frozenset({RunState.CANCELING, RunState.SUCCEEDED, RunState.FAILED}),
    RunState.CANCELING: frozenset({RunState.CANCELED, RunState.SUCCEEDED, RunState.FAILED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELED: frozenset(),
}
FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELED})


class Op(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    BOOTSTRAP = "bootstrap"
    CLEAN = "clean"
    RELOAD = "reload"


# What a stop cancels when it arrives while one of these is in flight on its VM.
STOP_WINS_OVER = frozenset({Op.START, Op.RESTART, Op.BOOTSTRAP})
# What `cancel` may interrupt: a clean (a few file removals) and a reload (a config applied VM
# by VM: half of it would be left) run to their end.
CANCELABLE = frozenset({Op.START, Op.STOP, Op.RESTART, Op.BOOTSTRAP})


class RunRequest(BaseModel):
    """The body of `POST /v1/runs`: a VM op with its VM, or a reload (target "*" or null)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: Op
    target: str | None = None

    @model_validator(mode="after")
    def _target_fits_op(self) -> Self:
        if self.op is Op.RELOAD:
            if self.target not in (None, "*"):
                raise ValueError('a reload has no VM: set target to "*" or null')
        elif not self.target or self.target == "*":
            raise ValueError(f"{self.op.value} needs a target: the name of one VM")
        return self

    @property
    def vm(self) -> str | None:
        """The VM the run acts on (None for a reload)."""
        return None if self.op is Op.RELOAD else self.target

    def same_as(self, other: RunRequest) -> bool:
        """The same request (a reload's "*" and null are the same)."""
        return (self.op, self.vm) == (other.op, other.vm)


class Run(BaseModel):
    """One run, as `GET /v1/runs/{id}` shows it. Mutable only through `advance`."""

    run_id: str
    op: Op
    target: str | None
    state: RunState = RunState.CREATED
    reason: str | None = None
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def request(self) -> RunRequest:
        return RunRequest(op=self.op, target=self.target)

    def advance(self, to: RunState, at: float, reason: str | None = None) -> None:
        """Move to `to`; raises IllegalTransition when the table does not allow it."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(self, to)
        self.state, self.updated_at = to, at
        if reason is not None:
            self.reason = reason


# --- what submit and cancel refuse (the API maps each to its status and code) ---------------


class RunError(FrameosError):
    """A request the run service refuses."""


class UnknownVm(RunError):
    """404 `unknown_vm`."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        names = ", ".join(known) or "none"
        super().__init__(f"no VM named {name!r} in the config (VMs: {names})")


class UnknownRun(RunError, KeyError):
    """404 `unknown_run`."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run {run_id!r}; GET /v1/runs lists the runs")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Conflict(RunError):
    """409 `conflict`: another run is in flight on the same VM (or a reload is)."""

    def __init__(self, request: RunRequest, run_in_the_way: Run) -> None:
        self.request, self.run_in_the_way = request, run_in_the_way
        other = run_in_the_way
        what = f"{other.op.value} {other.target}" if other.target else other.op.value
        super().__init__(
            f"run {other.run_id} ({what}) is {other.state.value}; wait for it to end "
            f"(GET /v1/runs/{other.run_id}) or cancel it, then try again"
        )


class IdempotencyMismatch(RunError):
    """409 `idempotency_mismatch`: the key was used for another request."""

    def __init__(self, key: str, original: Run) -> None:
        self.key, self.original = key, original
        super().__init__(
            f"Idempotency-Key {key!r} was used for run {original.run_id} "
            f"({original.op.value} {original.target or '*'}); use a new key for a new request"
        )


class IllegalTransition(RunError):
    """409 `illegal_transition`: e.g. canceling a run that has ended."""

    def __init__(self, run: Run, to: RunState, why: str | None = None) -> None:
        self.run, self.to = run, to
        super().__init__(
            why or f"run {run.run_id} is {run.state.value}; it cannot become {to.value}"
        )
