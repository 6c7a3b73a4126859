"""Runs (SPEC §7.3): operator requests executed on the VM pool, remembered in the event log."""

from frameos.runs.model import (
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
from frameos.runs.receipt import Receipt
from frameos.runs.service import NotAccepting, RunService

__all__ = [
    "Conflict",
    "IdempotencyMismatch",
    "IllegalTransition",
    "NotAccepting",
    "Op",
    "Receipt",
    "Run",
    "RunError",
    "RunRequest",
    "RunService",
    "RunState",
    "UnknownRun",
    "UnknownVm",
]
