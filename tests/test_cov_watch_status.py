"""`frameos status` (frameos/watch/status.py) in-process: on a terminal (a rich table), the
durations and last exits it shows, and an instance whose /readyz answers neither 200 nor 503,
against a handler standing in for frameos (real httpx requests through httpx.MockTransport)."""

from __future__ import annotations

import re

import httpx
import pytest

from frameos.client.api import Api, ClientError
from frameos.client.discover import Target
from frameos.watch import status as status_mod
from frameos.watch.status import duration, fetch, rows

URL = "http://127.0.0.1:9"
TARGET = Target(URL, "tok", "--token-file t", (), None, None)


def answering(ready: httpx.Response) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(
                200, json={"status": "ok", "version": "9.9", "uptime_seconds": 7_265}
            )
        if request.url.path == "/readyz":
            return ready
        return httpx.Response(
            200,
            json={
                "vms": [
                    {
                        "name": "alpha",
                        "state": "running",
                        "pid": 41,
                        "uptime_s": 3_725,
                        "restarts": 2,
                        "last_exit": {"exit_code": None, "signal": "SIGKILL"},
                        "bootstrap": {"status": "ok"},
                    },
                    {
                        "name": "beta",
                        "state": "gave_up",
                        "pid": None,
                        "restarts": 5,
                        "last_exit": {"exit_code": 3, "signal": None},
                        "bootstrap": None,
                    },
                ]
            },
        )

    return httpx.MockTransport(handler)


def api_with(transport: httpx.MockTransport) -> Api:
    api = Api(TARGET)
    api._client = httpx.AsyncClient(base_url=URL, transport=transport)
    return api


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(-3, "0s"), (59.9, "59s"), (60, "1m00s"), (3_599, "59m59s"), (3_600, "1h00m"),
     (86_399, "23h59m"), (86_400, "1d00h"), (3 * 86_400 + 5 * 3_600 + 59, "3d05h")],
)  # fmt: skip
def test_durations_in_the_two_largest_units(seconds: float, said: str) -> None:
    assert duration(seconds) == said


async def test_a_row_per_vm_with_its_signal_or_exit_code() -> None:
    async with api_with(answering(httpx.Response(200, json={"status": "ready"}))) as api:
        data = await fetch(api)
    assert rows(data) == [
        ("alpha", "running", "41", "1h02m", "2", "SIGKILL", "ok"),
        ("beta", "gave_up", "-", "-", "5", "exit 3", "-"),
    ]


async def test_a_readyz_that_is_neither_ready_nor_not_ready_is_an_error_not_a_table() -> None:
    not_frameos = httpx.Response(404, text="<html>no such page</html>")
    async with api_with(answering(not_frameos)) as api:
        with pytest.raises(ClientError, match=r"answered GET /readyz with HTTP 404 and no frameos"):
            await fetch(api)


async def test_on_a_terminal_a_table_titled_with_the_summary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    not_ready = httpx.Response(
        503, json={"status": "not_ready", "reasons": ["beta: gave up after 5 restarts"]}
    )
    monkeypatch.setattr(status_mod, "Api", lambda target: api_with(answering(not_ready)))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    assert await status_mod.status(TARGET, json=False) == 1  # not ready
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # the colours
    lines = [line.rstrip() for line in out.splitlines() if line.strip()]
    title = " ".join(
        line.strip() for line in lines[: lines.index(next(x for x in lines if "┏" in x))]
    )
    assert title == (
        f"frameos 9.9 at {URL}: ok, NOT READY: beta: gave up after 5 restarts, up 2h01m"
    )  # the title may wrap to the table's width
    header = next(line for line in lines if "LAST EXIT" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == list(status_mod.HEADERS)
    alpha = next(line for line in lines if "alpha" in line)
    cells = [cell.strip() for cell in alpha.split("│")[1:-1]]
    assert cells == ["alpha", "running", "41", "1h02m", "2", "SIGKILL", "ok"]
