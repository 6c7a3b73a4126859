"""POST /v1/events remembers a bounded number of Idempotency-Keys (frameos/server/api.py): past
the bound the oldest is forgotten, and a resend with it is a new event; without a key every
post is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameos.server import api as api_module
from tests.api_helpers import serving_api


async def test_the_oldest_key_is_forgotten_past_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "EXT_KEYS_KEPT", 2)
    body = {"event": "ext.agent.ping", "fields": {}}
    async with serving_api(tmp_path) as api:

        async def post(key: str | None) -> tuple[int, bool]:
            headers = {"Idempotency-Key": key} if key else {}
            answer = await api.call("POST", "/v1/events", json=body, headers=headers)
            return answer.status_code, answer.json()["replayed"]

        assert [await post(k) for k in ("k1", "k2", "k3")] == [(201, False)] * 3
        assert await post("k3") == (200, True)  # remembered
        assert await post("k1") == (201, False)  # forgotten: a new event
        assert [await post(None) for _ in range(2)] == [(201, False)] * 2
