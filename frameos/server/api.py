"""The /v1 control API (SPEC §7.3): one route table, mounted on the quart-trio app and read by
the OpenAPI generator (openapi.py), so what is served and what is documented are one list.

Each route names its scope, its body and query models and its answers; `mount` wraps every
handler the same way: the token is checked (auth.py), the query and the body are validated by
their pydantic models (422 `invalid_body` / `invalid_parameter` with the JSON path of every
problem), then the handler runs against the ControlPlane and answers a model or bytes. A refusal
is an ApiError: `{"error": CODE, "message": TEXT, "details": {...}}` with its status.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
from pydantic import BaseModel, ValidationError
from quart import Response, request
from quart_trio import QuartTrio

from frameos.bus import Bus
from frameos.config.problems import json_path
from frameos.errors import StaleCursorError
from frameos.runs import (
    Conflict,
    IdempotencyMismatch,
    IllegalTransition,
    NotAccepting,
    Receipt,
    Run,
    RunRequest,
    UnknownRun,
    UnknownVm,
)
from frameos.runs.control import ControlPlane
from frameos.server.auth import AuthError, Scope, Token, Tokens
from frameos.server.extworkers import (
    OWNER,
    ExtWorker,
    WorkerError,
    WorkerRegistration,
    WorkerRegistry,
    WorkerStatusChange,
)
from frameos.server.models import (
    Empty,
    ErrorBody,
    EventsPage,
    EventsQuery,
    ExtEventIn,
    ExtEventOut,
    LogQuery,
    RunEvents,
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
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII
_OWNER = re.compile(OWNER)
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


Handler = Callable[["Api", Call], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One operation: the single description both served and documented."""

    method: str
    path: str  # OpenAPI style: /v1/runs/{run_id}
    name: str  # operationId
    summary: str
    handler: Handler
    scope: Scope
    responses: Mapping[int, type[BaseModel] | str]  # status → model, or a content type (lines)
    open_on_loopback: bool = False  # a read a loopback bind leaves open (SPEC §7.3)
    body: type[BaseModel] | None = None
    query: type[BaseModel] = Empty
    headers: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()  # statuses besides 401/403/404/422 the route may answer
    tags: tuple[str, ...] = field(default=())

    @property
    def rule(self) -> str:
        """The path as quart routes it (`{x}` → `<x>`)."""
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


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
            raise ApiError(409, "conflict", str(exc), run=_run(exc.run_in_the_way)) from None
        except IdempotencyMismatch as exc:
            raise ApiError(409, "idempotency_mismatch", str(exc), run=_run(exc.original)) from None
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


def _run(run: Run) -> dict[str, Any]:
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


# --- the table ----------------------------------------------------------------------------------

RUN = "runs"
ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/runs",
        "createRun",
        "Start a run: start|stop|restart|bootstrap|clean a VM, or reload",
        Api.create_run,
        Scope.CONTROL,
        {201: Run, 200: Run},
        body=RunRequest,
        headers=(IDEMPOTENCY_KEY,),
        errors=(404, 409, 503),
        tags=(RUN,),
    ),
    Route(
        "GET",
        "/v1/runs",
        "listRuns",
        "Runs, newest first, paged by `before`",
        Api.list_runs,
        Scope.READ,
        {200: RunList},
        query=RunsQuery,
        errors=(404,),
        tags=(RUN,),
    ),
    Route(
        "GET",
        "/v1/runs/{run_id}",
        "getRun",
        "One run",
        Api.get_run,
        Scope.READ,
        {200: Run},
        tags=(RUN,),
    ),
    Route(
        "GET",
        "/v1/runs/{run_id}/events",
        "getRunEvents",
        "The run's events, from the log",
        Api.run_events,
        Scope.READ,
        {200: RunEvents},
        errors=(410,),
        tags=(RUN,),
    ),
    Route(
        "GET",
        "/v1/runs/{run_id}/receipt",
        "getRunReceipt",
        "The run's receipt (frameos.receipt.v1): the same log gives the same bytes",
        Api.run_receipt,
        Scope.READ,
        {200: Receipt},
        errors=(410,),
        tags=(RUN,),
    ),
    Route(
        "GET",
        "/v1/runs/{run_id}/replay",
        "replayRun",
        "The run's events as JSON lines",
        Api.run_replay,
        Scope.READ,
        {200: JSON_LINES},
        errors=(410,),
        tags=(RUN,),
    ),
    Route(
        "POST",
        "/v1/runs/{run_id}/cancel",
        "cancelRun",
        "Cancel a run in flight (at the next rung)",
        Api.cancel_run,
        Scope.CONTROL,
        {200: Run},
        errors=(409,),
        tags=(RUN,),
    ),
    Route(
        "GET",
        "/v1/vms",
        "listVms",
        "Every VM's state",
        Api.list_vms,
        Scope.READ,
        {200: VmList},
        open_on_loopback=True,
        tags=("vms",),
    ),
    Route(
        "GET",
        "/v1/vms/{name}",
        "getVm",
        "One VM's state, bootstrap steps and effective config (secrets redacted)",
        Api.get_vm,
        Scope.READ,
        {200: VmSnapshot},
        open_on_loopback=True,
        tags=("vms",),
    ),
    Route(
        "GET",
        "/v1/vms/{name}/log",
        "getVmLog",
        "The VM's output file from a byte offset",
        Api.vm_log,
        Scope.READ,
        {200: VmLog},
        query=LogQuery,
        tags=("vms",),
    ),
    Route(
        "GET",
        "/v1/workers",
        "listWorkers",
        "External workers",
        Api.list_workers,
        Scope.READ,
        {200: WorkerList},
        tags=("workers",),
    ),
    Route(
        "POST",
        "/v1/workers",
        "registerWorker",
        "Register an external worker (status starting)",
        Api.register_worker,
        Scope.CONTROL,
        {201: ExtWorker, 200: ExtWorker},
        body=WorkerRegistration,
        headers=(OWNER_HEADER,),
        errors=(409, 413),
        tags=("workers",),
    ),
    Route(
        "GET",
        "/v1/workers/{worker_id}",
        "getWorker",
        "One external worker",
        Api.get_worker,
        Scope.READ,
        {200: ExtWorker},
        tags=("workers",),
    ),
    Route(
        "POST",
        "/v1/workers/{worker_id}/heartbeat",
        "workerHeartbeat",
        "A sign of life from the worker's owner",
        Api.worker_heartbeat,
        Scope.CONTROL,
        {200: ExtWorker},
        headers=(OWNER_HEADER,),
        tags=("workers",),
    ),
    Route(
        "POST",
        "/v1/workers/{worker_id}/status",
        "setWorkerStatus",
        "Move the worker: starting → running → stopping → stopped|failed → starting",
        Api.worker_status,
        Scope.CONTROL,
        {200: ExtWorker},
        body=WorkerStatusChange,
        headers=(OWNER_HEADER,),
        errors=(409, 413),
        tags=("workers",),
    ),
    Route(
        "GET",
        "/v1/openapi.json",
        "getOpenApi",
        "This document: OpenAPI 3.1, generated from the route table and the models",
        Api.openapi,
        Scope.READ,
        {200: "application/json"},
        open_on_loopback=True,
        tags=("meta",),
    ),
    Route(
        "GET",
        "/v1/events",
        "pollEvents",
        "Events after a cursor, with replay metadata",
        Api.poll_events,
        Scope.READ,
        {200: EventsPage},
        open_on_loopback=True,
        query=EventsQuery,
        errors=(410,),
        tags=("events",),
    ),
    Route(
        "POST",
        "/v1/events",
        "postEvent",
        "Append an external producer's ext.NAME event; 201 once it is in the log",
        Api.post_event,
        Scope.EVENTS_WRITE,
        {201: ExtEventOut, 200: ExtEventOut},
        body=ExtEventIn,
        headers=(IDEMPOTENCY_KEY,),
        errors=(409, 413, 503),
        tags=("events",),
    ),
)


# --- mounting -----------------------------------------------------------------------------------


def mount(app: QuartTrio, api: Api, routes: tuple[Route, ...] = ROUTES) -> None:
    """Add every route of the table to the app, each wrapped the same way."""
    for route in routes:
        app.add_url_rule(
            route.rule,
            endpoint=route.name,
            view_func=_view(api, route),
            methods=[route.method],
            provide_automatic_options=False,
        )

    @app.errorhandler(ApiError)
    async def _refused(exc: ApiError) -> Response:
        return exc.response()

    # the external workers' staleness watcher lives in the app's lifespan nursery; it ends at
    # the start of the shutdown (quart-trio would otherwise wait for it, up to 5 s)
    watcher = trio.CancelScope()

    async def watch() -> None:
        with watcher:
            await api.workers.run()

    @app.before_serving
    async def _start_workers() -> None:
        app.nursery.start_soon(watch)

    @app.after_serving
    async def _stop_workers() -> None:
        watcher.cancel()


def _view(api: Api, route: Route) -> Callable[..., Awaitable[Response]]:
    async def view(**params: str) -> Response:
        try:
            token = api.tokens.check(
                request.headers.get("Authorization"),
                route.scope,
                open_read=route.open_on_loopback,
            )
        except AuthError as exc:
            raise ApiError(exc.status, exc.code, exc.message, **exc.details) from None
        query = _query(route.query)
        key = _header(IDEMPOTENCY_KEY, _KEY) if IDEMPOTENCY_KEY in route.headers else None
        if OWNER_HEADER in route.headers:
            _header(OWNER_HEADER, _OWNER)
        body = None
        if route.body is not None:
            body = _body(route.body, await _json_body())
        call = Call(token, query, body, params, key)
        try:
            reply = await route.handler(api, call)
        except UnknownRun as exc:
            raise ApiError(404, "unknown_run", str(exc), **params) from None
        except IllegalTransition as exc:
            raise ApiError(409, "illegal_transition", str(exc), run=_run(exc.run)) from None
        except WorkerError as exc:
            raise ApiError(exc.status, exc.code, exc.message, **exc.details) from None
        except StaleCursorError as exc:
            raise ApiError(410, "stale_cursor", str(exc)) from None
        data = reply.body
        if isinstance(data, BaseModel):
            data = orjson.dumps(data.model_dump(mode="json", by_alias=True))
        return Response(data, status=reply.status, content_type=reply.content_type)

    view.__name__ = route.name
    return view


async def _json_body() -> Any:
    raw = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    if not raw:
        raise ApiError(
            422,
            "invalid_body",
            "the request needs a JSON object body",
            problems=[{"path": "", "message": "the body is empty; send a JSON object"}],
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            422,
            "invalid_body",
            f"the body is not JSON: {exc}",
            problems=[{"path": "", "message": f"not JSON: {exc}"}],
        ) from None


def _body(model: type[BaseModel], data: Any) -> Any:
    """The body as `model`, or 422 `invalid_body` with one problem per JSON path."""
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "invalid_body",
            f"expected a JSON object, found {type(data).__name__}",
            problems=[{"path": "", "message": "expected a JSON object"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {
                "path": json_path(tuple(item["loc"])),
                "message": item["msg"].removeprefix("Value error, "),
            }
            for item in exc.errors(include_url=False)[:20]
        ]
        summary = "; ".join(f"{p['path'] or 'body'}: {p['message']}" for p in problems[:3])
        raise ApiError(422, "invalid_body", summary, problems=problems) from None


def _query(model: type[BaseModel]) -> Any:
    """The query string as `model` (an empty value is the default); 400 `invalid_parameter`
    naming the first parameter that is wrong (details.parameter), as /ws/events does."""
    data = {k: v for k, v in request.args.items() if v != ""}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        items = exc.errors(include_url=False)
        name = str(items[0]["loc"][0]) if items[0]["loc"] else ""
        found = data.get(name, "")
        shown = found if len(found) <= 40 else found[:37] + "..."
        message = items[0]["msg"].removeprefix("Value error, ")
        raise ApiError(
            400,
            "invalid_parameter",
            f"query parameter {name}={shown!r}: {message}",
            parameter=name,
        ) from None


def _header(name: str, pattern: re.Pattern[str]) -> str | None:
    value = request.headers.get(name)
    if value is not None and not pattern.fullmatch(value):
        raise ApiError(
            400,
            "invalid_parameter",
            f"the {name} header must be 1..{MAX_KEY_CHARS} visible ASCII characters "
            f"({pattern.pattern})",
            parameter=name,
        )
    return value


__all__ = ["ROUTES", "Api", "ApiError", "ErrorBody", "Route", "mount"]
