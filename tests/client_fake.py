"""A small stand-in for a running frameos that speaks the SPEC §7.3 shapes, for the client's
tests: quart-trio on hypercorn on a real socket, in a thread of its own, so the tests call the
real `frameos.cli.main([...])` (which runs its own trio loop).

It holds a list of envelopes (encoded with frameos.envelope, so the bytes are the real ones),
serves them from `GET /v1/events` and `/ws/events?since=`, and plays runs: `POST /v1/runs`
publishes command.accepted, then the events of `scripts[(op, target)]` (default: one message
and command.completed), each with the run's id.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request, websocket
from quart_trio import QuartTrio

from frameos import events as ev
from frameos.envelope import Envelope, encode

TOKEN = "s3cret-full"
READ_TOKEN = "s3cret-read"
SCOPES = {TOKEN: {"read", "control"}, READ_TOKEN: {"read"}}

Script = Callable[[str, str | None], list[ev.Event]]


def completes(run_id: str, target: str | None) -> list[ev.Event]:
    return [
        ev.Message(text=f"working on {target}", run_id=run_id),
        ev.CommandCompleted(run_id=run_id, duration_ms=3),
    ]


def fails(run_id: str, target: str | None) -> list[ev.Event]:
    return [ev.CommandFailed(run_id=run_id, error=f"{target}: launch failed: no such file")]


def cancels(run_id: str, target: str | None) -> list[ev.Event]:
    return [ev.CommandCanceled(run_id=run_id, reason="a stop won")]


@dataclass
class FakeFrameos:
    vms: dict[str, bytes] = field(default_factory=lambda: {"alpha": b"", "beta": b"", "gamma": b""})
    scripts: dict[tuple[str, str | None], Script] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    busy: dict[str, dict[str, Any]] = field(default_factory=dict)  # target → run in the way
    ws_silent: bool = False  # accept websockets, send them nothing (the client must poll)
    ws_drop_after: int | None = None  # close each websocket after this many frames
    ws_connections: int = 0
    reads_closed: bool = False  # /v1/events and /ws/events want a token (a non-loopback bind)
    not_accepting: bool = False  # POST /v1/runs answers 503, as while frameos stops
    ws_reject: int | None = None  # refuse websockets with this status
    ws_admitted: threading.Event = field(default_factory=threading.Event)
    ws_since_ahead: bool = False  # refuse a cursor ahead of the head (400), as frameos does
    hold_runs: bool = False  # runs stay running until `finish_held`
    release_per_connection: bool = False  # each new websocket publishes one held event
    held: list[tuple[str, list[ev.Event]]] = field(default_factory=list)
    url: str = ""
    token: trio.lowlevel.TrioToken | None = None
    _changed: trio.Event = field(default_factory=trio.Event)
    _stop: trio.Event = field(default_factory=trio.Event)

    # --- the state -----------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.envelopes[-1].seq if self.envelopes else 0

    def publish(self, event: ev.Event) -> Envelope:
        envelope = encode(event, self.head + 1, time.time())
        self.envelopes.append(envelope)
        if isinstance(event, ev.CommandCompleted | ev.CommandFailed | ev.CommandCanceled):
            run = self.runs[event.run_id]
            run["state"] = {
                ev.CommandCompleted: "succeeded",
                ev.CommandFailed: "failed",
                ev.CommandCanceled: "canceled",
            }[type(event)]
        self._changed.set()
        self._changed = trio.Event()
        return envelope

    def finish_held(self) -> None:
        for _run_id, events in self.held:
            for event in events:
                self.publish(event)
        self.held.clear()

    # --- the app -------------------------------------------------------------------------

    def app(self) -> QuartTrio:
        app = QuartTrio("fake-frameos")

        def err(status: int, code: str, message: str, **details: Any) -> Response:
            body = {"error": code, "message": message, "details": details}
            return Response(orjson.dumps(body), status=status, content_type="application/json")

        def ok(body: Any, status: int = 200) -> Response:
            return Response(orjson.dumps(body), status=status, content_type="application/json")

        def denied(scope: str, header: str | None = None) -> Response | None:
            header = request.headers.get("Authorization", "") if header is None else header
            if not header:
                return err(401, "missing_authorization", "send Authorization: Bearer TOKEN")
            token = header.removeprefix("Bearer ")
            if token not in SCOPES:
                return err(401, "invalid_token", "the token is not valid")
            if scope not in SCOPES[token]:
                return err(403, "insufficient_scope", f"needs {scope}", scope=scope)
            return None

        @app.before_request
        async def _note() -> None:
            self.requests.append(
                (request.method, request.path, {k.lower(): v for k, v in request.headers.items()})
            )

        @app.get("/v1/events")
        async def events() -> Response:
            if self.reads_closed and (refused := denied("read")) is not None:
                return refused
            after = int(request.args.get("after", 0))
            limit = int(request.args.get("limit", 100))
            oldest = self.envelopes[0].seq if self.envelopes else None
            if oldest is not None and after + 1 < oldest:
                return err(
                    410,
                    "stale_cursor",
                    "too old",
                    requested_cursor=after,
                    oldest_available_cursor=oldest - 1,
                    head_cursor=self.head,
                )
            if self.ws_since_ahead and after > self.head:
                return err(
                    400,
                    "invalid_cursor",
                    f"after={after} is ahead of the newest event {self.head}",
                    parameter="after",
                    requested_cursor=after,
                    head_cursor=self.head,
                )
            page = [e for e in self.envelopes if e.seq > after][:limit]
            body = (
                b'{"events":[' + b",".join(e.json for e in page) + b'],"next_cursor":%d,'
                b'"head_cursor":%d,"oldest_available_cursor":%d,"replay_complete":%s}'
                % (
                    page[-1].seq if page else after,
                    self.head,
                    (oldest or 1) - 1,
                    b"true" if not page or page[-1].seq >= self.head else b"false",
                )
            )
            return Response(body, content_type="application/json")

        @app.websocket("/ws/events")
        async def ws() -> Response | None:
            self.ws_connections += 1
            if self.reads_closed:
                refused = denied("read", websocket.headers.get("Authorization", ""))
                if refused is not None:
                    return refused
            if self.ws_reject is not None:
                return err(self.ws_reject, "too_many_clients", "over websocket.max_clients")
            if self.release_per_connection and self.held:
                _, events = self.held[0]
                self.publish(events.pop(0))
                if not events:
                    self.held.pop(0)
            cursor = int(websocket.args.get("since", self.head))
            if self.ws_since_ahead and cursor > self.head:
                return err(400, "invalid_cursor", f"since={cursor} is ahead of {self.head}")
            self.ws_admitted.set()
            await websocket.accept()
            sent = 0
            while True:
                changed = self._changed
                for envelope in [e for e in self.envelopes if e.seq > cursor]:
                    if self.ws_silent:
                        break
                    if self.ws_drop_after is not None and sent >= self.ws_drop_after:
                        await websocket.close(1013, "fell behind")
                        return
                    await websocket.send(envelope.json.decode())
                    cursor, sent = envelope.seq, sent + 1
                await changed.wait()

        @app.post("/v1/runs")
        async def create_run() -> Response:
            if (refused := denied("control")) is not None:
                return refused
            body = orjson.loads(await request.get_data())
            op, target = body["op"], body.get("target")
            if target is not None and target not in self.vms:  # names the known ones
                return err(404, "unknown_vm", f"no VM {target!r}", vm=target, known=list(self.vms))
            if self.not_accepting:
                return err(503, "not_accepting", "frameos is stopping: no new runs")
            if target in self.busy:
                return err(409, "conflict", "a run is in the way", run=self.busy[target])
            run_id = uuid.uuid4().hex[:12]
            now = time.time()
            run = {
                "run_id": run_id,
                "op": op,
                "target": target,
                "state": "running",
                "reason": None,
                "created_at": now,
                "updated_at": now,
                "idempotency_key": request.headers.get("Idempotency-Key"),
            }
            self.runs[run_id] = run
            self.publish(
                ev.CommandAccepted(
                    run_id=run_id, op=op, target=target, idempotency_key=run["idempotency_key"]
                )
            )
            script = self.scripts.get((op, target), completes)
            if self.hold_runs:
                self.held.append((run_id, script(run_id, target)))
            else:
                for event in script(run_id, target):
                    self.publish(event)
            return ok(run, 201)

        @app.get("/v1/runs/<run_id>")
        async def get_run(run_id: str) -> Response:
            if (refused := denied("read")) is not None:
                return refused
            if run_id not in self.runs:
                return err(404, "unknown_run", f"no run {run_id}")
            return ok(self.runs[run_id])

        @app.get("/v1/vms")
        async def vms() -> Response:
            return ok({"vms": [{"name": name, "state": "running"} for name in self.vms]})

        @app.get("/v1/vms/<name>/log")
        async def log(name: str) -> Response:
            if (refused := denied("read")) is not None:
                return refused
            if name not in self.vms:
                return err(404, "unknown_vm", f"no VM {name!r}", vm=name)
            data = self.vms[name]
            offset = int(request.args.get("offset", 0))
            limit = int(request.args.get("limit", 65536))
            chunk = data[offset : offset + limit]
            body = {
                "vm": name,
                "offset": offset,
                "next_offset": offset + len(chunk),
                "size": len(data),
                "rotated": False,
                "data": chunk.decode("utf-8", "replace"),
            }
            return ok(body)

        return app

    async def serve(self, ready: threading.Event) -> None:
        self.token = trio.lowlevel.current_trio_token()
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    self.app(),
                    config,
                    shutdown_trigger=self._stop.wait,
                    task_status=task_status,
                )
            )
            self.url = binds[0]
            ready.set()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the fake's own trio thread."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)


@contextmanager
def running_fake(fake: FakeFrameos | None = None) -> Iterator[FakeFrameos]:
    fake = fake or FakeFrameos()
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            trio.run(fake.serve, ready)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="fake-frameos", daemon=True)
    thread.start()
    assert ready.wait(10), "the fake frameos did not start"
    assert not failure, failure
    try:
        yield fake
    finally:
        fake.call(fake._stop.set)
        thread.join(10)
        assert not thread.is_alive(), "the fake frameos did not stop"
