"""`frameos run`: the root nursery and the order of things (SPEC §1, §4; STYLE "nesting is the
shutdown order").

    outer nursery ── bus writer ── output sink ── signal task
      └── inner scope (deadline = shutdown_timeout_s once stopping)
            └── inner nursery ── HTTP front door ── heartbeat ── metrics ── (workers)

Start-up: runtime:start, then the inner components, then runtime:ready. The first SIGTERM or
SIGINT begins a graceful stop (runtime:stopping): workers first, so clients still watch the stop
ladder, then the server; the whole inner stop is bounded by `shutdown_timeout_s`. A second
signal cancels the inner scope at once (exit 1). Then runtime:stop and summary are logged, the
bus drains, and the process exits 0 after a clean stop. SIGHUP re-reads the config.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from frameos import events as ev
from frameos.bus import Bus
from frameos.config import FrameConfig, diff, event_log_path, load_config
from frameos.emit import Output
from frameos.errors import ConfigError, FrameosError
from frameos.eventlog import EventLog
from frameos.sinks import HumanSink, JsonSink, QueueSink
from frameos.state import Phase, RuntimeState

if TYPE_CHECKING:
    from frameos.server.frontdoor import FrontDoor
    from frameos.server.wsfast import WsHub
from frameos.systemd import SystemdNotifier

EXIT_OK, EXIT_FAILED = 0, 1
# Keys a reload cannot apply to a running process: they take effect after a restart.
RESTART_KEYS = (
    "frame_host",
    "frame_port",
    "state_dir",
    "event_log",
    "log_to_file",
    "websocket",
    "auth",
)


@dataclass(frozen=True)
class Options:
    """Everything `frameos run` was asked to do."""

    config: FrameConfig
    config_source: str
    config_path: Path | None
    output: Output
    verbose: bool = False
    event_log: str | None = None
    apps_loaded: int = 0
    scenes_loaded: int = 0


@dataclass
class Shutdown:
    """The stop request: why, by which signal, and whether it is forced."""

    requested: trio.Event = field(default_factory=trio.Event)
    reason: str = ""
    signal: str | None = None
    exit_status: int = EXIT_OK

    def request(self, reason: str, sig: str | None = None, exit_status: int = EXIT_OK) -> None:
        if not self.requested.is_set():
            self.reason, self.signal, self.exit_status = reason, sig, exit_status
            self.requested.set()


def run_blocking(options: Options) -> int:
    """Run the supervisor to completion; returns the process exit status.

    A FrameosError raised inside the nurseries (a port in use, say) comes out on its own, not
    wrapped in exception groups, so the CLI can report it in one line.
    """
    try:
        return trio.run(Supervisor(options).run)
    except BaseExceptionGroup as group:
        ours, rest = group.split(FrameosError)
        if ours is not None and rest is None:
            raise _first_leaf(ours) from None
        raise


def _first_leaf(group: BaseExceptionGroup[FrameosError]) -> FrameosError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def until(event: trio.Event, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run `fn(*args)` until `event` is set, then cancel it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fn, *args)
        await event.wait()
        nursery.cancel_scope.cancel()


class Supervisor:
    """One `frameos run`."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.shutdown = Shutdown()
        self.state = RuntimeState(
            config=options.config,
            config_source=options.config_source,
            apps_loaded=options.apps_loaded,
            scenes_loaded=options.scenes_loaded,
        )
        self.inner_scope = trio.CancelScope()
        self.hub: WsHub | None = None
        self.forced = False
        # Called before a reload starts and after it applied (systemd notifier, workers).
        self.before_reload: list[Callable[[], Awaitable[None]]] = []
        self.reload_hooks: list[Callable[[FrameConfig, list[str]], Awaitable[None]]] = []

    async def run(self) -> int:
        config = self.options.config
        log = EventLog(
            event_log_path(config, self.options.event_log),
            max_bytes=config.event_log.max_bytes,
            keep=config.event_log.keep,
        )
        recovery = log.open()
        try:
            self.bus = Bus(log, last_seq=recovery.last_seq, fsync=config.event_log.fsync)
            return await self._run_outer(recovery.truncated_bytes, recovery.truncated_at)
        finally:
            log.close()

    async def _run_outer(self, torn_bytes: int, torn_at: int) -> int:
        bus, state = self.bus, self.state
        sink = self._make_sink()
        async with trio.open_nursery() as outer:
            await outer.start(bus.run)
            await outer.start(sink.run)
            # systemd: READY/STATUS/STOPPING/watchdog; does nothing without NOTIFY_SOCKET.
            notifier = SystemdNotifier(bus, state, watchers=self._watchers)
            await outer.start(notifier.run)
            self.before_reload.append(notifier.before_reload)
            signals = trio.CancelScope()
            await outer.start(self._signal_task, signals)
            if torn_bytes:
                await bus.publish(
                    ev.Message(
                        text=f"event log {bus.log.path}: torn tail of {torn_bytes} bytes truncated "
                        f"at offset {torn_at}; seq continues from {bus.last_seq}"
                    ),
                    "warn",
                )
            await bus.publish(
                ev.RuntimeStart(
                    server=f"http://{state.config.frame_host}:{state.config.frame_port}",
                    apps_loaded=state.apps_loaded,
                    scenes_loaded=state.scenes_loaded,
                    config=state.config_source,
                )
            )
            status = await self._run_inner()
            state.set_phase(Phase.STOPPED)
            duration_ms = int(state.uptime() * 1000)
            await bus.publish(
                ev.RuntimeStop(
                    server=state.server_url,
                    metrics_interval_seconds=state.config.metrics_interval,
                    apps_loaded=state.apps_loaded,
                    scenes_loaded=state.scenes_loaded,
                    duration_ms=duration_ms,
                )
            )
            await bus.publish(
                ev.Summary(
                    duration_ms=duration_ms,
                    exit_status=status,
                    vms=len(state.config.vms),
                    restarts=self.pool.restarts,
                    events_published=bus.published + 1,
                    events_dropped=bus.dropped,
                    bytes_logged=bus.bytes_logged,
                ),
                "info" if status == EXIT_OK else "error",
            )
            signals.cancel()
            await bus.aclose()
            sink.close()
        return status

    def _make_sink(self) -> QueueSink:
        if self.options.output == "human":
            return HumanSink(self.bus, verbose=self.options.verbose)
        return JsonSink(self.bus)

    async def _run_inner(self) -> int:
        from frameos.server.listen import bind
        from frameos.tickers import heartbeat, metrics
        from frameos.workers.pool import EXIT_EXHAUSTED, VmPool

        bus, state, config = self.bus, self.state, self.state.config
        self.pool = pool = VmPool(
            config,
            bus,
            on_exhausted=lambda reason: self.shutdown.request(reason, exit_status=EXIT_EXHAUSTED),
        )
        pool.attach(state)
        self.reload_hooks.append(pool.on_reload)
        stopping, server_stop = trio.Event(), trio.Event()
        with self.inner_scope:
            async with trio.open_nursery() as inner:
                # Order: bind (cheap; a taken port fails before any VM starts), launch the VMs
                # (they need nothing from the HTTP stack), then import and start the server.
                listeners = await bind(config.frame_host, config.frame_port)
                await inner.start(pool.run)  # every VM launched (or failed to)
                # ~0.3 s of imports: in a worker thread, so the loop meanwhile writes out
                # vm.launched and bootstrap events instead of holding them until the server is up
                await trio.to_thread.run_sync(_import_http_stack)
                door = self._http_surface()
                host, port = await inner.start(door.run, listeners, server_stop)
                state.server_url = f"http://{_url_host(host)}:{port}"
                inner.start_soon(until, stopping, heartbeat, bus, state)
                inner.start_soon(until, stopping, metrics, bus, state, self._watchers)
                state.set_phase(Phase.READY)
                await bus.publish(
                    ev.RuntimeReady(
                        server=state.server_url,
                        health_endpoint=f"{state.server_url}/healthz",
                        event_stream_transport="websocket",
                        metrics_interval_seconds=config.metrics_interval,
                        apps_loaded=state.apps_loaded,
                        scenes_loaded=state.scenes_loaded,
                    )
                )
                await self.shutdown.requested.wait()
                state.set_phase(Phase.STOPPING)
                await bus.publish(
                    ev.RuntimeStopping(reason=self.shutdown.reason, signal=self.shutdown.signal)
                )
                self.inner_scope.deadline = trio.current_time() + state.config.shutdown_timeout_s
                stopping.set()
                await pool.stop(self.shutdown.reason)  # the ladders, while clients still watch
                server_stop.set()
        if self.hub is not None:
            bus.unsubscribe(self.hub)
        if self.forced:
            return EXIT_FAILED
        if self.inner_scope.cancelled_caught:
            await bus.publish(
                ev.Message(
                    text=f"shutdown_timeout_s ({state.config.shutdown_timeout_s:g} s) passed "
                    "before "
                    f"everything stopped; the rest was cancelled"
                ),
                "error",
            )
            return EXIT_FAILED
        return self.shutdown.exit_status

    def _watchers(self) -> int:
        """Connected websocket clients (0 before the server exists)."""
        return len(self.hub.clients) if self.hub is not None else 0

    def _http_surface(self) -> FrontDoor:
        """The quart-trio app, the websocket hub and the front door serving both."""
        from frameos.server.app import create_app
        from frameos.server.frontdoor import FrontDoor
        from frameos.server.metrics import Metrics
        from frameos.server.wsfast import WsHub

        hub = WsHub(self.bus, self.state.config.websocket)
        self.bus.subscribe(hub)
        self.hub = hub
        self.metrics = Metrics(self.state, self.bus, hub)
        self.metrics.registry.register(self.pool.collector())
        return FrontDoor(create_app(self.state, self.bus, hub, self.metrics), hub)

    # --- signals -------------------------------------------------------------------------------

    async def _signal_task(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """SIGTERM/SIGINT: stop, then force on the second; SIGHUP: reload."""
        with (
            scope,
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals,
        ):
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    await self.reload()
                elif not self.shutdown.requested.is_set():
                    self.shutdown.request(f"received {name}", name)
                else:
                    await self._force(name)

    async def _force(self, name: str) -> None:
        if self.forced:
            return
        self.forced = True
        await self.bus.publish(ev.Message(text=f"second {name}: forcing the stop now"), "warn")
        self.inner_scope.cancel()

    async def reload(self) -> None:
        """Re-read the config; apply what can change live, report the rest; keep it on error."""
        for before in self.before_reload:
            await before()
        path = self.options.config_path
        if path is None:
            await self.bus.publish(ev.RuntimeReload(changed=[], error=None))
            return
        try:
            new = await trio.to_thread.run_sync(load_config, path, dict(os.environ))
        except ConfigError as exc:
            await self.bus.publish(
                ev.RuntimeReload(changed=[], error=f"{exc}; the running config stays"), "error"
            )
            return
        old = self.state.config
        changed = diff(old, new)
        self.state.config = new.model_copy(update={k: getattr(old, k) for k in RESTART_KEYS})
        for hook in self.reload_hooks:
            await hook(new, changed)
        await self.bus.publish(ev.RuntimeReload(changed=changed, error=None))
        later = [c for c in changed if c.split(".")[0] in RESTART_KEYS]
        if later:
            await self.bus.publish(
                ev.Message(text=f"changed {', '.join(later)}: takes effect after a restart"), "warn"
            )


def _import_http_stack() -> None:
    import frameos.server.app
    import frameos.server.frontdoor
    import frameos.server.metrics
    import frameos.server.wsfast  # noqa: F401


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
