"""The /v1 route table (SPEC §7.3) and how it is mounted: one list both served (`mount`) and
documented (openapi.py).

Each route names its scope, its body and query models and its answers; `mount` wraps every
handler (api.py) the same way: the token is checked (auth.py), the query and the body are
validated by their pydantic models (400 `invalid_parameter` naming the parameter; 422
`invalid_body` with the JSON path of every problem), then the handler runs and answers a model or
bytes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from pydantic import BaseModel, ValidationError
from quart import Response, request
from quart_trio import QuartTrio

from frameos.config.problems import json_path
from frameos.errors import StaleCursorError
from frameos.runs import IllegalTransition, Receipt, Run, RunRequest, UnknownRun
from frameos.server.api import (
    IDEMPOTENCY_KEY,
    JSON_LINES,
    MAX_KEY_CHARS,
    OWNER_HEADER,
    Api,
    ApiError,
    Call,
    Reply,
    run_body,
)
from frameos.server.auth import AuthError, Scope
from frameos.server.extworkers import (
    OWNER,
    ExtWorker,
    WorkerError,
    WorkerRegistration,
    WorkerStatusChange,
)
from frameos.server.models import (
    Empty,
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
from frameos.workers.snapshot import VmSnapshot

_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII
_OWNER = re.compile(OWNER)

Handler = Callable[[Api, Call], Awaitable[Reply]]


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
            raise ApiError(409, "illegal_transition", str(exc), run=run_body(exc.run)) from None
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


__all__ = ["ROUTES", "Route", "mount"]
