"""The quart-trio app: health, readiness, metrics and the /v1 API (SPEC §7).

Errors are `{"error": CODE, "message": TEXT, "details": {...}}` for every status, 404 and 405
included; an unexpected exception is reported as a `message` event (error) and answered 500
without a traceback on the wire.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from frameos.bus import Bus
from frameos.errors import StaleCursorError
from frameos.events import Message
from frameos.server.metrics import Metrics
from frameos.server.replay import CursorError, parse_cursor, read_page, stale_body
from frameos.server.wsfast import WS_PATH_TEXT, WsHub
from frameos.state import Phase, RuntimeState

MAX_BODY_BYTES = 64 * 1024
POLL_DEFAULT, POLL_MAX = 100, 1000
RECENT_NAMES = 256


def json_response(body: dict[str, Any] | bytes, status: int = 200) -> Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(data, status=status, content_type="application/json")


def error(status: int, code: str, message: str, **details: Any) -> Response:
    return json_response({"error": code, "message": message, "details": details}, status)


def create_app(state: RuntimeState, bus: Bus, hub: WsHub, metrics: Metrics) -> QuartTrio:
    """Build the app around the live state; routes read it, never copy it."""
    app = QuartTrio("frameos")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(route, request.method, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz")
    @app.get("/health")
    async def healthz() -> Response:
        return json_response(health_body(state, bus, hub))

    @app.get("/readyz")
    async def readyz() -> Response:
        reasons = state.not_ready_reasons()
        body = {"status": "ready" if not reasons else "not_ready", "reasons": reasons}
        return json_response(body, 200 if not reasons else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/events")
    async def poll_events() -> Response:
        return await poll(bus, request.args.get("after"), request.args.get("limit"))

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name or "error"
        if exc.code == 404:
            message = f"no route for {request.path}; see /healthz, /readyz, /metrics, /v1/events"
        return error(exc.code or 500, code, message, path=request.path, method=request.method)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        bus.publish_nowait(
            Message(
                text=f"HTTP {request.method} {request.path} failed: {type(exc).__name__}: {exc}"
            ),
            "error",
        )
        return error(500, "internal_error", "the request failed; see the event log")

    return app


def health_body(state: RuntimeState, bus: Bus, hub: WsHub) -> dict[str, Any]:
    counts = state.worker_counts()
    ring = bus.ring
    recent = [ring[i].name for i in range(max(0, len(ring) - RECENT_NAMES), len(ring))]
    return {
        "status": _status(state, bus),
        "server_time": time.time(),
        "started_at": state.started_at,
        "uptime_seconds": round(state.uptime(), 3),
        "version": state.version,
        "apps_loaded": state.apps_loaded,
        "scenes_loaded": state.scenes_loaded,
        "metrics_interval_seconds": state.config.metrics_interval,
        "heartbeats": state.heartbeats,
        "metrics_ticks": state.metrics_ticks,
        "event_stream": {
            "transport": "websocket",
            "path": WS_PATH_TEXT,
            "connected_clients": len(hub.clients),
            "published_total": bus.published,
            "dropped_clients": hub.dropped_slow,
            "rejected_clients": hub.rejected_full,
            "recent_events": recent,
        },
        "workers": {"total": counts.total, "running": counts.running, "failed": counts.failed},
        "event_log": {"fault": bus.fault, "write_errors": bus.write_errors},
    }


def _status(state: RuntimeState, bus: Bus) -> str:
    """`stopping` once a stop began; `degraded` while the event log cannot be written."""
    if state.phase in (Phase.STOPPING, Phase.STOPPED):
        return "stopping"
    return "degraded" if bus.fault is not None else "ok"


async def poll(bus: Bus, after_raw: str | None, limit_raw: str | None) -> Response:
    """GET /v1/events: events after a cursor, with replay metadata; stale cursors get 410."""
    try:
        after = parse_cursor(after_raw, "after", 0)
        limit = parse_cursor(limit_raw, "limit", POLL_DEFAULT)
    except CursorError as exc:
        return error(400, "invalid_parameter", str(exc), parameter=exc.name)
    if not 1 <= limit <= POLL_MAX:
        return error(
            400,
            "invalid_parameter",
            f"limit must be 1..{POLL_MAX}, found {limit}",
            parameter="limit",
        )
    try:
        page = await read_page(bus.log, after, limit)
    except StaleCursorError as exc:
        return json_response(stale_body(exc), 410)
    oldest_cursor = (page.oldest - 1) if page.oldest is not None else page.head
    body = (
        b'{"events":[' + b",".join(line[:-1] for line in page.lines) + b'],"next_cursor":%d,'
        b'"head_cursor":%d,"oldest_available_cursor":%d,"replay_complete":%s}'
        % (
            page.next_cursor,
            page.head,
            oldest_cursor,
            b"true" if page.complete else b"false",
        )
    )
    return json_response(body)
