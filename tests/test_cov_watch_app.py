"""The watch view's trio side (frameos/watch/app.py) against an instance that answers oddly:
its HTTP answers come from a handler standing in for frameos (a real httpx request through
httpx.MockTransport), and its websocket from a scripted `wsread.connect` (refusals, a stream that
ends, a message that is not an envelope), so each path is shown in-process, under
autojump_clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.client.api import Api, TokenRefused
from frameos.client.discover import Target
from frameos.envelope import Envelope, encode
from frameos.watch import app as watch_app
from frameos.watch import wsread
from frameos.watch.app import App, head, plain, snapshots, stream
from frameos.watch.model import Model, Run

URL = "http://127.0.0.1:9"
Handler = Callable[[httpx.Request], httpx.Response]


def api_answering(handler: Handler) -> Api:
    api = Api(Target(URL, "tok", "--token-file t", ("--token-file t",), None, None))
    api._client = httpx.AsyncClient(base_url=URL, transport=httpx.MockTransport(handler))
    return api


def error(status: int, code: str, message: str = "", **details: object) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message, "details": details})


def envelope(seq: int, text: str) -> Envelope:
    return encode(ev.Message(text=text), seq, time.time(), "info")


class Batches:
    """One accepted connection: these batches, then the connection ends."""

    def __init__(self, *batches: list[bytes]) -> None:
        self.batches = list(batches)

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        if not self.batches:
            raise wsread.WsError("the connection closed")
        return self.batches.pop(0)


class Websocket:
    """`wsread.connect` scripted: each connection takes the next play, a refusal (raised) or
    Batches; the URLs asked for are kept."""

    def __init__(self, *plays: BaseException | Batches) -> None:
        self.plays = list(plays)
        self.urls: list[str] = []

    @asynccontextmanager
    async def connect(self, url: str, headers: Any, **_: Any) -> AsyncIterator[Batches]:
        self.urls.append(url)
        await trio.lowlevel.checkpoint()
        play = self.plays.pop(0)
        if isinstance(play, BaseException):
            raise play
        yield play


def rejected(status: int, code: str, **details: object) -> wsread.Rejected:
    body = {"error": code, "message": "", "details": details}
    return wsread.Rejected(status, orjson.dumps(body))


def events_head(cursor: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events"
        return httpx.Response(200, json={"events": [], "head_cursor": cursor})

    return handler


# --- the first cursor ---------------------------------------------------------------------------


async def test_the_head_of_a_log_that_no_longer_keeps_seq_0_comes_from_the_410() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(410, "cursor_expired", head_cursor=1234, oldest_available_cursor=900)

    async with api_answering(handler) as api:
        assert await head(api) == 1234


# --- off a terminal: plain lines ------------------------------------------------------------------


async def test_plain_prints_each_new_event_once_and_says_every_connection_change(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.testing.MockClock,
) -> None:
    socket = Websocket(
        Batches(
            [envelope(5, "old").line, b"not an envelope", envelope(6, "first").line],
            [envelope(6, "first").line],  # again (a resend): not printed twice
        ),
        rejected(410, "cursor_expired", oldest_available_cursor=10),
        Batches([envelope(11, "after the gap").line]),
        rejected(502, "bad_gateway"),
        rejected(401, "bad_token"),
    )
    monkeypatch.setattr(wsread, "connect", socket.connect)
    async with api_answering(events_head(5)) as api:
        with pytest.raises(TokenRefused, match=r"refused the token from --token-file t \(401"):
            await plain(api)
    out, err = capsys.readouterr()
    printed = [line for line in out.splitlines() if line.strip()]
    assert len(printed) == 2
    assert "first" in printed[0] and "after the gap" in printed[1]
    assert socket.urls == [
        "ws://127.0.0.1:9/ws/events?since=5",
        "ws://127.0.0.1:9/ws/events?since=6",
        "ws://127.0.0.1:9/ws/events?since=10",  # moved on to the oldest retained
        "ws://127.0.0.1:9/ws/events?since=11",
        "ws://127.0.0.1:9/ws/events?since=11",
    ]
    assert err.splitlines() == [
        f"frameos: following {URL} from seq 5 (Ctrl-C ends)",
        "frameos: disconnected (the connection closed); retrying in 0.2s",
        "frameos: events after 6 are no longer retained; from 11 on",
        f"frameos: following {URL} from seq 10 (Ctrl-C ends)",
        "frameos: disconnected (the connection closed); retrying in 0.2s",
        "frameos: disconnected (/ws/events refused with HTTP 502); retrying in 0.4s",
    ]  # "reconnecting" is not said off a terminal


async def test_plain_says_a_repeated_line_once(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the backoff is at its maximum after a few failures: the same line again is not repeated
    refusals = [rejected(503, "not_accepting") for _ in range(8)]
    socket = Websocket(*refusals, rejected(403, "forbidden", scope="read"))
    monkeypatch.setattr(wsread, "connect", socket.connect)
    async with api_answering(events_head(0)) as api:
        with pytest.raises(TokenRefused, match="lacks the 'read' scope"):
            await plain(api)
    lines = capsys.readouterr().err.splitlines()
    assert (
        lines.count("frameos: disconnected (/ws/events refused with HTTP 503); retrying in 5.0s")
        == 1
    )
    assert len(lines) == len(set(lines)) == 6  # 0.2, 0.4, 0.8, 1.6, 3.2, 5.0


# --- the stream and the snapshots of the interactive view -----------------------------------------


async def test_a_token_refused_at_the_websocket_ends_the_view_with_the_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    socket = Websocket(rejected(401, "missing_authorization"))
    monkeypatch.setattr(wsread, "connect", socket.connect)
    said: list[str] = []

    async def nothing() -> None:
        return None

    async with api_answering(events_head(0)) as api:
        with pytest.raises(TokenRefused, match="wants an API token"):
            await stream(api, lambda: 0, lambda e: None, said.append, nothing, lambda c: None)
    assert said == []  # no "retrying": waiting would be for ever


async def test_only_what_an_event_made_stale_is_asked_for_again() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={"workers": [{"name": "w1", "status": "ok"}]})

    model = Model(URL)
    model.stale = model.health_stale = False
    model.workers_stale = True
    async with api_answering(handler) as api:
        await snapshots(api, model, everything=False)
    assert asked == ["/v1/workers"]
    assert model.workers == [{"name": "w1", "status": "ok"}] and not model.workers_stale


def instance(head_cursor: int, vms: list[dict[str, Any]]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/events":
            return httpx.Response(200, json={"events": [], "head_cursor": head_cursor})
        if path == "/v1/vms":
            return httpx.Response(200, json={"vms": vms})
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "version": "9.9"})
        if path == "/readyz":
            return httpx.Response(200, json={"status": "ready", "reasons": []})
        if path == "/v1/workers":
            return httpx.Response(200, json={"workers": []})
        return error(404, "not_found")

    return handler


async def test_a_new_log_behind_the_view_takes_the_view_back_to_its_head() -> None:
    # the instance's state was wiped: its head is now behind the last seq the view saw
    async with api_answering(instance(3, [])) as api:
        app = App(api, console=object())
        app.model.seq = 500
        await app.connect()
        assert app.model.snapshot_seq == 3 and app.model.seq == 3
        app.model.seq = 2  # and a log ahead of the view keeps the view's place
        await app.connect()
        assert app.model.seq == 2


async def test_refresh_asks_only_while_connected_and_goes_on_after_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[tuple[float, str]] = []
    failing = {"on": True}
    answer = instance(7, [{"name": "alpha", "state": "running", "pid": 5}])

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append((trio.current_time(), request.url.path))
        if failing["on"]:
            return error(503, "not_accepting", "stopping")
        return answer(request)

    async with api_answering(handler) as api:
        app = App(api, console=object())
        app.model.stale = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.refresh)
            await trio.sleep(watch_app.REFRESH_S * 2)
            assert asked == []  # not connected: the stream says so, nothing is asked
            app.model.set_connection("connected")
            await trio.sleep(watch_app.STALE_S * 1.5)
            assert [path for _, path in asked] == ["/v1/events"]  # refused: tried again later
            failing["on"] = False
            await trio.sleep(watch_app.STALE_S * 2)
            assert "alpha" in app.model.vms and not app.model.stale
            asked.clear()
            await trio.sleep(watch_app.REFRESH_S + watch_app.STALE_S)
            nursery.cancel_scope.cancel()
    paths = [path for _, path in asked]
    # nothing stale: only the periodic refresh of everything, once per REFRESH_S
    assert sorted(paths) == ["/healthz", "/readyz", "/v1/events", "/v1/vms", "/v1/workers"]


# --- keys ---------------------------------------------------------------------------------------


def app_of(vms: list[dict[str, Any]]) -> App:
    app = App(api_answering(instance(0, vms)), console=object())
    app.model.set_vms(vms)
    return app


def test_keys_while_typing_a_filter_and_on_an_empty_list() -> None:
    app = app_of([{"name": "alpha"}, {"name": "beta"}])
    model = app.model
    app.key("/")
    for key in ("a", "up", "l"):  # a key that is not a character is not typed
        app.key(key)
    assert model.filter == "al" and model.editing_filter
    app.key("esc")  # esc while typing drops the filter
    assert (model.filter, model.editing_filter) == ("", False)
    app.key("j")
    app.key("up")
    assert model.selected == 0
    app.key("down")
    app.key("k")
    assert model.selected == 0

    empty = app_of([])
    empty.key("s")  # no VM selected: nothing to ask about
    empty.key("enter")
    assert empty.model.confirm is None and not empty.model.detail


# --- the run a key started ----------------------------------------------------------------------


async def run_against(handler: Handler) -> Run:
    async with api_answering(handler) as api:
        app = App(api, console=object())
        run = Run("restart", "alpha")
        app.model.run = run
        await app.act(run)
        return run


async def test_a_refused_run_says_why() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(422, "invalid", "op restart needs a running VM")

    run = await run_against(handler)
    assert run.state == "failed"
    assert run.detail == ("POST /v1/runs refused (HTTP 422 invalid): op restart needs a running VM")


def runs(*answers: httpx.Response) -> tuple[Handler, list[str]]:
    """POST /v1/runs accepted, then each GET /v1/runs/ID answered in turn."""
    asked: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            assert orjson.loads(request.content) == {"op": "restart", "target": "alpha"}
            assert request.headers["Idempotency-Key"]
            return httpx.Response(202, json={"run_id": "r1", "state": "accepted"})
        return queue.pop(0)

    return handler, asked


async def test_a_run_the_stream_missed_the_end_of_is_found_by_asking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler, asked = runs(
        error(503, "not_accepting", "stopping"),  # frameos is away: asked again
        httpx.Response(200, json={"run_id": "r1", "state": "running"}),
        httpx.Response(200, json={"run_id": "r1", "state": "failed", "reason": "exit 3"}),
    )
    run = await run_against(handler)
    assert (run.run_id, run.state, run.detail) == ("r1", "failed", "exit 3")
    assert asked == ["POST /v1/runs"] + ["GET /v1/runs/r1"] * 3


async def test_a_run_that_succeeded_has_no_detail(autojump_clock: trio.testing.MockClock) -> None:
    # a cancel that came too late leaves its reason on the run, which still succeeded
    answer = {"run_id": "r1", "state": "succeeded", "reason": "operator"}
    handler, _ = runs(httpx.Response(200, json=answer))
    run = await run_against(handler)
    assert (run.state, run.detail) == ("succeeded", "")


async def test_a_run_the_instance_forgot_is_lost_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler, _ = runs(error(404, "unknown_run", "no run r1"))
    run = await run_against(handler)
    assert run.state == "lost"
    assert run.detail == "GET /v1/runs/r1 refused (HTTP 404 unknown_run): no run r1"


async def test_a_run_the_stream_ended_meanwhile_is_not_asked_about(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler, asked = runs()
    async with api_answering(handler) as api:
        app = App(api, console=object())
        run = Run("restart", "alpha")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.act, run)
            await trio.sleep(watch_app.RUN_POLL_S / 2)
            run.state = "succeeded"  # as the command.completed event would
        assert asked == ["POST /v1/runs"]


# --- the detail screen's output log -------------------------------------------------------------


async def test_the_output_log_tail_then_more_then_a_rotation_then_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    size = 20_000
    chunks = [
        {"data": "x" * 10 + "\nfirst\nsecond\npart", "next_offset": size - 100, "size": size},
        {"data": "ial\n", "next_offset": size, "size": size},  # ends the partial line
        {"data": "cut", "next_offset": size + 3, "size": size + 3},  # no line yet: waits
        {"data": "new file\n", "next_offset": 9, "size": 9, "rotated": True},
    ]
    offsets: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/vms/alpha/log"
        params = request.url.params
        if params["limit"] == "1":
            return httpx.Response(200, json={"data": "", "next_offset": 1, "size": size})
        offsets.append(int(params["offset"]))
        if not chunks:
            return error(404, "unknown_vm", known=["beta"])
        return httpx.Response(200, json=chunks.pop(0))

    async with api_answering(handler) as api:
        app = App(api, console=object())
        app.model.set_vms([{"name": "alpha", "state": "running"}])
        async with trio.open_nursery() as nursery:
            app.nursery = nursery
            app.open_detail()
            assert app.model.detail
            while not any(line.startswith("(output log") for line in app.model.log):
                await trio.sleep(0.1)
            app.close_detail()
    assert offsets[0] == size - watch_app.LOG_TAIL_BYTES  # the tail, not the whole file
    assert offsets[1:] == [size - 100, size, size + 3, 9]
    assert list(app.model.log) == [
        "x" * 10,
        "first",
        "second",
        "partial",
        "new file",  # not "cutnew file": a rotation drops the old file's partial line
        "(output log: unknown VM 'alpha': http://127.0.0.1:9 has these VMs: beta)",
    ]
    assert app.log_scope is None and not app.model.detail


def test_no_detail_without_a_running_view() -> None:
    app = app_of([{"name": "alpha"}])
    app.open_detail()  # no nursery yet (the view has not started): nothing to follow the log in
    assert not app.model.detail and app.log_scope is None
