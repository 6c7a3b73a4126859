"""POST /v1/events while the event log cannot be written (frameos/server/api.py, the disk full):
the producer gets a 503 that says the event is accepted, names the fault and says not to
resend; once the disk takes writes again the event is in the log, once."""

from __future__ import annotations

import errno
from pathlib import Path

import orjson
import pytest

from frameos.server import api as api_module
from tests.api_helpers import WRITER, serving_api
from tests.conftest import until


async def test_an_event_the_log_cannot_take_yet_is_503_and_written_later_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "WRITE_WAIT_S", 0.5)
    async with serving_api(tmp_path) as served:
        log = served.bus.log
        append = log.append

        def full(data: bytes, *, rotate: bool = True) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(log, "append", full)
        body = {"event": "ext.renderer.frame", "fields": {"n": 7}}
        posted = await served.call("POST", "/v1/events", token=WRITER, json=body)
        assert posted.status_code == 503
        answer = posted.json()
        seq = answer["details"]["seq"]
        assert answer["error"] == "log_unavailable"
        assert answer["message"] == (
            f"event {seq} is accepted but not yet in the log (event log write failed: No space "
            "left on device; the disk is full: free space on it); it will be written, do not resend"
        )
        monkeypatch.setattr(log, "append", append)  # the disk has room again
        await until(lambda: served.bus.written_seq >= seq)
    lines = [orjson.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert [e["fields"] for e in lines if e["event"] == "ext.renderer.frame"] == [{"n": 7}]
