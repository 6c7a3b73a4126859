"""`frameos logs` (frameos/client/logs.py) against answers a plain file cannot give: a rotated
output file while following, a window that needs growing, and a body that is not frameos's;
through real httpx requests to a handler standing in for the instance."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from frameos.client import logs as logs_module
from frameos.client.api import Api, ClientError
from frameos.client.discover import Target

URL = "http://127.0.0.1:9"
TARGET = Target(URL, None, None, (), None, None)


def serve_answers(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[dict[str, int]]:
    """Make `logs` talk to `answer(offset, limit) -> body`; returns the queries it made."""
    asked: list[dict[str, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = {k: int(v) for k, v in request.url.params.items()}
        asked.append(query)
        return httpx.Response(200, json=answer(query["offset"], query["limit"]))

    class MockedApi(Api):
        def __init__(self, target: Target) -> None:
            super().__init__(target)
            self._client = httpx.AsyncClient(base_url=URL, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(logs_module, "Api", MockedApi)
    return asked


async def test_a_rotation_while_following_is_said_and_the_new_file_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs_module, "POLL_S", 0)
    old = b"old 1\nold 2\n"
    steps = iter(
        [
            {"data": "new 1\n", "next_offset": 6, "size": 6, "rotated": True},
            {"data": "", "next_offset": 6, "size": 6},  # nothing new: poll again
            {"unexpected": True},  # then something that is not frameos: the follow ends
        ]
    )

    following = False

    def answer(offset: int, limit: int) -> dict[str, Any]:
        nonlocal following
        following = following or offset == len(old)  # the tail is read: the follow begins
        if following:
            return next(steps)
        data = old[offset : offset + limit].decode()
        return {"data": data, "next_offset": offset + len(data), "size": len(old)}

    serve_answers(monkeypatch, answer)
    with pytest.raises(ClientError, match="answered without next_offset: not frameos"):
        await logs_module.logs(TARGET, "alpha", lines=1, follow=True)
    out, err = capsys.readouterr()
    assert out == "old 2\nnew 1\n"
    assert "alpha's output file was rotated; reading the new one from its start" in err


async def test_the_last_lines_of_a_file_with_long_lines_grow_the_window(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs_module, "CHUNK", 16)
    content = b"first\n" + b"x" * 100 + b"\nsecond to last\nlast\n"

    def answer(offset: int, limit: int) -> dict[str, Any]:
        data = content[offset : offset + limit].decode()
        return {"data": data, "next_offset": offset + len(data), "size": len(content)}

    asked = serve_answers(monkeypatch, answer)
    assert await logs_module.logs(TARGET, "alpha", lines=3, follow=False) == 0
    assert capsys.readouterr().out == "x" * 100 + "\nsecond to last\nlast\n"
    starts = sorted({q["offset"] for q in asked if q["limit"] > 1})
    assert starts[0] == 0  # the window grew (16, 64, 256 bytes) until it held 3 whole lines


async def test_no_lines_asked_prints_nothing_and_a_stuck_offset_ends_the_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_answers(monkeypatch, lambda offset, limit: {"data": "", "next_offset": 0, "size": 50})
    assert await logs_module.logs(TARGET, "alpha", lines=0, follow=False) == 0
    assert capsys.readouterr().out == ""
