"""Heartbeat and metrics tickers, scheduled by deadline so they never drift (SPEC §3.2)."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable

import trio

from frameos.bus import Bus
from frameos.events import RuntimeHeartbeat, RuntimeMetricsTick
from frameos.state import RuntimeState


class Ticker:
    """A deadline schedule: tick k is due at `start + k * interval`.

    When the loop was blocked past whole intervals, the missed ticks are skipped (not bunched):
    the tick that fires is the latest one due, and `wait` returns how late it fired. The interval
    is re-read every tick, so a reload takes effect at the next tick.
    """

    def __init__(self, interval: Callable[[], float]) -> None:
        self.interval = interval
        self.deadline = trio.current_time() + interval()

    async def wait(self) -> float:
        """Sleep until the next tick is due; returns its lateness in seconds."""
        await trio.sleep_until(self.deadline)
        step = self.interval()
        now = trio.current_time()
        self.deadline += math.floor((now - self.deadline) / step) * step
        lateness = now - self.deadline
        self.deadline += step
        return lateness


async def heartbeat(bus: Bus, state: RuntimeState) -> None:
    """Publish runtime:heartbeat every `heartbeat_interval`; record liveness for the watchdog."""
    ticker = Ticker(lambda: state.config.heartbeat_interval)
    while True:
        lateness = await ticker.wait()
        state.heartbeats += 1
        state.last_heartbeat_mono = trio.current_time()
        state.last_heartbeat_lag_ms = lateness * 1000
        await bus.publish(
            RuntimeHeartbeat(
                uptime_seconds=round(state.uptime(), 3),
                server=state.server_url,
                loop_lag_ms=round(lateness * 1000, 3),
            )
        )


async def metrics(bus: Bus, state: RuntimeState, ws_clients: Callable[[], int]) -> None:
    """Publish runtime:metrics_tick every `metrics_interval` with process and bus figures."""
    ticker = Ticker(lambda: state.config.metrics_interval)
    while True:
        await ticker.wait()
        state.metrics_ticks += 1
        stats = process_stats()
        await bus.publish(
            RuntimeMetricsTick(
                uptime_seconds=round(state.uptime(), 3),
                metrics_interval_seconds=state.config.metrics_interval,
                apps_loaded=state.apps_loaded,
                scenes_loaded=state.scenes_loaded,
                rss_bytes=stats.rss_bytes,
                cpu_seconds=round(stats.cpu_seconds, 3),
                open_fds=stats.open_fds,
                events_published=bus.published,
                events_dropped=bus.dropped,
                ws_clients=ws_clients(),
            )
        )


class ProcessStats:
    """RSS, CPU seconds and open file descriptors of this process, read from /proc."""

    __slots__ = ("cpu_seconds", "open_fds", "rss_bytes")

    def __init__(self, rss_bytes: int, cpu_seconds: float, open_fds: int) -> None:
        self.rss_bytes, self.cpu_seconds, self.open_fds = rss_bytes, cpu_seconds, open_fds


PAGE = os.sysconf("SC_PAGE_SIZE")


def process_stats() -> ProcessStats:
    try:
        with open("/proc/self/statm", "rb") as handle:
            rss = int(handle.read().split()[1]) * PAGE
    except OSError:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = os.times()
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    return ProcessStats(rss, times.user + times.system, fds)
