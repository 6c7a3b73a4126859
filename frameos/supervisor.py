"""`frameos run`: the nurseries and the order of things (SPEC §1, §4; STYLE "nesting is the
shutdown order").

    outer nursery ── signal task ── bus writer ── output sinks ── systemd notifier
      └── stop scope (deadline = shutdown_timeout_s once stopping; a second signal cancels it)
            └── server nursery ── HTTP front door (and its websocket hub)
                  └── work nursery ── VM pool ── run service (runs in flight)
                        └── running nursery ── heartbeat ── metrics ── reloader

Start-up: runtime:start, the VMs (those with `depends_on` behind their gates), the server,
runtime:ready once every permanent VM is ready or gave up (SPEC §9). The first SIGTERM or SIGINT
begins a graceful stop (runtime:stopping): the running nursery ends (tickers, a reload in
flight, a wait for readiness), then the work nursery is cancelled with the reason, which stops
every VM through its ladder (dependants first) while the server still answers (`/healthz` says
"stopping"); then the front door drains under a deadline (hypercorn's idea), runtime:stop and
summary are logged, and `bus.aclose` drains every subscriber. A second SIGTERM/SIGINT cuts the
ladders short (`pool.force`) and cancels the stop scope (exit 1). A fault (an unexpected
exception) of a ticker or the reloader is logged and stops like a signal; one of the server
unwinds the nurseries, the VMs again through their ladders; either way runtime:stop and summary
close the log (exit 1).

Signals are blocked from the first line of `python -m frameos` (and of `cli.main`) until
`signal_inbox` has its handlers in, so a SIGHUP during start-up waits instead of killing. Every
delivery is counted, so a second SIGINT is never merged into the first. SIGHUP asks the
reloader, which re-reads the config in its own task; the signal task never waits on a reload,
and a stop cancels one in flight. SIGHUP and a `reload` run (frameos/runs) take the same path,
`reload`, one at a time: the file read bounded by `RELOAD_TIMEOUT_S`, then `pool.apply` (each
VM by diff, SPEC §5.1; its ladders bounded by their rungs), then runtime:reload with `vms`.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

import trio

from frameos import events as ev
from frameos.bus import Bus
from frameos.config import FrameConfig, diff, event_log_path, load_config
from frameos.emit import Output
from frameos.errors import ConfigError, FrameosError
from frameos.eventlog import EventLog
from frameos.runs.control import ControlPlane
from frameos.runs.service import RunService
from frameos.sinks import HumanSink, JsonSink, Sink
from frameos.state import Phase, RuntimeState
from frameos.systemd import SystemdNotifier
from frameos.workers.pool import EXIT_EXHAUSTED, VmPool
from frameos.workers.vm import Spawner, default_spawner

if TYPE_CHECKING:
    from frameos.forward import Forwarder
    from frameos.server.auth import Tokens
    from frameos.server.frontdoor import FrontDoor
    from frameos.server.metrics import Metrics
    from frameos.server.wsfast import WsHub

EXIT_OK, EXIT_FAILED = 0, 1
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A reload reads one small file; longer than this, the file is not what it should be.
RELOAD_TIMEOUT_S = 10.0
# Signals delivered but not yet read by the signal task; beyond this a storm is dropped.
SIGNAL_BACKLOG = 64
# The front door's drain after its `graceful_s`: the last bound on the server nursery.
SERVER_DRAIN_MARGIN_S = 1.0
# Reasons named in the "serving …; runtime:ready waits for" message.
MAX_REASONS = 4
# Keys a reload cannot apply to a running process: they take effect after a restart.
RESTART_KEYS = (
    "frame_host",
    "frame_port",
    "state_dir",
    "event_log",
    "log_to_file",
    "websocket",
    "auth",
    "forward",
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


class Shutdown:
    """The stop request: why, by which signal, with which exit status. Set once."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.reason = ""
        self.signal: str | None = None
        self.exit_status = EXIT_OK

    def request(self, reason: str, sig: str | None = None, exit_status: int = EXIT_OK) -> None:
        if not self.requested.is_set():
            self.reason, self.signal, self.exit_status = reason, sig, exit_status
            self.requested.set()


def run_blocking(options: Options) -> int:
    """Run the supervisor to completion; returns the process exit status.

    A FrameosError that ended the run (a port in use, say) is raised after runtime:stop and
    summary were logged, on its own (not in an exception group), so the CLI reports it in one
    line.
    """
    return trio.run(serve, options)


async def serve(options: Options, *, spawner: Spawner | None = None) -> int:
    """Open the event log, run one Supervisor on it, close the log; returns the exit status.

    `spawner` replaces how VM processes are started (tests drive fake children with it).
    """
    config = options.config
    log = EventLog(
        event_log_path(config, options.event_log),
        max_bytes=config.event_log.max_bytes,
        keep=config.event_log.keep,
    )
    recovery = log.open()
    try:
        bus = Bus(log, last_seq=recovery.last_seq, fsync=config.event_log.fsync)
        supervisor = Supervisor(options, bus, spawner=spawner)
        return await supervisor.run(recovery.truncated_bytes, recovery.truncated_at)
    finally:
        log.close()


# --- signals ------------------------------------------------------------------------------------


@contextmanager
def signal_inbox(*signums: int) -> Iterator[trio.MemoryReceiveChannel[int]]:
    """Every delivery of `signums`, in order, as a channel; unblocks them once handled.

    trio's `open_signal_receiver` merges repeats of a signal that arrive before they are read;
    here each delivery the interpreter sees is one item, so a second SIGINT is a second item.
    (The kernel itself merges a signal sent while the same one is still pending.) Signals that
    arrived while blocked (frameos/__main__.py, cli.main) are delivered once the handlers are
    in. On exit the previous handlers and signal mask come back.
    """
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[int](SIGNAL_BACKLOG)

    def deliver(signum: int) -> None:
        # a storm past SIGNAL_BACKLOG is dropped: the stop it asks for is already forced
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            send.send_nowait(signum)

    def handler(signum: int, frame: FrameType | None) -> None:
        token.run_sync_soon(deliver, signum)  # not idempotent: one call per delivery

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
    try:
        yield receive
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, old in previous.items():
            signal.signal(signum, old)
        send.close()


# --- the supervisor -----------------------------------------------------------------------------


class Supervisor:
    """One `frameos run` on an open bus."""

    def __init__(self, options: Options, bus: Bus, *, spawner: Spawner | None = None) -> None:
        self.options = options
        self.bus = bus
        self.shutdown = Shutdown()
        self.state = RuntimeState(
            config=options.config,
            config_source=options.config_source,
            apps_loaded=options.apps_loaded,
            scenes_loaded=options.scenes_loaded,
        )
        self.pool = VmPool(
            options.config, bus, on_exhausted=self._exhausted, spawner=spawner or default_spawner
        )
        self.pool.attach(self.state)
        self.stop_scope = trio.CancelScope()
        self.hub: WsHub | None = None
        self.metrics: Metrics | None = None
        self.forwarder: Forwarder | None = None
        if options.config.forward is not None:
            from frameos.forward import Forwarder

            assert options.config.state_dir is not None, "resolve() fills state_dir"
            self.forwarder = Forwarder(bus, options.config.forward, options.config.state_dir)
        self.tokens: Tokens | None = None  # the API tokens, read at start (server/auth.py)
        self.forced = False
        self.fault: BaseException | None = None  # what ended the run, when not a stop request
        # SIGHUP → reloader: one waiting request at most (it reads the newest file anyway)
        self.reload_requests, self.reload_inbox = trio.open_memory_channel[None](1)
        # Called before a reload starts and after it applied (systemd notifier, workers).
        self.before_reload: list[Callable[[], Awaitable[None]]] = []
        self.reload_hooks: list[Callable[[FrameConfig, list[str]], Awaitable[None]]] = []
        self.reload_lock = trio.Lock()  # SIGHUP and reload runs: one reload at a time
        self.runs = RunService(self.pool, bus, reload=self.reload)
        # what the /v1 API acts on (interface R4)
        self.control = ControlPlane(runs=self.runs, pool=self.pool, bus=bus, state=self.state)

    def _exhausted(self, reason: str) -> None:
        self.shutdown.request(reason, exit_status=EXIT_EXHAUSTED)

    async def run(self, torn_bytes: int = 0, torn_at: int = 0) -> int:
        """Supervise until stopped; returns the exit status (see the module docstring)."""
        bus, state = self.bus, self.state
        sink = self._make_sink()
        async with trio.open_nursery() as outer:
            # first: handlers in (and signals unblocked) before any thread or child exists,
            # so neither inherits a blocked mask
            signals = await outer.start(self._signal_task)
            await outer.start(bus.run)
            await outer.start(sink.run)
            if self.forwarder is not None:  # after its drain, once the bus closed (SPEC §12)
                await outer.start(self.forwarder.run)
            # systemd: READY/STATUS/STOPPING/watchdog; does nothing without NOTIFY_SOCKET.
            notifier = SystemdNotifier(bus, state, watchers=self._watchers)
            await outer.start(notifier.run)
            self.before_reload.append(notifier.before_reload)
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
            status = await self._supervise()
            self._log_the_end(status)
            signals.cancel()
            await bus.aclose()  # writes out what is pending, then ends every subscription
        if isinstance(self.fault, FrameosError):
            raise self.fault
        return status

    def _log_the_end(self, status: int) -> None:
        bus, state = self.bus, self.state
        state.set_phase(Phase.STOPPED)
        duration_ms = int(state.uptime() * 1000)
        # never waits: a full disk must not hold the end of the run (the final flush is bounded)
        bus.publish_nowait(
            ev.RuntimeStop(
                server=state.server_url,
                metrics_interval_seconds=state.config.metrics_interval,
                apps_loaded=state.apps_loaded,
                scenes_loaded=state.scenes_loaded,
                duration_ms=duration_ms,
            )
        )
        bus.publish_nowait(
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

    def _make_sink(self) -> Sink:
        if self.options.output == "human":
            return HumanSink(self.bus, verbose=self.options.verbose)
        return JsonSink(self.bus)

    async def _supervise(self) -> int:
        """The server and the work, bounded once stopping; returns the exit status."""
        state = self.state
        try:
            with self.stop_scope:
                await self._serve()
        except Exception as exc:  # an exception group, or a FrameosError raised before nesting
            self.fault = _first_leaf(exc)
            self.bus.publish_nowait(ev.Message(text=_fault_text(self.fault)), "error")
            return EXIT_FAILED
        if self.forced or self.fault is not None:
            return EXIT_FAILED
        if self.stop_scope.cancelled_caught:
            self.bus.publish_nowait(
                ev.Message(
                    text=f"shutdown_timeout_s ({state.config.shutdown_timeout_s:g} s) passed "
                    "before everything stopped; the rest was cancelled"
                ),
                "error",
            )
            return EXIT_FAILED
        return self.shutdown.exit_status

    async def _serve(self) -> None:
        """Server nursery around the work nursery: the work ends first, then the server drains."""
        from frameos.server.auth import load_tokens
        from frameos.server.listen import bind

        config = self.state.config
        server_stop = trio.Event()  # the front door's `stop` (interface G)
        async with trio.open_nursery() as server:
            # bind first (a taken port fails before any VM starts), and read the API tokens
            listeners = await bind(config.frame_host, config.frame_port)
            self.tokens = load_tokens(config, os.environ)
            async with trio.open_nursery() as work:
                await work.start(self.pool.run)  # every VM launched (or failed to)
                await work.start(self.runs.run)  # the runs of earlier instances rebuilt
                # ~0.3 s of imports: in a worker thread, so the loop meanwhile writes out
                # vm.launched and bootstrap events instead of holding them until the server is up
                await trio.to_thread.run_sync(_import_http_stack)
                door = self._http_surface()
                host, port = await server.start(door.run, listeners, server_stop)
                self.state.server_url = f"http://{_url_host(host)}:{port}"
                # Start-up is over: move the import-time objects out of the collector's sight, so
                # a full collection (which bursts of retained event models trigger) walks only
                # what the run itself allocates (B1: 1.36x the CPU per event without it).
                gc.freeze()
                await self._run_until_stopped(work)
            server_stop.set()
            server.cancel_scope.deadline = (
                trio.current_time() + door.graceful_s * 2 + SERVER_DRAIN_MARGIN_S
            )

    async def _run_until_stopped(self, work: trio.Nursery) -> None:
        """Ready; on the stop request, end the work nursery (the VMs through their ladders)."""
        from frameos.tickers import heartbeat, metrics

        bus, state = self.bus, self.state
        try:
            async with trio.open_nursery() as running:  # what has no business during a stop
                running.start_soon(heartbeat, bus, state)
                running.start_soon(metrics, bus, state, self._watchers)
                running.start_soon(self._reloader)
                if not self.shutdown.requested.is_set():  # a stop during start-up: never ready
                    running.start_soon(self._ready)
                await self.shutdown.requested.wait()
                running.cancel_scope.cancel()  # tickers and a reload in flight
        except Exception as exc:  # a fault of a ticker or the reloader: stop like on SIGTERM
            self.fault = _first_leaf(exc)
            bus.publish_nowait(ev.Message(text=_fault_text(self.fault)), "error")
            self.shutdown.request("internal fault", exit_status=EXIT_FAILED)
        state.set_phase(Phase.STOPPING)  # /healthz: "stopping" until the server is gone
        # the deadline first, and no wait on the bus: a full disk must not hold up the stop
        self.stop_scope.deadline = trio.current_time() + state.config.shutdown_timeout_s
        bus.publish_nowait(
            ev.RuntimeStopping(reason=self.shutdown.reason, signal=self.shutdown.signal)
        )
        # every VM through its ladder (interface F), while clients still watch
        work.cancel_scope.cancel(reason=self.shutdown.reason)

    async def _ready(self) -> None:
        """RuntimeReady (READY=1, SPEC §9) once the server is bound (it is, here) and every
        permanent VM is ready or gave up with `on_exhausted: stay` (then /readyz stays 503 and
        STATUS says "degraded"). A VM that never gets there holds it back: the stop request
        cancels this wait, and under systemd TimeoutStartSec ends it."""
        state = self.state
        # say where to look meanwhile (frame_port 0, say), naming only what READY=1 waits for
        if waiting := self.pool.ready_waits_for():
            await self.bus.publish(
                ev.Message(
                    text=f"serving {state.server_url}; {ev.RuntimeReady.NAME} (READY=1) waits for: "
                    + "; ".join(waiting[:MAX_REASONS])
                    + (" …" if len(waiting) > MAX_REASONS else "")
                )
            )
        await self.pool.wait_ready()
        state.set_phase(Phase.READY)
        await self.bus.publish(
            ev.RuntimeReady(
                server=state.server_url,
                health_endpoint=f"{state.server_url}/healthz",
                event_stream_transport="websocket",
                metrics_interval_seconds=state.config.metrics_interval,
                apps_loaded=state.apps_loaded,
                scenes_loaded=state.scenes_loaded,
            )
        )

    def _watchers(self) -> int:
        """Connected websocket clients (0 before the server exists)."""
        return len(self.hub.clients) if self.hub is not None else 0

    def _http_surface(self) -> FrontDoor:
        """The quart-trio app, the websocket hub and the front door serving both."""
        from frameos.server.app import create_app
        from frameos.server.frontdoor import FrontDoor
        from frameos.server.metrics import Metrics
        from frameos.server.wsfast import WsHub

        # the hub subscribes to the bus itself, in its own task (FrontDoor.run starts it)
        hub = WsHub(self.bus, self.state.config.websocket)
        self.hub = hub
        self.metrics = Metrics(self.state, self.bus, hub)
        self.metrics.registry.register(self.pool.collector())
        if self.forwarder is not None:
            from frameos.server.metrics import ForwardCollector

            self.metrics.registry.register(ForwardCollector(self.forwarder))
        app = create_app(
            self.state, self.bus, hub, self.metrics, control=self.control, tokens=self.tokens
        )
        return FrontDoor(app, hub, vms=len(self.state.config.vms))

    # --- signals -------------------------------------------------------------------------------

    async def _signal_task(
        self, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """SIGTERM/SIGINT: stop, the next one forces; SIGHUP: ask the reloader. Never waits on
        anything but the next signal; `started` hands back the scope that ends it."""
        with trio.CancelScope() as scope, signal_inbox(*HANDLED_SIGNALS) as inbox:
            task_status.started(scope)
            async for signum in inbox:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self._request_reload()
                elif not self.shutdown.requested.is_set():
                    self.shutdown.request(f"received {name}", name)
                else:
                    self._force(name)

    def _force(self, name: str) -> None:
        if self.forced:
            return
        self.forced = True
        self.bus.publish_nowait(ev.Message(text=f"second {name}: forcing the stop now"), "warn")
        self.pool.force()  # the ladders under way: SIGKILL now (they are shielded from cancel)
        self.stop_scope.cancel(reason=f"second {name}")

    def _request_reload(self) -> None:
        try:
            self.reload_requests.send_nowait(None)
        except trio.WouldBlock:
            pass  # one is already waiting: it reads the newest file
        except trio.BrokenResourceError:
            pass  # stopping (or not yet running): nothing to reload into

    # --- reload --------------------------------------------------------------------------------

    async def _reloader(self) -> None:
        """Apply SIGHUP's reload requests one at a time. Cancelled (with a reload in flight)
        when the stop begins; then later SIGHUPs are ignored."""
        with self.reload_inbox:
            async for _ in self.reload_inbox:
                await self.reload()

    async def reload(self, run_id: str | None = None) -> str | None:
        """Re-read the config and apply it by diff (SPEC §5.1); on error keep the running one.

        The one reload path: SIGHUP (`run_id` None) and `reload` runs (runtime:reload and the
        VM events carry their `run_id`). Returns the error text when nothing changed because
        of it, else None. On cancellation (a stop) during the file read the config is left as
        it was; the read, if stuck, is abandoned in its worker thread.
        """
        async with self.reload_lock:
            return await self._reload(run_id)

    async def _reload(self, run_id: str | None) -> str | None:
        for before in self.before_reload:
            await before()
        path = self.options.config_path
        if path is None:  # the demo: nothing to re-read, every VM unchanged
            unchanged = ev.ReloadVms(unchanged=list(self.pool.names))
            await self.bus.publish(
                ev.RuntimeReload(changed=[], error=None, vms=unchanged, run_id=run_id)
            )
            return None
        new: FrameConfig | None = None
        error = f"reading {path} took longer than {RELOAD_TIMEOUT_S:g} s; the running config stays"
        with trio.move_on_after(RELOAD_TIMEOUT_S):
            try:
                new = await trio.to_thread.run_sync(
                    load_config, path, dict(os.environ), abandon_on_cancel=True
                )
            except (ConfigError, OSError, ValueError, RecursionError, MemoryError) as exc:
                error = f"{exc}; the running config stays"
        if new is None:
            await self.bus.publish(
                ev.RuntimeReload(changed=[], error=error, run_id=run_id), "error"
            )
            return error
        old = self.state.config
        later = [c for c in diff(old, new) if c.split(".")[0] in RESTART_KEYS]
        # what cannot change live keeps its running value (state_dir, the port, the log, ...)
        applied = new.model_copy(update={k: getattr(old, k) for k in RESTART_KEYS})
        done = await self.pool.apply(applied, run_id=run_id)
        self.state.config = applied
        changed = sorted({*done.changed, *later})
        for hook in self.reload_hooks:
            await hook(applied, changed)
        vms = ev.ReloadVms(
            added=done.added,
            removed=done.removed,
            restarted=done.restarted,
            updated=done.updated,
            unchanged=done.unchanged,
        )
        await self.bus.publish(
            ev.RuntimeReload(changed=changed, error=None, vms=vms, run_id=run_id)
        )
        if later:
            await self.bus.publish(
                ev.Message(
                    text=f"changed {', '.join(later)}: takes effect after a restart",
                    run_id=run_id,
                ),
                "warn",
            )
        return None


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _fault_text(exc: BaseException) -> str:
    if isinstance(exc, FrameosError):
        return str(exc)
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
    return (
        f"internal fault: {type(exc).__name__}: {exc}{where}; every VM was stopped and "
        "frameos exits (please report this)"
    )


def _import_http_stack() -> None:
    import frameos.server.app
    import frameos.server.frontdoor
    import frameos.server.metrics
    import frameos.server.wsfast  # noqa: F401


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
