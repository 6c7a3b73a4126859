"""The /v1 control API's handlers (SPEC §7.3): what each route does with the ControlPlane (runs,
the VM pool, the bus) and the external worker registry. The route table that serves and
documents them is routes.py; a refusal is an ApiError, answered
`{"error": CODE, "message": TEXT, "details": {...}}` with its status.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trio
from pydantic import BaseModel
from quart import Response, request

from frameos.bus import Bus
from frameos.errors import StaleCursorError
from frameos.runs import (
    Conflict,
    IdempotencyMismatch,
    NotAccepting,
    Run,
    UnknownVm,
)
from frameos.runs.control import ControlPlane
from frameos.server.auth import Token, Tokens
from frameos.server.extworkers import (
    WorkerRegistry,
    WorkerStatusChange,
)
from frameos.server.models import (
    EventsQuery,
    ExtEventIn,
    ExtEventOut,
    LogQuery,
    RunList,
    RunsQuery,
    VmList,
    VmLog,
    WorkerList,
)
from frameos.server.replay import read_page, stale_body
from frameos.workers.snapshot import VmSnapshot

JSON = "application/json"
JSON_LINES = "application/x-ndjson"
IDEMPOTENCY_KEY = "Idempotency-Key"
OWNER_HEADER = "X-Frameos-Owner"
MAX_KEY_CHARS = 200
WRITE_WAIT_S = 10.0  # POST /v1/events: how long the log may take to have the event
EXT_KEYS_KEPT = 10_000  # Idempotency-Keys of POST /v1/events remembered (oldest forgotten)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def response(self) -> Response:
        body = {"error": self.code, "message": self.message, "details": self.details}
        return Response(orjson.dumps(body), status=self.status, content_type=JSON)


@dataclass(frozen=True)
class Call:
    """What a handler gets: the checked token, the validated query and body, path values."""

    token: Token | None
    query: Any
    body: Any
    params: Mapping[str, str]
    idempotency_key: str | None

    @property
    def caller(self) -> str:
        """Who asks: the X-Frameos-Owner header, else the token's name."""
        owner = request.headers.get(OWNER_HEADER)
        if owner is not None:
            return owner
        return self.token.name if self.token is not None else "anonymous"


@dataclass(frozen=True)
class Reply:
    status: int
    body: BaseModel | bytes
    content_type: str = JSON


# --- the handlers -------------------------------------------------------------------------------


class Api:
    """The handlers' state: the control plane, the tokens, the ext-event idempotency keys."""

    def __init__(self, bus: Bus, control: ControlPlane | None, tokens: Tokens) -> None:
        self.bus = bus
        self._control = control
        self.tokens = tokens
        if control is not None and control.workers is None:
            control.workers = WorkerRegistry(bus)
        self.workers: WorkerRegistry = (
            control.workers if control is not None else WorkerRegistry(bus)
        )
        self._document: bytes | None = None
        self._ext_keys: OrderedDict[str, tuple[bytes, ExtEventOut]] = OrderedDict()

    @property
    def control(self) -> ControlPlane:
        """The runs and the VM pool; 503 when the app was built without them (tests)."""
        if self._control is None:
            raise ApiError(503, "not_accepting", "this server has no runs or VMs to act on")
        return self._control

    async def openapi(self, call: Call) -> Reply:
        if self._document is None:
            from frameos.server.openapi import document

            self._document = orjson.dumps(document(loopback=self.tokens.loopback))
        return Reply(200, self._document)

    # runs ---------------------------------------------------------------------------------------

    async def create_run(self, call: Call) -> Reply:
        try:
            run, created = self.control.runs.submit(call.body, call.idempotency_key)
        except UnknownVm as exc:
            raise ApiError(404, "unknown_vm", str(exc), vm=exc.name, known=exc.known) from None
        except Conflict as exc:
            raise ApiError(409, "conflict", str(exc), run=run_body(exc.run_in_the_way)) from None
        except IdempotencyMismatch as exc:
            raise ApiError(
                409, "idempotency_mismatch", str(exc), run=run_body(exc.original)
            ) from None
        except NotAccepting as exc:
            raise ApiError(503, "not_accepting", str(exc)) from None
        return Reply(201 if created else 200, run)

    async def list_runs(self, call: Call) -> Reply:
        query: RunsQuery = call.query
        runs = self.control.runs.list(limit=query.limit, before=query.before)
        more = len(runs) == query.limit and runs[-1].run_id != next(iter(self.control.runs.runs))
        return Reply(200, RunList(runs=runs, next_before=runs[-1].run_id if more else None))

    async def get_run(self, call: Call) -> Reply:
        return Reply(200, self.control.runs.get(call.params["run_id"]))

    async def run_events(self, call: Call) -> Reply:
        run_id = call.params["run_id"]
        lines = await self.control.runs.events(run_id)
        body = (
            b'{"run_id":'
            + orjson.dumps(run_id)
            + b',"events":['
            + b",".join(line.rstrip(b"\n") for line in lines)
            + b"]}"
        )
        return Reply(200, body)

    async def run_receipt(self, call: Call) -> Reply:
        receipt = await self.control.runs.receipt(call.params["run_id"])
        return Reply(200, receipt.canonical())

    async def run_replay(self, call: Call) -> Reply:
        lines = await self.control.runs.events(call.params["run_id"])
        return Reply(200, b"".join(lines), JSON_LINES)

    async def cancel_run(self, call: Call) -> Reply:
        return Reply(200, self.control.runs.cancel(call.params["run_id"]))

    # VMs ----------------------------------------------------------------------------------------

    async def list_vms(self, call: Call) -> Reply:
        pool = self.control.pool
        return Reply(200, VmList(vms=[pool.snapshot(name) for name in pool.names]))

    def _snapshot(self, name: str) -> VmSnapshot:
        try:
            return self.control.pool.snapshot(name)
        except KeyError:
            names = list(self.control.pool.names)
            known = ", ".join(names) or "none"
            raise ApiError(
                404, "unknown_vm", f"no VM named {name!r} (VMs: {known})", vm=name, known=names
            ) from None

    async def get_vm(self, call: Call) -> Reply:
        return Reply(200, self._snapshot(call.params["name"]))

    async def vm_log(self, call: Call) -> Reply:
        query: LogQuery = call.query
        path = Path(self._snapshot(call.params["name"]).output_log)
        log = await trio.to_thread.run_sync(read_output, path, query.offset, query.limit)
        return Reply(200, log)

    # workers ------------------------------------------------------------------------------------

    async def list_workers(self, call: Call) -> Reply:
        return Reply(200, WorkerList(workers=self.workers.list()))

    async def get_worker(self, call: Call) -> Reply:
        return Reply(200, self.workers.get(call.params["worker_id"]))

    async def register_worker(self, call: Call) -> Reply:
        worker, created = self.workers.register(call.body, call.caller)
        return Reply(201 if created else 200, worker)

    async def worker_heartbeat(self, call: Call) -> Reply:
        return Reply(200, self.workers.heartbeat(call.params["worker_id"], call.caller))

    async def worker_status(self, call: Call) -> Reply:
        body: WorkerStatusChange = call.body
        return Reply(200, self.workers.move(call.params["worker_id"], body.status, call.caller))

    # events -------------------------------------------------------------------------------------

    async def poll_events(self, call: Call) -> Reply:
        query: EventsQuery = call.query
        bus = self.bus
        try:
            page = await read_page(bus.log, query.after, query.limit)
        except StaleCursorError as exc:
            return Reply(410, orjson.dumps(stale_body(exc)))
        head = max(page.head, bus.last_seq)  # published, perhaps not in the files yet
        if query.after > head:  # as /ws/events?since=: a poller must not wait on it silently
            raise ApiError(
                400,
                "invalid_cursor",
                f"after={query.after} is ahead of the newest event {head}; pass a seq you have "
                "received (the log may have been wiped: start again from 0)",
                parameter="after",
                requested_cursor=query.after,
                head_cursor=head,
            )
        oldest = (page.oldest - 1) if page.oldest is not None else page.head
        body = (
            b'{"events":[' + b",".join(line[:-1] for line in page.lines) + b'],"next_cursor":%d,'
            b'"head_cursor":%d,"oldest_available_cursor":%d,"replay_complete":%s}'
            % (page.next_cursor, page.head, oldest, b"true" if page.complete else b"false")
        )
        return Reply(200, body)

    async def post_event(self, call: Call) -> Reply:
        body: ExtEventIn = call.body
        bus = self.bus
        fingerprint = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        key = call.idempotency_key
        if key is not None and key in self._ext_keys:
            seen, out = self._ext_keys[key]
            if seen != fingerprint:
                raise ApiError(
                    409,
                    "idempotency_mismatch",
                    f"{IDEMPOTENCY_KEY} {key!r} was used for another event (seq {out.seq}); use "
                    "a new key for a new event",
                    seq=out.seq,
                )
            return Reply(200, out.model_copy(update={"replayed": True}))
        head = bus.last_seq
        if body.expected_previous_seq is not None and body.expected_previous_seq != head:
            raise ApiError(
                409,
                "seq_conflict",
                f"expected_previous_seq is {body.expected_previous_seq} but the newest event is "
                f"{head}; read the events after yours, then try again with {head}",
                head=head,
                expected_previous_seq=body.expected_previous_seq,
            )
        subscription = bus.subscribe("api-event", 16)
        try:
            try:
                envelope = bus.publish_ext(body.event, body.severity, orjson.dumps(body.fields))
            except trio.ClosedResourceError:
                raise ApiError(503, "not_accepting", "frameos is stopping") from None
            out = ExtEventOut(seq=envelope.seq, event=body.event, replayed=False)
            if key is not None:
                self._ext_keys[key] = (fingerprint, out)
                while len(self._ext_keys) > EXT_KEYS_KEPT:
                    self._ext_keys.popitem(last=False)
            with trio.move_on_after(WRITE_WAIT_S):
                if bus.written_seq < envelope.seq:
                    async for _ in subscription:  # each batch: written (and synced) first
                        if bus.written_seq >= envelope.seq:
                            break
            if bus.written_seq < envelope.seq:
                raise ApiError(
                    503,
                    "log_unavailable",
                    f"event {envelope.seq} is accepted but not yet in the log "
                    f"({bus.fault or 'the log is slow'}); it will be written, do not resend",
                    seq=envelope.seq,
                )
        finally:
            bus.unsubscribe(subscription)
        return Reply(201, out)


def run_body(run: Run) -> dict[str, Any]:
    return run.model_dump(mode="json")


def read_output(path: Path, offset: int, limit: int) -> VmLog:
    """Up to `limit` bytes of a VM's output file from `offset` (synchronous: a worker thread).
    An offset past the end means the file was rotated under the reader: read from 0."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            rotated = offset > size
            start = 0 if rotated else offset
            f.seek(start)
            data = f.read(limit)
    except FileNotFoundError:
        return VmLog(data="", offset=0, next_offset=0, size=0, rotated=offset > 0)
    data = _whole_utf8(data)
    return VmLog(
        data=data.decode("utf-8", "replace"),
        offset=start,
        next_offset=start + len(data),
        size=size,
        rotated=rotated,
    )


def _whole_utf8(data: bytes) -> bytes:
    """`data` without a UTF-8 sequence cut at its end (the next read gets it whole)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back] if len(data) > back else data
    return data


__all__ = ["Api", "ApiError", "Call", "Reply", "read_output"]
