"""`frameos watch --from nats://…`: one row per host, from the hosts' forwarded events (SPEC §12).

    follower thread (asyncio, nats-py: forward/follow.py) ──apply──► FleetModel ◄──draw── trio

The broker is read with the code behind `events --from` (every host's subject, from what the
stream holds, then what comes), on an asyncio loop of its own in one thread: nats-py runs only
on asyncio. Each message moves the model on under its lock (`apply`, cheap: only the events that
move a row are decoded); the trio side draws the model at most REDRAW_HZ times a second and
reads the keys. `enter` opens the selected host's own view (the normal `frameos watch URL`,
app.py) when its URL is known: the `server` of its forwarded `runtime:ready` (or of a
heartbeat: a host already running when the stream's retention began); `esc` or `q` there
comes back here, `q` here quits.

What a row says is what the events since the host's last `runtime:start` say: VMs running /
VMs its events have named (a VM no event named since, e.g. never started, is not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from frameos import events as ev
from frameos.envelope import Envelope
from frameos.errors import FrameosError

REDRAW_HZ = 10
KEY_QUEUE = 64  # keys waiting for a screen to read them; more are dropped (a stuck screen)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.2, 5.0
STOP_S = 5.0  # at the end: how long the follower thread gets to close its connection

# the events that move a row on (decoded; the rest only counts as the host's last event)
ROW_EVENTS = frozenset(
    cls.NAME
    for cls in (
        ev.RuntimeStart, ev.RuntimeReady, ev.RuntimeStopping, ev.RuntimeStop, ev.RuntimeReload,
        ev.VmOverlayPrepared, ev.VmLaunched, ev.VmExited, ev.VmRestartScheduled, ev.VmGaveUp,
        ev.VmShutdownRequested, ev.VmShutdownComplete, ev.BootstrapStarted,
    )
)  # fmt: skip
VM_STATE: dict[type[ev.Event], str] = {
    ev.VmLaunched: "running",
    ev.VmExited: "exited",
    ev.VmRestartScheduled: "backoff",
    ev.VmGaveUp: "gave_up",
    ev.VmShutdownRequested: "stopping",
    ev.VmShutdownComplete: "stopped",
}


@dataclass
class Host:
    """One row: a host as its forwarded events tell it."""

    name: str
    url: str | None = None  # its HTTP surface, from runtime:ready (or a heartbeat)
    ready: bool | None = None  # None: no runtime:* event seen yet
    state: str = "?"  # running, stopping, stopped
    vms: dict[str, str] = field(default_factory=dict)  # VM → its state, as events tell it
    seq: int = 0  # the last seq applied
    seen: float = 0.0  # the time of its last event (any, a heartbeat too)
    last: Envelope | None = None  # its last event that is not debug

    @property
    def running(self) -> int:
        return sum(1 for state in self.vms.values() if state == "running")


class FleetModel:
    """Every host's row; `apply` (the follower thread) and the screen (trio) share `lock`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.hosts: dict[str, Host] = {}
        self.connection = "connecting"
        self.selected = 0
        self.note = ""  # one line for the footer (why a host view cannot open)
        self.dirty = True

    def set_connection(self, text: str) -> None:
        with self.lock:
            if text != self.connection:
                self.connection, self.dirty = text, True

    def apply(self, host: str, envelope: Envelope) -> None:
        """Move `host`'s row on by one event (one seen before is ignored)."""
        with self.lock:
            row = self.hosts.get(host)
            if row is None:
                row = self.hosts[host] = Host(host)
                self.hosts = dict(sorted(self.hosts.items()))
            if envelope.seq <= row.seq:
                return
            row.seq, row.seen = envelope.seq, envelope.timestamp
            self.dirty = True
            if envelope.severity != "debug":
                row.last = envelope
            if envelope.name in ROW_EVENTS:
                with contextlib.suppress(ValueError):
                    self._move(row, envelope.model())
            elif row.url is None and envelope.name == ev.RuntimeHeartbeat.NAME:
                with contextlib.suppress(ValueError):
                    row.url = str(envelope.fields()["server"])  # a host seen mid-run

    @staticmethod
    def _move(row: Host, event: ev.Event) -> None:
        vm = getattr(event, "vm", None)
        if isinstance(vm, str):
            state = VM_STATE.get(type(event))
            if state is not None:
                row.vms[vm] = state
            else:
                row.vms.setdefault(vm, "idle")
        elif isinstance(event, ev.RuntimeStart):
            row.url, row.ready, row.state = None, False, "starting"  # its port: at ready
            row.vms = dict.fromkeys(row.vms, "idle")  # a new frameos: nothing runs yet
        elif isinstance(event, ev.RuntimeReady):
            row.url, row.ready, row.state = event.server, True, "running"
        elif isinstance(event, ev.RuntimeStopping):
            row.ready, row.state = False, "stopping"
        elif isinstance(event, ev.RuntimeStop):
            row.ready, row.state = False, "stopped"
            row.vms = dict.fromkeys(row.vms, "stopped")
        elif isinstance(event, ev.RuntimeReload):
            for name in event.vms.removed:
                row.vms.pop(name, None)

    @property
    def selected_host(self) -> Host | None:
        rows = list(self.hosts.values())
        return rows[min(self.selected, len(rows) - 1)] if rows else None

    def key(self, key: str) -> Host | None:
        """Move the selection; the host to open on `enter` (None: nothing to open)."""
        with self.lock:
            self.dirty = True
            self.note = ""
            if key in ("up", "k"):
                self.selected = max(0, self.selected - 1)
            elif key in ("down", "j"):
                self.selected = min(max(0, len(self.hosts) - 1), self.selected + 1)
            elif key == "enter":
                row = self.selected_host
                if row is not None and row.url is None:
                    self.note = (
                        f"{row.name}: its URL is not known yet (its runtime:ready event names it)"
                    )
                    return None
                return row
            return None


class Follower:
    """`follow` (forward/follow.py) on an asyncio loop of its own, in the thread `run` is called
    in; it follows again, with backoff, when the broker goes away. `stop` ends it."""

    def __init__(self, url: str, model: FleetModel) -> None:
        self.url = url
        self.model = model
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    def stop(self) -> None:
        self._stopped.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                loop.call_soon_threadsafe(task.cancel)

    async def _main(self) -> None:
        from frameos.forward.follow import follow

        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        delay = BACKOFF_FIRST_S
        while not self._stopped.is_set():
            self.model.set_connection("connecting")

            def connected() -> None:
                nonlocal delay
                delay = BACKOFF_FIRST_S
                self.model.set_connection("connected")

            try:
                await follow(
                    self.url, self.model.apply, host=None, since=0, follow=True, on_live=connected
                )
                why = "the stream ended"
            except FrameosError as exc:
                why = str(exc)
            except Exception as exc:  # nats-py raises many kinds: all mean "not now"
                why = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.model.set_connection(f"disconnected ({why}); retrying in {delay:.1f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


OpenHost = Callable[[Host, AsyncIterator[str]], Awaitable[None]]


class FleetApp:
    """The fleet screen; `run(keys)` returns when `q` is pressed."""

    def __init__(self, model: FleetModel, open_host: OpenHost, console: Any = None) -> None:
        from rich.console import Console

        self.model = model
        self.open_host = open_host
        self.measure = console is None
        self.console = console or Console(highlight=False)

    async def run(self, keys: trio.MemoryReceiveChannel[str]) -> int:
        while True:
            chosen = await self._fleet(keys)
            if chosen is None:
                return 0
            try:
                await self.open_host(chosen, keys)
            except* FrameosError as group:
                with self.model.lock:
                    self.model.note = f"{chosen.name}: {group.exceptions[0]}"
            self.model.dirty = True

    async def _fleet(self, keys: trio.MemoryReceiveChannel[str]) -> Host | None:
        """The fleet screen until `q` (None) or `enter` on a host with a URL."""
        from rich.live import Live

        chosen: Host | None = None
        with Live(console=self.console, auto_refresh=False, screen=True, transient=True) as live:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._draw, live)
                async for key in keys:
                    if key in ("q", "Q"):
                        break
                    chosen = self.model.key(key)
                    if chosen is not None:
                        break
                nursery.cancel_scope.cancel()
        return chosen

    async def _draw(self, live: Any) -> None:
        from frameos.watch.app import redraw
        from frameos.watch.fleet_view import fleet_screen

        def picture(width: int, height: int) -> Any:
            with self.model.lock:  # the follower's thread writes it
                return fleet_screen(self.model, width, time.time())

        await redraw(self.model, self.console, self.measure, live, picture)


async def pump_keys(keys: AsyncIterator[str], send: trio.MemorySendChannel[str]) -> None:
    """The terminal's keys into a channel the screens take turns reading (a screen that ends
    mid-read leaves the channel as it was; an async generator would be finished)."""
    async with send:
        async for key in keys:
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(key)


def host_opener(config: str | None, token_file: str | None) -> OpenHost:
    """`enter`: the host's own view (app.py), its token found as `watch URL` finds it."""

    async def open_host(host: Host, keys: AsyncIterator[str]) -> None:
        from frameos.client.api import Api
        from frameos.client.discover import discover
        from frameos.watch.app import App

        assert host.url is not None
        target = discover(config=config, url=host.url, token_file=token_file)
        async with Api(target, timeout=5.0) as api:
            await App(api, back_on_esc=True).run(keys)

    return open_host


async def watch_fleet(url: str, open_host: OpenHost) -> int:
    """`frameos watch --from URL`: the fleet screen on a terminal; off one, the events of every
    host, one line each (as `events --from URL --follow`)."""
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        from frameos.forward.follow import follow, show_with_host

        run = partial(follow, url, show_with_host(json=False), host=None, since=0, follow=True)
        await trio.to_thread.run_sync(asyncio.run, run(), abandon_on_cancel=True)
        return 0
    from frameos.watch.keys import raw_keys

    model = FleetModel(url)
    follower = Follower(url, model)
    send, receive = trio.open_memory_channel[str](KEY_QUEUE)
    keys_scope = trio.CancelScope()

    async def read_keys(keys: AsyncIterator[str]) -> None:
        with keys_scope:
            await pump_keys(keys, send)

    with raw_keys() as keys:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(trio.to_thread.run_sync, follower.run, abandon_on_cancel=True)
            )
            nursery.start_soon(read_keys, keys)
            try:
                status = await FleetApp(model, open_host).run(receive)
            finally:
                follower.stop()
                keys_scope.cancel()
                nursery.cancel_scope.deadline = trio.current_time() + STOP_S  # then abandoned
    return status
