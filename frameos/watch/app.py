"""`frameos watch [URL]`: the trio main of the view (SPEC §10).

Tasks, all in one nursery: the stream (`/ws/events?since=` the last seq seen; on a drop it says
so, keeps the picture, and reconnects with backoff, so nothing is missed or shown twice), the
snapshots (/healthz, /readyz, /v1/vms, /v1/workers at each connect and when an event says a VM
changed), the redraw ticker (at most REDRAW_HZ times a second, only when something changed: the
stream never waits for the screen), the keys, SIGWINCH, and the runs the keys start.
Off a terminal it prints plain lines, one per event, and never draws.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import trio

from frameos.client.api import Api, ClientError, TokenRefused
from frameos.client.discover import Target
from frameos.client.output import Printer, warn
from frameos.envelope import Envelope, decode
from frameos.errors import FrameosError
from frameos.watch import wsread
from frameos.watch.model import STOPPED, Model, Run

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

REDRAW_HZ = 10
RECEIVE_BYTES = 1 << 18
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.2, 5.0
WS_CONNECT_S, WS_CLOSE_S = 5.0, 1.0
HISTORY = 200  # events replayed at start, for the messages pane
REFRESH_S = 5.0  # health, readiness and workers are asked for this often
STALE_S = 0.3  # a VM snapshot an event made stale is asked for after this
LOG_POLL_S = 0.5
LOG_TAIL_BYTES = 16_384
RUN_POLL_S = 1.0


async def head(api: Api) -> int:
    response = await api.send("GET", "/v1/events", params={"after": 0, "limit": 1})
    body = api.parse(response, "GET", "/v1/events")
    if response.status_code == 410:
        return int(body["details"]["head_cursor"])
    if response.status_code != 200:
        raise await api.refusal(response, "GET", "/v1/events")
    return int(body["head_cursor"])


class Dirty(Protocol):
    dirty: bool


async def redraw(
    model: Dirty,
    console: Console,
    measure: bool,
    live: Any,
    picture: Callable[[int, int], RenderableType],
) -> None:
    """Forever: at most REDRAW_HZ draws a second, each only when `model` is dirty (and once a
    second anyway: ages and uptimes move on); `measure`: follow the terminal's size."""
    ticks = 0
    while True:
        ticks += 1
        if ticks % REDRAW_HZ == 0:
            model.dirty = True
        if model.dirty:
            model.dirty = False
            if measure:
                with contextlib.suppress(OSError):
                    console.size = os.get_terminal_size(sys.stdout.fileno())
            width, height = console.size
            live.update(picture(width, height), refresh=True)
        await trio.sleep(1 / REDRAW_HZ)


async def snapshots(api: Api, model: Model, *, everything: bool) -> None:
    """The VMs when an event made them stale, the external workers when an event said they
    changed, and with `everything` those, health and readiness, as the instance says."""
    if everything or model.stale:
        model.snapshot_seq = await head(api)
        _, vms = await api.call("GET", "/v1/vms")
        model.set_vms(vms.get("vms", []))
    if everything or model.health_stale:
        model.health_stale = False  # before asking: a change meanwhile asks again
        _, health = await api.call("GET", "/healthz")
        response = await api.send("GET", "/readyz")
        model.set_health(health, api.parse(response, "GET", "/readyz"))
    if everything or model.workers_stale:
        model.workers_stale = False  # before asking: a change meanwhile asks again
        _, workers = await api.call("GET", "/v1/workers")
        model.set_workers(workers.get("workers", []))


async def stream(
    api: Api,
    cursor: Callable[[], int],
    handle: Callable[[Envelope], None],
    say: Callable[[str], None],
    on_connect: Callable[[], Awaitable[None]],
    jump: Callable[[int], None],
) -> None:
    """Forever: `/ws/events?since=cursor()`, each new event to `handle`; reconnects. A cursor
    the log no longer retains (410) is moved to the oldest it does, by `jump`."""
    headers = [(k.encode(), v.encode()) for k, v in api.target.headers.items()]
    delay = BACKOFF_FIRST_S
    while True:
        why = ""
        try:
            await on_connect()
            url = f"{api.target.ws_url}/ws/events?since={cursor()}"
            async with wsread.connect(
                url,
                headers,
                connect_timeout=WS_CONNECT_S,
                close_timeout=WS_CLOSE_S,
                receive_bytes=RECEIVE_BYTES,  # a burst: many events to a read
            ) as ws:
                delay = BACKOFF_FIRST_S
                say("connected")
                async for batch in ws:  # every event one read brought, with no wakeup each
                    for message in batch:
                        try:
                            envelope = decode(message)
                        except ValueError:
                            continue
                        handle(envelope)
        except wsread.Rejected as exc:
            response = httpx.Response(exc.status_code, content=exc.body)
            if exc.status_code in (401, 403):
                raise await api.refusal(response, "GET", "/ws/events") from None
            if exc.status_code == 410:
                details = api.parse(response, "GET", "/ws/events").get("details", {})
                jump(int(details["oldest_available_cursor"]))
                continue
            why = f"/ws/events refused with HTTP {exc.status_code}"
        except TokenRefused:
            raise  # not transient: retrying would wait for ever on a token that will not do
        except (wsread.WsError, ClientError) as exc:
            why = _why(exc)
        say(f"disconnected ({why}); retrying in {delay:.1f}s")
        await trio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)
        say(f"reconnecting ({why})")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        text = str(exc)
        return text.split(" (", 1)[1].split(")", 1)[0] if " (" in text else "unreachable"
    return str(exc)


async def watch(target: Target) -> int:
    async with Api(target, timeout=5.0) as api:
        if not sys.stdout.isatty() or not sys.stdin.isatty():
            return await plain(api)
        return await interactive(api)


async def plain(api: Api) -> int:
    """Off a terminal: one plain line per event from now on (like `events --follow`)."""
    printer = Printer(json=False)
    last = await head(api)
    said = ""

    def handle(envelope: Envelope) -> None:
        nonlocal last
        if envelope.seq > last:
            last = envelope.seq
            printer(envelope)

    def say(text: str) -> None:
        """Connection changes, on stderr (stdout has the events only)."""
        nonlocal said
        if text == said or text.startswith("reconnecting"):
            return
        if text == "connected":
            text = f"following {api.target.url} from seq {last} (Ctrl-C ends)"
        said = text
        warn(text)

    async def nothing() -> None:
        return None

    def jump(oldest: int) -> None:
        nonlocal last
        warn(f"events after {last} are no longer retained; from {oldest + 1} on")
        last = oldest

    await stream(api, lambda: last, handle, say, nothing, jump)
    return 0  # pragma: no cover  (stream returns only by an exception)


class App:
    """The interactive view; `run()` returns when `q` is pressed."""

    def __init__(self, api: Api, console: Any = None, *, back_on_esc: bool = False) -> None:
        from rich.console import Console

        self.api = api
        self.model = Model(api.target.url)
        # the terminal itself is measured at each draw: rich prefers $LINES/$COLUMNS, which an
        # exported shell variable leaves stale after a resize
        self.measure = console is None
        self.console = console or Console(highlight=False)
        self.nursery: trio.Nursery | None = None
        self.log_scope: trio.CancelScope | None = None
        self.quit = trio.Event()
        self.back_on_esc = back_on_esc  # opened from the fleet view: esc goes back there

    # --- the stream and the snapshots ---------------------------------------------------------

    async def connect(self) -> None:
        await snapshots(self.api, self.model, everything=True)
        if self.model.snapshot_seq < self.model.seq:  # a new log (its state was wiped)
            self.model.seq = self.model.snapshot_seq

    def jump(self, oldest: int) -> None:
        """Events after model.seq are gone from the log: go on from the oldest retained."""
        self.model.seq = oldest

    async def refresh(self) -> None:
        """Snapshots again when an event made them stale, and every REFRESH_S anyway."""
        since = trio.current_time()
        while True:
            await trio.sleep(STALE_S)
            if self.model.connection != "connected":
                continue
            every = trio.current_time() - since >= REFRESH_S
            model = self.model
            if not (model.stale or model.workers_stale or model.health_stale or every):
                continue
            try:
                await snapshots(self.api, self.model, everything=every)
            except FrameosError:
                continue  # the stream says what is wrong
            if every:
                since = trio.current_time()

    # --- drawing ------------------------------------------------------------------------------

    async def draw(self, live: Any) -> None:
        from frameos.watch.view import screen

        await redraw(
            self.model, self.console, self.measure, live, lambda w, h: screen(self.model, w, h)
        )

    async def winch(self) -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                self.model.dirty = True

    # --- keys ---------------------------------------------------------------------------------

    def key(self, key: str) -> None:
        model = self.model
        model.dirty = True
        if model.help:
            model.help = False
            return
        if model.confirm is not None:
            op, vm = model.confirm
            model.confirm = None
            if key in ("y", "Y"):
                self.start(op, vm)
            return
        if model.editing_filter:
            if key == "enter":
                model.editing_filter = False
            elif key == "esc":
                model.editing_filter, model.filter = False, ""
            elif key == "backspace":
                model.filter = model.filter[:-1]
            elif len(key) == 1 and key.isprintable():
                model.filter += key
            return
        names = list(model.vms)
        if key in ("q", "Q"):
            self.quit.set()
        elif key in ("up", "k") and not model.detail:
            model.selected = max(0, model.selected - 1)
        elif key in ("down", "j") and not model.detail:
            model.selected = min(max(0, len(names) - 1), model.selected + 1)
        elif key == "enter" and names:
            self.open_detail()
        elif key == "esc" and self.back_on_esc and not model.detail and not model.filter:
            self.quit.set()
        elif key == "esc":
            self.close_detail()
            model.filter = ""
        elif key == "?":
            model.help = True
        elif key == "/":
            model.editing_filter, model.filter = True, ""
        elif key in ("s", "r", "b") and model.selected_vm is not None:
            row = model.selected_vm
            op = {"r": "restart", "b": "bootstrap"}.get(key) or (
                "start" if row.state in STOPPED else "stop"
            )
            model.confirm = (op, row.name)

    def start(self, op: str, vm: str) -> None:
        assert self.nursery is not None
        self.model.run = Run(op, vm)
        self.nursery.start_soon(self.act, self.model.run)

    async def act(self, run: Run) -> None:
        """POST /v1/runs, then the run until it ends (its events, or GET /v1/runs/{id})."""
        try:
            _, body = await self.api.call(
                "POST",
                "/v1/runs",
                body={"op": run.op, "target": run.vm},
                headers={"Idempotency-Key": str(uuid.uuid4())},
                vm=run.vm,
            )
            run.run_id, run.state = str(body["run_id"]), str(body.get("state", "accepted"))
            self.model.dirty = True
        except FrameosError as exc:
            run.state, run.detail = "failed", str(exc)
            self.model.dirty = True
            return
        while not run.ended:  # its events end it; this finds an end the stream did not see
            await trio.sleep(RUN_POLL_S)
            if run.ended:
                return
            try:
                _, current = await self.api.call("GET", f"/v1/runs/{run.run_id}")
            except FrameosError as exc:
                if isinstance(exc, ClientError):
                    continue  # frameos is away: the stream says so; ask again
                run.state, run.detail = "lost", str(exc)
                self.model.dirty = True
                return
            state = str(current.get("state", ""))
            if state in ("succeeded", "failed", "canceled") and not run.ended:
                run.state = state
                if state != "succeeded":
                    run.detail = str(current.get("reason") or run.detail)
                self.model.dirty = True

    def open_detail(self) -> None:
        vm = self.model.selected_vm
        if vm is None or self.nursery is None:
            return
        self.close_detail()
        self.model.detail = True
        self.model.log.clear()
        self.log_scope = trio.CancelScope()
        self.nursery.start_soon(self.follow_log, vm.name, self.log_scope)

    def close_detail(self) -> None:
        self.model.detail = False
        if self.log_scope is not None:
            self.log_scope.cancel()
            self.log_scope = None

    async def follow_log(self, name: str, scope: trio.CancelScope) -> None:
        """The tail of the VM's output log, then what is written to it, while the detail shows."""
        with scope:
            offset: int | None = None
            partial = ""
            while True:
                try:
                    if offset is None:
                        _, first = await self.api.call(
                            "GET", f"/v1/vms/{name}/log", params={"offset": 0, "limit": 1}, vm=name
                        )
                        offset = max(0, int(first["size"]) - LOG_TAIL_BYTES)
                    _, chunk = await self.api.call(
                        "GET",
                        f"/v1/vms/{name}/log",
                        params={"offset": offset, "limit": 65_536},
                        vm=name,
                    )
                except FrameosError as exc:
                    self.model.log.append(f"(output log: {exc})")
                    self.model.dirty = True
                    await trio.sleep(LOG_POLL_S * 4)
                    continue
                if chunk.get("rotated"):
                    partial = ""
                text = partial + str(chunk.get("data", ""))
                *lines, partial = text.split("\n")
                if lines:
                    self.model.log.extend(lines)
                    self.model.dirty = True
                more = int(chunk["next_offset"]) < int(chunk["size"])
                offset = int(chunk["next_offset"])
                if not more:
                    await trio.sleep(LOG_POLL_S)

    async def keys(self, keys: Any) -> None:
        async for key in keys:
            self.key(key)

    # --- main ---------------------------------------------------------------------------------

    async def run(self, keys: Any) -> int:
        from rich.live import Live

        model = self.model
        try:
            last = await head(self.api)
        except TokenRefused:
            raise  # before the screen is taken: the one line, exit 2, as off a terminal
        except ClientError:
            last = 0
        model.seq = max(0, last - HISTORY)
        with Live(console=self.console, auto_refresh=False, screen=True, transient=True) as live:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(
                    stream,
                    self.api,
                    lambda: model.seq,
                    model.apply,
                    model.set_connection,
                    self.connect,
                    self.jump,
                )
                nursery.start_soon(self.refresh)
                nursery.start_soon(self.draw, live)
                nursery.start_soon(self.winch)
                nursery.start_soon(self.keys, keys)
                await self.quit.wait()
                nursery.cancel_scope.cancel()
        return 0


async def interactive(api: Api) -> int:
    from frameos.watch.keys import raw_keys

    with raw_keys() as keys:
        return await App(api).run(keys)
