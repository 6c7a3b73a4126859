"""A RunService on a real bus and event log, driving a fake pool (tests of frameos.runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import trio

from frameos import events as ev
from frameos.bus import Bus
from frameos.errors import FrameosError
from frameos.eventlog import EventLog
from frameos.runs import Run, RunService


class OpFailed(FrameosError):
    """What the fake pool raises when told to fail (the real one: OperationFailed)."""


@dataclass
class FakePool:
    """The R2 operations: each publishes a VM event with the run id, then waits at its gate
    (when one is set) or fails (when told to)."""

    bus: Bus
    names: list[str] = field(default_factory=lambda: ["alpha", "beta"])
    gates: dict[tuple[str, str], trio.Event] = field(default_factory=dict)
    fail: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    unwound: list[tuple[str, str]] = field(default_factory=list)  # ops ended by cancellation

    async def _op(self, op: str, name: str, run_id: str | None) -> None:
        self.calls.append((op, name, run_id))
        await self.bus.publish(ev.Message(text=f"{op} {name}", run_id=run_id))
        try:
            gate = self.gates.get((op, name))
            if gate is not None:
                await gate.wait()
        except trio.Cancelled:
            self.unwound.append((op, name))
            raise
        if (op, name) in self.fail:
            raise OpFailed(self.fail[(op, name)])

    async def start_vm(self, name: str, *, run_id: str | None = None) -> None:
        await self._op("start", name, run_id)

    async def stop_vm(
        self, name: str, *, run_id: str | None = None, reason: str = "operator"
    ) -> None:
        await self._op("stop", name, run_id)

    async def restart_vm(self, name: str, *, run_id: str | None = None) -> None:
        await self._op("restart", name, run_id)

    async def bootstrap_vm(self, name: str, *, run_id: str | None = None) -> None:
        await self._op("bootstrap", name, run_id)

    async def clean_vm(self, name: str, *, run_id: str | None = None) -> None:
        await self._op("clean", name, run_id)


@dataclass
class Harness:
    service: RunService
    pool: FakePool
    bus: Bus
    reload_errors: list[str | None] = field(default_factory=list)
    reload_gate: trio.Event | None = None

    async def reload(self, run_id: str) -> str | None:
        await self.bus.publish(ev.RuntimeReload(changed=[], run_id=run_id))
        if self.reload_gate is not None:
            await self.reload_gate.wait()
        return self.reload_errors.pop(0) if self.reload_errors else None

    async def ended(self, run_id: str) -> Run:
        """The run once it has ended (bounded)."""
        with trio.fail_after(5):
            return await self.service.wait(run_id)


def log_at(directory: Path, max_bytes: int | None = None, keep: int = 5) -> EventLog:
    log = EventLog(directory / "events.jsonl", max_bytes=max_bytes, keep=keep)
    log.open()
    return log


@asynccontextmanager
async def running_service(
    directory: Path, names: list[str] | None = None, max_bytes: int | None = None, keep: int = 5
) -> AsyncIterator[Harness]:
    """A service on a fresh bus over `directory`'s log; closed (service, then bus) on exit."""
    log = log_at(directory, max_bytes, keep)
    last = log.head_seq()
    bus = Bus(log, last_seq=last)
    pool = FakePool(bus, names=names or ["alpha", "beta"])
    harness: Harness
    try:
        async with trio.open_nursery() as outer:
            await outer.start(bus.run)
            async with trio.open_nursery() as work:
                harness = Harness(
                    RunService(pool, bus, reload=lambda r: harness.reload(r)), pool, bus
                )
                await work.start(harness.service.run)
                yield harness
                work.cancel_scope.cancel()
            await bus.aclose()
    finally:
        log.close()


def logged(directory: Path) -> list[dict[str, object]]:
    """Every envelope in the log, parsed."""
    text = (directory / "events.jsonl").read_bytes()
    return [orjson.loads(line) for line in text.splitlines()]


def names_of(envelopes: list[dict[str, object]]) -> list[object]:
    return [e["event"] for e in envelopes]
