"""External workers (SPEC §7.3 /v1/workers): the status state machine, staleness on the trio
clock (autojump: no real waiting), and owner scoping over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from frameos import events as ev
from frameos.server.extworkers import (
    MOVES,
    WorkerError,
    WorkerRegistration,
    WorkerRegistry,
    WorkerState,
)
from tests.api_helpers import READER, serving_api


class Recorder:
    """What the registry needs of the bus."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def publish_nowait(self, event: ev.Event, severity: Any = None) -> None:
        self.events.append(event)


def registry() -> tuple[WorkerRegistry, Recorder]:
    bus = Recorder()
    return WorkerRegistry(bus, clock=lambda: 1000.0), bus  # type: ignore[arg-type]


async def test_status_moves_follow_the_table() -> None:
    reg, bus = registry()
    reg.register(WorkerRegistration(id="w", ttl_s=5), "me")
    path = [
        WorkerState.RUNNING,
        WorkerState.STOPPING,
        WorkerState.FAILED,
        WorkerState.STARTING,
        WorkerState.RUNNING,
        WorkerState.STOPPING,
        WorkerState.STOPPED,
        WorkerState.STARTING,
    ]
    for to in path:
        assert reg.move("w", to, "me").status is to
    moves = [(e.from_, e.to) for e in bus.events if isinstance(e, ev.WorkerStatus)]
    assert moves[0] == ("starting", "running") and len(moves) == len(path)
    # every move the table does not hold is refused with 409, from every state
    for state in WorkerState:
        for to in WorkerState:
            if to in MOVES[state]:
                continue
            reg._entries["w"].worker = reg.get("w").model_copy(update={"status": state})
            with pytest.raises(WorkerError) as refused:
                reg.move("w", to, "me")
            assert refused.value.status == 409 and refused.value.code == "illegal_transition"
            assert reg.get("w").status is state


async def test_owner_scoping() -> None:
    reg, bus = registry()
    worker, created = reg.register(WorkerRegistration(id="w", ttl_s=5), "alice")
    assert created and worker.owner == "alice" and worker.status is WorkerState.STARTING
    assert isinstance(bus.events[0], ev.WorkerRegistered)
    for attempt in (
        lambda: reg.heartbeat("w", "bob"),
        lambda: reg.move("w", WorkerState.RUNNING, "bob"),
        lambda: reg.register(WorkerRegistration(id="w", ttl_s=5), "bob"),
        lambda: reg.register(WorkerRegistration(id="x", owner="alice", ttl_s=5), "bob"),
    ):
        with pytest.raises(WorkerError) as refused:
            attempt()
        assert (refused.value.status, refused.value.code) == (403, "not_owner")
    again, created = reg.register(WorkerRegistration(id="w", ttl_s=9), "alice")
    assert not created and again.ttl_s == 9
    with pytest.raises(WorkerError) as missing:
        reg.heartbeat("nope", "alice")
    assert missing.value.status == 404


async def test_stale_after_ttl_and_back_with_a_heartbeat(autojump_clock: Any) -> None:
    reg, bus = registry()
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        reg.register(WorkerRegistration(id="w", ttl_s=10), "me")
        reg.register(WorkerRegistration(id="quiet", ttl_s=30), "me")
        start = trio.current_time()
        for _ in range(3):  # heartbeats every 8 s keep it fresh
            await trio.sleep(8)
            reg.heartbeat("w", "me")
        assert not reg.get("w").stale and not any(isinstance(e, ev.WorkerStale) for e in bus.events)
        await trio.sleep(10.5)
        stale = [e for e in bus.events if isinstance(e, ev.WorkerStale)]
        assert [e.worker_id for e in stale] == ["quiet", "w"]  # quiet at 30 s, w at 24 + 10
        assert stale[0].last_heartbeat_age_s == pytest.approx(30, abs=0.01)
        assert stale[1].last_heartbeat_age_s == pytest.approx(10, abs=0.01)
        assert reg.get("w").stale and trio.current_time() - start == pytest.approx(34.5)
        await trio.sleep(100)  # stale once, not again and again
        assert len([e for e in bus.events if isinstance(e, ev.WorkerStale)]) == 2
        assert not reg.heartbeat("w", "me").stale
        reg.move("quiet", WorkerState.RUNNING, "me")  # a status report is a sign of life
        reg.move("quiet", WorkerState.STOPPING, "me")
        reg.move("quiet", WorkerState.STOPPED, "me")
        await trio.sleep(200)  # a stopped worker is never stale; `w` is, once more
        assert [e.worker_id for e in bus.events if isinstance(e, ev.WorkerStale)] == [
            "quiet",
            "w",
            "w",
        ]
        nursery.cancel_scope.cancel()


async def test_workers_over_http(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        owner = {"X-Frameos-Owner": "agent-1"}
        made = await api.call("POST", "/v1/workers", json={"id": "w1", "ttl_s": 30}, headers=owner)
        assert made.status_code == 201
        assert made.json()["owner"] == "agent-1" and made.json()["status"] == "starting"
        assert (
            await api.call("POST", "/v1/workers", json={"id": "w1", "ttl_s": 30}, headers=owner)
        ).status_code == 200
        other = await api.call("POST", "/v1/workers/w1/heartbeat", headers={"X-Frameos-Owner": "x"})
        assert other.status_code == 403 and other.json()["error"] == "not_owner"
        token_named = await api.call("POST", "/v1/workers/w1/heartbeat")  # the token's name
        assert token_named.status_code == 403
        beat = await api.call("POST", "/v1/workers/w1/heartbeat", headers=owner)
        assert beat.status_code == 200
        run = await api.call(
            "POST", "/v1/workers/w1/status", json={"status": "running"}, headers=owner
        )
        assert run.status_code == 200 and run.json()["status"] == "running"
        skip = await api.call(
            "POST", "/v1/workers/w1/status", json={"status": "stopped"}, headers=owner
        )
        assert skip.status_code == 409 and skip.json()["error"] == "illegal_transition"
        bad = await api.call(
            "POST", "/v1/workers/w1/status", json={"status": "dancing"}, headers=owner
        )
        assert bad.status_code == 422
        assert bad.json()["details"]["problems"][0]["path"] == "status"
        for body, path in [({"id": "", "ttl_s": 1}, "id"), ({"id": "w2", "ttl_s": 0}, "ttl_s")]:
            refused = await api.call("POST", "/v1/workers", json=body)
            assert (
                refused.status_code == 422
                and refused.json()["details"]["problems"][0]["path"] == path
            )
        listed = (await api.call("GET", "/v1/workers", token=READER)).json()["workers"]
        assert [w["id"] for w in listed] == ["w1"]
        assert (await api.call("GET", "/v1/workers/w1", token=READER)).json()["status"] == "running"
        assert (await api.call("GET", "/v1/workers/nope")).status_code == 404
        assert (
            await api.call("POST", "/v1/workers", token=READER, json={"id": "r", "ttl_s": 1})
        ).status_code == 403
        names = [e["event"] for e in _log(tmp_path)]
        assert ev.WorkerRegistered.NAME in names and ev.WorkerStatus.NAME in names


def _log(tmp_path: Path) -> list[dict[str, Any]]:
    import orjson

    return [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
