"""Tickers fire on their deadlines (autojump clock), skip missed ticks, and carry the lag."""

from __future__ import annotations

from pathlib import Path

import trio

from frameos.bus import Bus
from frameos.config import validate_config
from frameos.eventlog import EventLog
from frameos.state import RuntimeState
from frameos.tickers import Ticker, heartbeat, metrics, process_stats


async def test_ticks_do_not_drift(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    ticker = Ticker(lambda: 1.5)
    fired = []
    while len(fired) < 4:
        await ticker.wait()
        fired.append(trio.current_time() - start)
        await trio.sleep(0.4)  # work inside the tick must not push the next one
    assert fired == [1.5, 3.0, 4.5, 6.0]


async def test_missed_ticks_are_skipped_and_lateness_reported(
    autojump_clock: trio.abc.Clock,
) -> None:
    start = trio.current_time()
    ticker = Ticker(lambda: 1.0)
    seen = []
    while len(seen) < 3:
        lateness = await ticker.wait()
        seen.append((round(trio.current_time() - start, 3), round(lateness, 3)))
        if len(seen) == 1:
            await trio.sleep(2.5)  # a blocked loop: the tick due at 2 is skipped
    assert seen == [(1.0, 0.0), (3.5, 0.5), (4.0, 0.0)]


async def test_heartbeat_and_metrics_publish(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    log.open()
    bus = Bus(log)
    state = RuntimeState(config=validate_config({"metrics_interval": 5}, "x"), config_source="x")
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        nursery.start_soon(heartbeat, bus, state)
        nursery.start_soon(metrics, bus, state, lambda: 3)
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    names = [e.name for e in bus.ring]
    assert names.count("runtime:heartbeat") == 10
    assert names.count("runtime:metrics_tick") == 2
    assert state.heartbeats == 10 and state.metrics_ticks == 2
    tick = next(e for e in bus.ring if e.name == "runtime:metrics_tick").fields()
    assert tick["ws_clients"] == 3 and tick["rss_bytes"] > 0 and tick["open_fds"] > 0
    log.close()


def test_process_stats_are_real() -> None:
    stats = process_stats()
    assert stats.rss_bytes > 1_000_000
    assert stats.cpu_seconds > 0
    assert stats.open_fds >= 3
