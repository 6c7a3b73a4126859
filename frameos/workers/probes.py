"""Readiness and liveness probes of one launch (SPEC §5.2).

    launch ─► initial_delay_ms ─► attempt ─► period_ms ─► attempt ─► ...   (until the exit)
    failure_threshold failures in a row ─► unhealthy    (liveness: the VM is restarted)
    success_threshold successes in a row ─► healthy     (readiness: the VM is ready)

`LaunchHealth` owns the probes of one launch: `run` is started in the nursery that owns the
launch (vm.py's `_run_child`) and cancelled at the exit or the stop. Each probe is a task that
attempts, bounded by `timeout_ms`, then sleeps until its next period: an attempt never blocks
the loop (exec: a process in its own group, killed with its group at the deadline; http: h11 on
a trio stream, a fresh connection each time; tcp: a connect). A `notify` readiness probe
makes no attempts: the VM's `READY=1` (notify.py) makes it healthy. With `watchdog_ms`, a
missed `WATCHDOG=1` ping is a liveness failure. What an attempt says (its output, an error) is
untrusted: bounded and stripped of control characters (`clean`).

Every change of a probe's status is a `vm.health` event (unhealthy: warn) and calls
`on_change` (the worker's `_notify`: `ready` may have changed). A liveness probe turning
unhealthy, or a missed watchdog ping, calls `on_liveness_failed(detail)` once.

`end` (the VM's exit or the beginning of its stop, before the ladder) freezes the statuses: no
`vm.health` and no readiness change after it (a late `READY=1` read during the ladder changes
nothing; STATUS= and STOPPING=1 are still said by notify.py).
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from frameos import events as ev
from frameos.config import VmConfig
from frameos.config.models import HttpProbe, ProbeConfig, TcpProbe
from frameos.workers import LaunchError
from frameos.workers.child import SPAWN_ERRORS, Tracking, run_captured, signal_name
from frameos.workers.paths import VmPaths, substitute
from frameos.workers.publisher import Publisher

Which = Literal["readiness", "liveness"]
Status = Literal["unknown", "healthy", "unhealthy"]
Outcome = tuple[bool, str]  # passed, detail

DETAIL_CHARS = 300  # what `detail` keeps of an attempt's outcome
OUTPUT_BYTES = 4096  # what an exec probe's output is read to (the rest is discarded)
EXEC_GRACE_S = 0.2  # SIGTERM to SIGKILL, then the wait for the group, for an exec probe
HEAD_BYTES = 16 * 1024  # an http probe reads the response head up to this, and no body
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str, limit: int = DETAIL_CHARS) -> str:
    """Untrusted text made safe to show: control characters out, newlines folded, bounded."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n")).strip().replace("\n", " | ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class ProbeStatus:
    """One probe's state in this launch: what the snapshot and `vm.health` say."""

    which: Which
    kind: str  # exec | http | tcp | notify | watchdog
    status: Status = "unknown"
    failures: int = 0  # in a row
    successes: int = 0  # in a row
    detail: str = ""
    total_failures: int = 0  # every failed attempt of this launch (`/metrics`)

    def record(self, ok: bool, detail: str, success_threshold: int, failure_threshold: int) -> bool:
        """Count one attempt; True when the status changed."""
        self.detail = detail
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            new: Status = "healthy" if self.successes >= success_threshold else self.status
        else:
            self.failures, self.successes = self.failures + 1, 0
            self.total_failures += 1
            new = "unhealthy" if self.failures >= failure_threshold else self.status
        changed, self.status = new != self.status, new
        return changed

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "failures": self.failures,
            "detail": self.detail,
        }


class LaunchHealth:
    """The probes, watchdog and notify facts of one launch of one VM."""

    def __init__(
        self,
        vm: VmConfig,
        paths: VmPaths,
        env: Mapping[str, str],
        publisher: Publisher,
        *,
        launched_at: float,
        on_change: Callable[[], None],
        on_liveness_failed: Callable[[str], None],
    ) -> None:
        self.vm, self.paths, self.env, self.publisher = vm, paths, env, publisher
        self.launched_at = launched_at
        self.on_change, self.on_liveness_failed = on_change, on_liveness_failed
        self.readiness: ProbeStatus | None = None
        self.liveness: ProbeStatus | None = None
        self.last_ping: float | None = None  # WATCHDOG=1 (trio time)
        self.status_text: str | None = None  # the last STATUS=
        self.stopping = False  # STOPPING=1 was said
        self.ended = False  # `end`: the statuses stay as they are
        self._failed_liveness = False
        self._scope: trio.CancelScope | None = None
        self._set_statuses(vm)

    def _set_statuses(self, vm: VmConfig) -> None:
        health = vm.health
        ready = health.readiness if health else None
        live = health.liveness if health else None
        if ready is None:
            self.readiness = None
        elif self.readiness is None or self.readiness.kind != ready.kind:
            self.readiness = ProbeStatus("readiness", ready.kind)
        kind = live.kind if live else "watchdog"
        if live is None and vm.watchdog_ms is None:
            self.liveness = None
        elif self.liveness is None or self.liveness.kind != kind:
            self.liveness = ProbeStatus("liveness", kind)

    @property
    def ready(self) -> bool:
        """The readiness probe is healthy, or there is none."""
        return self.readiness is None or self.readiness.status == "healthy"

    def reconfigure(self, vm: VmConfig) -> None:
        """A reload changed `health`: the probes start over with the new settings (the statuses
        are kept where the kind of probe stayed the same)."""
        self.vm = vm
        self._set_statuses(vm)
        if self._scope is not None:
            self._scope.cancel()
        self.on_change()

    def end(self) -> None:
        """The launch exited or its stop began: no status changes from now on (the probe tasks
        are being cancelled; what the notify socket still says changes no status)."""
        self.ended = True

    async def run(self) -> None:
        """Run every probe until cancelled (the exit or the stop of this launch)."""
        while True:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    health = self.vm.health
                    if health and health.readiness and not health.readiness.notify:
                        nursery.start_soon(self._probe, health.readiness, self.readiness)
                    if health and health.liveness:
                        nursery.start_soon(self._probe, health.liveness, self.liveness)
                    if self.vm.watchdog_ms is not None:
                        nursery.start_soon(self._watchdog, self.vm.watchdog_ms / 1000)
                    await trio.sleep_forever()

    # --- what the notify socket says (notify.py) ----------------------------------------------

    def said_ready(self) -> None:
        """READY=1: a `notify` readiness probe passes (once is enough)."""
        state = self.readiness
        if self.ended:
            return
        if state is not None and state.kind == "notify" and state.status != "healthy":
            state.record(True, "READY=1", 1, 1)
            self._changed(state)

    def said_watchdog(self) -> None:
        self.last_ping = trio.current_time()

    def said_status(self, text: str) -> None:
        self.status_text = text

    def said_stopping(self) -> None:
        self.stopping = True

    # --- the probe tasks ----------------------------------------------------------------------

    async def _probe(self, probe: ProbeConfig, state: ProbeStatus | None) -> None:
        assert state is not None
        await self._attempts(probe, state, partial(self._attempt_for(probe), probe))

    async def _attempts(
        self, probe: ProbeConfig, state: ProbeStatus, attempt: Callable[[], Awaitable[Outcome]]
    ) -> None:
        """Attempt every `period_ms` from the launch's initial delay on, until cancelled."""
        await trio.sleep_until(self.launched_at + probe.initial_delay_ms / 1000)
        while True:
            started = trio.current_time()
            with trio.move_on_after(probe.timeout_ms / 1000) as deadline:
                try:
                    ok, detail = await attempt()
                except Exception as exc:  # a probe never crashes the supervisor: it fails
                    ok, detail = False, clean(f"probe error: {type(exc).__name__}: {exc}")
            if deadline.cancelled_caught:
                ok, detail = False, f"timed out after {probe.timeout_ms} ms"
            if self.ended:  # finished as the stop began: it counts no more
                return
            if state.record(ok, detail, probe.success_threshold, probe.failure_threshold):
                self._changed(state)
            await trio.sleep_until(started + probe.period_ms / 1000)

    def _attempt_for(self, probe: ProbeConfig) -> Callable[[ProbeConfig], Awaitable[Outcome]]:
        return {"exec": self._exec, "http": self._http, "tcp": self._tcp}[probe.kind]

    async def _watchdog(self, period_s: float) -> None:
        """A WATCHDOG=1 ping at least every `period_s` from the launch on; a miss fails."""
        due = max(self.launched_at, self.last_ping or self.launched_at) + period_s
        while True:
            await trio.sleep_until(due)
            if self.ended:
                return
            last = self.last_ping
            if last is not None and last + period_s > trio.current_time():
                due = last + period_s
                continue
            state = self.liveness
            assert state is not None
            state.record(False, f"no WATCHDOG=1 within {period_s * 1000:g} ms", 1, 1)
            self._changed(state)
            return

    def _changed(self, state: ProbeStatus) -> None:
        healthy = state.status == "healthy"
        with contextlib.suppress(trio.ClosedResourceError):
            self.publisher.publish_nowait(
                ev.VmHealth(
                    vm=self.vm.name,
                    probe=state.which,
                    status="healthy" if healthy else "unhealthy",
                    failures=state.failures,
                    detail=state.detail,
                ),
                None if healthy else "warn",
            )
        self.on_change()
        if state.which == "liveness" and not healthy and not self._failed_liveness:
            self._failed_liveness = True
            self.on_liveness_failed(state.detail)

    # --- one attempt of each kind: (passed, detail) -------------------------------------------

    async def _exec(self, probe: ProbeConfig) -> tuple[bool, str]:
        assert probe.exec is not None
        output = bytearray()

        def keep(chunk: bytes) -> None:
            output.extend(chunk[: OUTPUT_BYTES - len(output)])

        try:
            argv = substitute(probe.exec.command, self.paths)
            code = await run_captured(
                argv,
                keep,
                env=self.env,
                cwd=self.vm.cwd,
                grace_s=EXEC_GRACE_S,
                tracking=Tracking(self.paths.procs, self.vm.name, "probe"),
            )
        except LaunchError as exc:
            return False, clean(str(exc))
        except SPAWN_ERRORS as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return False, clean(f"cannot start {probe.exec.command[0]!r}: {why}")
        said = clean(output.decode("utf-8", "replace"))
        if code == 0:
            return True, said or "exit 0"
        how = f"killed by {signal_name(-code)}" if code < 0 else f"exit {code}"
        return False, f"{how}: {said}" if said else how

    async def _http(self, probe: ProbeConfig) -> Outcome:
        assert probe.http is not None
        return await http_attempt(probe.http)

    async def _tcp(self, probe: ProbeConfig) -> Outcome:
        assert probe.tcp is not None
        return await tcp_attempt(probe.tcp)

    # --- what the snapshot shows --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "readiness": self.readiness.snapshot() if self.readiness else None,
            "liveness": self.liveness.snapshot() if self.liveness else None,
            "status_text": self.status_text,
            "stopping": self.stopping,
        }

    @property
    def failures(self) -> int:
        return sum(s.total_failures for s in (self.readiness, self.liveness) if s is not None)


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """A client TLS context that verifies nothing (a probe asks whether it serves, not who it
    is); made once."""
    global _tls_context
    if _tls_context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _tls_context = context
    return _tls_context


async def http_attempt(probe: HttpProbe) -> Outcome:
    """One GET on a fresh connection (`Connection: close`): h11 on a trio stream (TLS through
    trio.SSLStream for https). Only the response head is read, at most `HEAD_BYTES`. h11 is
    imported here, by the first HTTP probe: not before the launches of `run` (B6)."""
    import h11

    url = urlsplit(probe.url)
    https = url.scheme.lower() == "https"
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    try:
        code = await _get(
            https, url.hostname or "", url.port or (443 if https else 80), url.netloc, target
        )
    except OSError as exc:
        return False, clean(f"GET {probe.url}: {_why(exc)}")
    except (trio.BrokenResourceError, h11.ProtocolError) as exc:
        return False, clean(f"GET {probe.url}: {exc.__cause__ or exc or type(exc).__name__}")
    ok = code in probe.status if probe.status else 200 <= code <= 399
    return ok, f"HTTP {code}"


async def _get(https: bool, host: str, port: int, authority: str, target: str) -> int:
    import h11

    stream: trio.abc.Stream = trio.SocketStream(await connect(host, port))
    try:
        if https:
            stream = trio.SSLStream(stream, _tls(), server_hostname=host)
            await stream.do_handshake()
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_BYTES)
        headers = [
            ("Host", authority.rpartition("@")[2]),
            ("User-Agent", "frameos-probe"),
            ("Connection", "close"),
        ]
        request = conn.send(h11.Request(method="GET", target=target, headers=headers)) or b""
        await stream.send_all(request + (conn.send(h11.EndOfMessage()) or b""))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(HEAD_BYTES)
                if not data:  # not fed to h11: it would say "can't handle event type Conn…"
                    raise h11.RemoteProtocolError("the connection closed before a response")
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                return int(event.status_code)
            elif not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError("the connection closed before a response")
    finally:
        await trio.aclose_forcefully(stream)


async def tcp_attempt(probe: TcpProbe) -> Outcome:
    """One connect (closed at once)."""
    try:
        sock = await connect(probe.host, probe.port)
    except OSError as exc:
        return False, clean(f"connect {probe.host}:{probe.port}: {_why(exc)}")
    sock.close()
    return True, f"connected to {probe.host}:{probe.port}"


async def connect(host: str, port: int) -> trio.socket.SocketType:
    """A connected TCP socket to `host`, its addresses tried in turn (the caller's deadline
    bounds them all). Plainer than trio.open_tcp_stream (no happy-eyeballs nursery): a third of
    its CPU, which counts at a hundred probes a second."""
    addresses = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in addresses:
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


def _why(exc: OSError) -> str:
    """What a failed connect says: trio's "all attempts to connect ... failed" carries the
    reason of each attempt in its cause (an exception group); the first one is enough."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        else:
            cause = cause.__cause__
    return str(exc)


def after_ms(launched_at: float) -> int:
    return max(0, math.floor((trio.current_time() - launched_at) * 1000))


__all__ = ["LaunchHealth", "ProbeStatus", "clean"]
