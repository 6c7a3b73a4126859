"""The quart-trio app: health, readiness, metrics and the /v1 API (SPEC §7).

Errors are `{"error": CODE, "message": TEXT, "details": {...}}` for every status, 404 and 405
included; an unexpected exception is reported as a `message` event (error) and answered 500
without a traceback on the wire.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from frameos.bus import Bus
from frameos.config import is_loopback
from frameos.events import Message
from frameos.runs.control import ControlPlane
from frameos.server.api import Api
from frameos.server.auth import ALL_SCOPES, INSTANCE, Token, Tokens, ws_authorizer
from frameos.server.metrics import Metrics
from frameos.server.routes import mount
from frameos.server.wsfast import WS_PATH_TEXT, WsHub
from frameos.state import Phase, RuntimeState

MAX_BODY_BYTES = 64 * 1024
RECENT_NAMES = 256


def json_response(body: dict[str, Any] | bytes, status: int = 200) -> Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(data, status=status, content_type="application/json")


def error(status: int, code: str, message: str, **details: Any) -> Response:
    return json_response({"error": code, "message": message, "details": details}, status)


def create_app(
    state: RuntimeState,
    bus: Bus,
    hub: WsHub,
    metrics: Metrics,
    *,
    control: ControlPlane | None = None,
    tokens: Tokens | None = None,
) -> QuartTrio:
    """Build the app around the live state; routes read it, never copy it.

    The /v1 routes (api.py) act on `control` and check `tokens`; without tokens the app makes
    an instance token no one knows (only the reads a loopback bind leaves open answer).
    """
    app = QuartTrio("frameos")
    if tokens is None:
        tokens = Tokens(
            (Token(INSTANCE, secrets.token_urlsafe(32).encode(), ALL_SCOPES, "memory"),),
            loopback=is_loopback(state.config.frame_host),
        )
    hub.authorize = ws_authorizer(tokens)
    mount(app, Api(bus, control, tokens))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def _start_timer() -> None:
        g.started = time.perf_counter()
        if request.method not in ("GET", "HEAD"):
            # Read the whole body before any answer (401, 404, 405, ...): an answer sent while
            # the body is still on its way ends the connection without `Connection: close`, and
            # a keep-alive client's next request on it fails (tests/test_api_keepalive.py).
            await request.get_data(cache=True, as_text=False, parse_form_data=False)

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

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name or "error"
        if exc.code == 404:
            message = (
                f"no route for {request.path}; see /healthz, /readyz, /metrics, /v1/openapi.json"
            )
        elif exc.code == 413:
            code = "body_too_large"
            message = f"the request body is over {MAX_BODY_BYTES} bytes; send a smaller one"
        response = error(exc.code or 500, code, message, path=request.path, method=request.method)
        if exc.code == 413:
            # the rest of the body is never read: the connection ends after this answer, and
            # says so, so that a keep-alive client does not send its next request on it
            response.headers["Connection"] = "close"
        if exc.code == 405:  # say which methods the path has
            allowed = getattr(exc, "valid_methods", None) or []
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

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
