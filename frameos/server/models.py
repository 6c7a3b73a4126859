"""The shapes of the /v1 API (SPEC §7.3) that are not already a model elsewhere: request bodies,
query strings and response bodies. The OpenAPI document (openapi.py) is generated from these,
the run models (frameos/runs), the VM snapshot (frameos/workers/snapshot.py) and the external
worker models (extworkers.py): one model per shape, used both to validate and to describe.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from frameos.envelope import EXT_NAME
from frameos.events import Severity
from frameos.runs import Run
from frameos.server.extworkers import ExtWorker
from frameos.workers.snapshot import VmSnapshot

MAX_EXT_FIELDS_BYTES = 16 * 1024
MAX_LOG_READ = 1024 * 1024
MAX_SEQ = 2**63 - 1


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------------


class Problem(BaseModel):
    path: str = Field(description="JSON path of the value (`fields`, `target`, `query.limit`)")
    message: str


class ErrorBody(BaseModel):
    """Every error: `{"error": CODE, "message": TEXT, "details": {...}}`."""

    error: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


# --- events -------------------------------------------------------------------------------------


class EnvelopeOut(BaseModel):
    """One event envelope (SPEC §3.1)."""

    v: int
    seq: int
    timestamp: float
    event: str
    severity: str
    fields: dict[str, Any]


class EventsQuery(_In):
    after: int = Field(default=0, ge=0, le=MAX_SEQ, description="events with seq > after")
    limit: int = Field(default=100, ge=1, le=1000)


class EventsPage(BaseModel):
    events: list[EnvelopeOut]
    next_cursor: int
    head_cursor: int
    oldest_available_cursor: int
    replay_complete: bool


class ExtEventIn(_In):
    """The body of `POST /v1/events`: an external producer's event."""

    event: str = Field(pattern=EXT_NAME, description="`ext.NAME`; any other name is refused")
    severity: Severity = "info"
    fields: dict[str, Any] = Field(
        default_factory=dict, description=f"a JSON object of at most {MAX_EXT_FIELDS_BYTES} bytes"
    )
    expected_previous_seq: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEQ,
        description="the newest seq the producer expects the log to have; another → 409",
    )

    @field_validator("fields")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ValueError(f"fields cannot be written as JSON: {exc}") from None
        if size > MAX_EXT_FIELDS_BYTES:
            raise ValueError(
                f"fields take {size} bytes as JSON; at most {MAX_EXT_FIELDS_BYTES} are accepted"
            )
        return value


class ExtEventOut(BaseModel):
    seq: int = Field(description="the seq the event got in the log")
    event: str
    replayed: bool = Field(description="true when the Idempotency-Key was seen before")


# --- runs ---------------------------------------------------------------------------------------


class RunsQuery(_In):
    limit: int = Field(default=50, ge=1, le=1000)
    before: str | None = Field(
        default=None, max_length=64, description="only runs created before this run"
    )


class RunList(BaseModel):
    runs: list[Run]
    next_before: str | None = Field(description="pass as `before` for the next page; null: last")


class RunEvents(BaseModel):
    run_id: str
    events: list[EnvelopeOut]


# --- VMs ----------------------------------------------------------------------------------------


class VmList(BaseModel):
    vms: list[VmSnapshot]


class LogQuery(_In):
    offset: int = Field(default=0, ge=0, le=MAX_SEQ, description="byte offset in the file")
    limit: int = Field(default=65_536, ge=1, le=MAX_LOG_READ, description="bytes to read at most")


class VmLog(BaseModel):
    data: str = Field(description="the bytes read, as UTF-8 (invalid bytes replaced)")
    offset: int = Field(description="where the read began")
    next_offset: int = Field(description="where the next read begins")
    size: int = Field(description="the file's size now")
    rotated: bool = Field(description="the file was rotated under the reader: read from 0")


# --- workers ------------------------------------------------------------------------------------


class WorkerList(BaseModel):
    workers: list[ExtWorker]


class Empty(BaseModel):
    """No query parameters."""

    model_config = ConfigDict(extra="ignore")


JsonLines = Literal["application/x-ndjson"]
