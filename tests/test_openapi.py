"""GET /v1/openapi.json: generated from the route table and the models, and complete: every /v1
route the app serves is in it, with its method (SPEC §7.3)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from frameos.bus import Bus
from frameos.config import validate_config
from frameos.eventlog import EventLog
from frameos.server.app import create_app
from frameos.server.metrics import Metrics
from frameos.server.openapi import document
from frameos.server.routes import ROUTES
from frameos.server.wsfast import WsHub
from frameos.state import RuntimeState
from tests.api_helpers import serving_api


def served_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every /v1 rule of the app frameos builds."""
    log = EventLog(tmp_path / "events.jsonl", max_bytes=None, keep=2)
    bus = Bus(log)
    cfg = validate_config({}, "test")
    state = RuntimeState(config=cfg, config_source="test")
    hub = WsHub(bus, cfg.websocket)
    app = create_app(state, bus, hub, Metrics(state, bus, hub))
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((method.lower(), path))
    return found


def test_every_route_of_the_app_is_in_the_document(tmp_path: Path) -> None:
    doc = document()
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    served = served_routes(tmp_path)
    assert served == documented
    assert len(served) == len(ROUTES) >= 17


def test_document_is_openapi_31_and_every_ref_resolves() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for name in ["Run", "RunRequest", "Receipt", "VmSnapshot", "ExtEventIn", "ErrorBody"]:
        assert name in schemas, name
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', _dumps(doc)))
    assert refs and refs <= set(schemas)
    runs = doc["paths"]["/v1/runs"]["post"]
    assert set(runs["responses"]) >= {"200", "201", "401", "403", "404", "409", "413", "422"}
    assert runs["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunRequest"
    }
    assert {p["name"] for p in runs["parameters"]} == {"Idempotency-Key"}
    log = doc["paths"]["/v1/vms/{name}/log"]["get"]
    assert {(p["name"], p["in"]) for p in log["parameters"]} == {
        ("name", "path"),
        ("offset", "query"),
        ("limit", "query"),
    }
    # the body model is the one that validates: its pattern refuses any non-ext name
    assert schemas["ExtEventIn"]["properties"]["event"]["pattern"].startswith("^ext\\.")


async def test_served_document_is_the_generated_one(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        served = await api.call("GET", "/v1/openapi.json", token=None)  # open on loopback
        assert served.status_code == 200
        assert served.json() == _roundtrip(document())


def _dumps(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc)


def _roundtrip(doc: dict[str, Any]) -> Any:
    import json

    return json.loads(json.dumps(doc))
