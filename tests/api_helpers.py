"""The /v1 API served for real (front door, hypercorn, quart-trio) on a real bus and event log,
with the real RunService driving the fake pool of tests/runs_helpers.py (tests of the API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from frameos.bus import Bus
from frameos.config import validate_config
from frameos.eventlog import EventLog
from frameos.runs import RunService
from frameos.runs.control import ControlPlane
from frameos.server.app import create_app
from frameos.server.auth import ALL_SCOPES, Scope, Token, Tokens
from frameos.server.frontdoor import FrontDoor
from frameos.server.listen import bind
from frameos.server.metrics import Metrics
from frameos.server.wsfast import WsHub
from frameos.state import Phase, RuntimeState
from frameos.workers.snapshot import BootstrapSnapshot, HealthSnapshot, VmSnapshot
from tests.runs_helpers import FakePool, Harness

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
WRITER = "writer-token-0123456789abcdef"


def make_tokens(*, loopback: bool) -> Tokens:
    return Tokens(
        (
            Token("instance", ADMIN.encode(), ALL_SCOPES, "test"),
            Token("reader", READER.encode(), frozenset({Scope.READ}), "test"),
            Token("producer", WRITER.encode(), frozenset({Scope.EVENTS_WRITE}), "test"),
        ),
        loopback=loopback,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SnapshotPool(FakePool):
    """The fake pool, with what GET /v1/vms needs: snapshots and an output file per VM."""

    log_dir: Path = Path("/nonexistent")

    def snapshot(self, name: str) -> VmSnapshot:
        if name not in self.names:
            raise KeyError(name)
        return VmSnapshot(
            name=name,
            state="running",
            pid=4242,
            uptime_s=1.0,
            attempt=1,
            restarts=0,
            last_exit=None,
            backoff_until=None,
            operator_stopped=False,
            bootstrap=BootstrapSnapshot(status="ok", steps=[]),
            health=HealthSnapshot(
                status="ready",
                ready=True,
                readiness=None,
                liveness=None,
                status_text=None,
                stopping=False,
                probe_failures=0,
                notify_dropped=0,
            ),
            config={"name": name, "env": {"API_TOKEN": "***"}},
            output_log=str(self.log_dir / f"{name}.log"),
        )


@dataclass
class Served:
    url: str
    port: int
    bus: Bus
    harness: Harness
    control: ControlPlane
    client: httpx.AsyncClient
    log_dir: Path

    async def call(
        self, method: str, path: str, token: str | None = ADMIN, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.update(bearer(token))
        return await self.client.request(method, path, headers=headers, **kwargs)


@asynccontextmanager
async def serving_api(
    tmp_path: Path,
    *,
    loopback: bool = True,
    fsync: str = "batch",
    names: list[str] | None = None,
) -> AsyncIterator[Served]:
    log = EventLog(tmp_path / "events.jsonl", max_bytes=None, keep=2)
    bus = Bus(log, last_seq=log.open().last_seq, fsync=fsync)  # type: ignore[arg-type]
    cfg = validate_config({"frame_port": 0}, "test")
    state = RuntimeState(config=cfg, config_source="test")
    pool = SnapshotPool(bus, names=names or ["alpha", "beta"])
    pool.log_dir = tmp_path / "vms"
    pool.log_dir.mkdir()
    harness: Harness
    service = RunService(pool, bus, reload=lambda r: harness.reload(r))
    harness = Harness(service, pool, bus)
    control = ControlPlane(runs=service, pool=pool, bus=bus, state=state)  # type: ignore[arg-type]
    hub = WsHub(bus, cfg.websocket)
    app = create_app(
        state,
        bus,
        hub,
        Metrics(state, bus, hub),
        control=control,
        tokens=make_tokens(loopback=loopback),
    )
    door = FrontDoor(app, hub, graceful_s=1)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            async with trio.open_nursery() as work:
                await work.start(service.run)
                host, port = await work.start(door.run, await bind("127.0.0.1", 0), stop)
                state.set_phase(Phase.READY)
                url = f"http://{host}:{port}"
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    yield Served(url, port, bus, harness, control, client, pool.log_dir)
                stop.set()
                work.cancel_scope.cancel()
            await bus.aclose()
    finally:
        log.close()
