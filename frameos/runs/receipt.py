"""A run's events read back from the log, and its receipt (SPEC §7.3, `frameos.receipt.v1`).

The events of a run are the log lines between its `first_seq` (command.accepted) and its
`last_seq` (its end) whose fields carry its `run_id`, of declared events only (an external
producer's `ext.*` event with a `run_id` field is not the run's: no one outside forges a
receipt); they are found by cursor reads (`EventLog.read_after` from `first_seq - 1`), never by a
scan of the whole log. The receipt's digest is sha256 over the run's events in canonical JSON,
one line each: each envelope parsed and written again by orjson with sorted keys, then b"\\n".
The same log gives the same bytes, before and after a restart of frameos.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from frameos.eventlog import EventLog
from frameos.events import REGISTRY
from frameos.runs.model import Op, Run, RunState

SCHEMA: Final = "frameos.receipt.v1"
PAGE = 1000


class Receipt(BaseModel):
    """What a run did, as a digest of its events."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    schema_: Literal["frameos.receipt.v1"] = Field(default=SCHEMA, alias="schema")
    run_id: str
    op: Op
    target: str | None
    state: RunState
    first_seq: int | None
    last_seq: int | None
    event_count: int
    digest: str  # "sha256:<hex>"

    def canonical(self) -> bytes:
        """The receipt's own bytes: JSON with sorted keys (what GET .../receipt answers)."""
        return orjson.dumps(
            self.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS
        )


def run_lines(log: EventLog, run_id: str, first_seq: int, last_seq: int) -> list[bytes]:
    """The envelope lines of a run, seq `first_seq`..`last_seq`, from the log (synchronous:
    call it in a worker thread). Raises StaleCursorError when the log no longer has them."""
    return [line for line, _ in run_events(log, run_id, first_seq, last_seq)]


def run_events(
    log: EventLog, run_id: str, first_seq: int, last_seq: int
) -> list[tuple[bytes, dict[str, Any]]]:
    """(line, parsed envelope) of each event of the run, as `run_lines`."""
    needle = b'"run_id":' + orjson.dumps(run_id)
    found: list[tuple[bytes, dict[str, Any]]] = []
    cursor = first_seq - 1
    while cursor < last_seq:
        page = log.read_after(cursor, PAGE)
        for line in page.lines:
            if needle not in line:  # most lines of a busy log: no decode
                continue
            data = orjson.loads(line)
            if data["seq"] > last_seq:
                return found
            fields = data.get("fields")
            if (
                isinstance(fields, dict)
                and fields.get("run_id") == run_id
                and data.get("event") in REGISTRY  # not an external producer's ext.* event
            ):
                found.append((line, data))
        if not page.lines:
            break  # the log ends before last_seq (not written yet)
        cursor = page.next_cursor
    return found


def canonical_lines(lines: list[bytes]) -> list[bytes]:
    """Each envelope parsed and re-serialized with sorted keys, newline-terminated."""
    return [canonical(orjson.loads(line)) for line in lines]


def canonical(envelope: dict[str, Any]) -> bytes:
    """One parsed envelope as its canonical line."""
    return orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


def make_receipt(run: Run, events: list[dict[str, Any]]) -> Receipt:
    """The receipt of `run` over its parsed events (`run_events`)."""
    digest = hashlib.sha256()
    for envelope in events:
        digest.update(canonical(envelope))
    return Receipt(
        run_id=run.run_id,
        op=run.op,
        target=run.target,
        state=run.state,
        first_seq=run.first_seq,
        last_seq=run.last_seq,
        event_count=len(events),
        digest=f"sha256:{digest.hexdigest()}",
    )
