"""`GET /v1/openapi.json` is built once and then served as the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_server import get, serving


async def test_the_document_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        first = await get(server.port, "/v1/openapi.json")
        second = await get(server.port, "/v1/openapi.json")
    assert first[0] == second[0] == 200 and first[1] == second[1]
    assert json.loads(first[1])["openapi"].startswith("3.1")
