"""`GET /v1/openapi.json`: an OpenAPI 3.1 document generated from the route table (api.ROUTES)
and the pydantic models it names; nothing here is written by hand but the error statuses every
route shares.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from frameos.server.api import IDEMPOTENCY_KEY, JSON, OWNER_HEADER
from frameos.server.auth import Scope
from frameos.server.extworkers import OWNER
from frameos.server.models import ErrorBody
from frameos.server.routes import ROUTES, Route

REF = "#/components/schemas/{model}"
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    IDEMPOTENCY_KEY: {
        "type": "string",
        "pattern": r"^[\x21-\x7e]{1,200}$",
        "description": "the same key and body again answer the original (200); another body 409",
    },
    OWNER_HEADER: {
        "type": "string",
        "pattern": OWNER,
        "description": "who the caller is for worker ownership; unset: the token's name",
    },
}
ERROR_TEXT = {
    400: "invalid_parameter (a query parameter or header; details.problems: [{path, message}]) "
    "| invalid_cursor (a cursor ahead of the newest event; details.head_cursor)",
    401: "missing_authorization | invalid_token",
    403: "insufficient_scope (details.scope)",
    404: "unknown_vm | unknown_run | not_found",
    405: "method_not_allowed",
    409: "conflict (details.run) | idempotency_mismatch | seq_conflict (details.head) | "
    "illegal_transition",
    410: "stale_cursor",
    413: "body_too_large",
    422: "invalid_body (details.problems: [{path, message}])",
    503: "not_accepting | log_unavailable",
}


def document(routes: tuple[Route, ...] = ROUTES, *, loopback: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; on a `loopback` bind the reads it leaves open say
    that a token is optional."""
    from frameos import __version__

    models = _models(routes)
    refs, defs = models_json_schema([(model, mode) for model, mode in models], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, refs, open_read=loopback and route.open_on_loopback)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "frameos control API",
            "version": __version__,
            "description": "SPEC §7.3. Errors: {error, message, details}. Bearer tokens with "
            "scopes read, control, events:write; on a loopback bind the operations marked "
            "x-open-on-loopback answer without a token.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _models(routes: tuple[Route, ...]) -> list[tuple[type[BaseModel], Any]]:
    found: dict[tuple[type[BaseModel], str], None] = {(ErrorBody, "serialization"): None}
    for route in routes:
        if route.body is not None:
            found[(route.body, "validation")] = None
        for answer in route.responses.values():
            if isinstance(answer, type):
                found[(answer, "serialization")] = None
    return list(found)


def _operation(route: Route, refs: dict[Any, Any], *, open_read: bool) -> dict[str, Any]:
    statuses = {401, 403, *route.errors}
    if route.path_params:
        statuses.add(404)
    if route.body is not None:
        statuses |= {413, 422}
    if route.headers or route.query.model_fields:
        statuses.add(400)
    responses: dict[str, Any] = {}
    for status, answer in sorted(route.responses.items()):
        if isinstance(answer, str):
            content = {answer: {"schema": {"type": "string"} if answer != JSON else {}}}
        else:
            content = {JSON: {"schema": refs[(answer, "serialization")]}}
        responses[str(status)] = {"description": "OK", "content": content}
    error_schema = refs[(ErrorBody, "serialization")]
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": ERROR_TEXT.get(status, "error"),
            "content": {JSON: {"schema": error_schema}},
        }
    operation: dict[str, Any] = {
        "operationId": route.name,
        "description": route.summary,
        "tags": list(route.tags),
        "parameters": _parameters(route),
        "responses": responses,
        "security": [{"bearer": []}, {}] if open_read else [{"bearer": []}],
        "x-scope": route.scope.value,
    }
    if route.open_on_loopback:
        operation["x-open-on-loopback"] = True
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": refs[(route.body, "validation")]}},
        }
    return operation


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.path_params
    ]
    schema = route.query.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    for header in route.headers:
        params.append(
            {"name": header, "in": "header", "required": False, "schema": HEADER_SCHEMAS[header]}
        )
    return params


__all__ = ["Scope", "document"]
