"""All the VMs of one instance (SPEC §5, §7.1): started together, stopped together.

`run` goes in the supervisor's inner nursery (`await inner.start(pool.run)` returns once every
VM has launched or failed to launch); `stop` runs every VM's ladder in parallel and returns
when all are down. Cancelling the nursery that runs `run` does the same (each ladder shielded
and bounded by its rungs' timeouts), so shutdown can be done by nesting; `force` cuts the
running ladders short (SIGKILL, bounded). The pool also answers /healthz (`workers`), /readyz
(reasons per VM) and /metrics (`frameos_vm_*`), and stops what a killed instance left: bootstrap
steps, stop commands, and VMs under names no longer in the config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from frameos import events as ev
from frameos.config import FrameConfig
from frameos.state import RuntimeState, WorkerCounts
from frameos.workers.orphans import clean_up_after, stop_helpers
from frameos.workers.publisher import Publisher
from frameos.workers.vm import Spawner, VmState, VmWorker, default_spawner

# The exit status of `frameos run` when a VM with `on_exhausted: exit` gave up.
EXIT_EXHAUSTED = 3


class VmPool:
    """The VM workers of one `frameos run`."""

    def __init__(
        self,
        config: FrameConfig,
        publisher: Publisher,
        *,
        on_exhausted: Callable[[str], None] | None = None,
        base_env: Mapping[str, str] | None = None,
        spawner: Spawner = default_spawner,
    ) -> None:
        assert config.state_dir is not None, "resolve() fills state_dir"
        self.state_dir: Path = config.state_dir
        self.publisher = publisher
        self.workers = [
            VmWorker(
                vm,
                self.state_dir,
                publisher,
                on_exhausted=on_exhausted,
                base_env=base_env,
                spawner=spawner,
            )
            for vm in config.vms
        ]

    @property
    def restarts(self) -> int:
        """Restarts granted so far, over every VM (the `summary` figure)."""
        return sum(w.restarts for w in self.workers)

    def counts(self) -> WorkerCounts:
        states = [w.state for w in self.workers]
        failed = sum(
            1
            for w in self.workers
            if w.state is VmState.GAVE_UP or (w.state is VmState.FINISHED and w.last_abnormal)
        )
        return WorkerCounts(total=len(states), running=states.count(VmState.RUNNING), failed=failed)

    def not_ready_reasons(self) -> list[str]:
        return [reason for w in self.workers for reason in w.not_ready_reasons()]

    def attach(self, state: RuntimeState) -> None:
        """Answer /healthz `workers` and /readyz for these VMs."""
        state.not_ready_providers.append(self.not_ready_reasons)
        state.worker_counts = self.counts

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every VM until `stop`; `started` once each launched or failed to launch.

        First, whatever a killed instance left running is stopped: its bootstrap steps and
        stop commands (a bounded kill), VMs no longer configured (their ladder); each
        configured VM's worker stops its own orphan before launching.
        Cancellation stops every VM through its ladder (shielded, bounded; see `force`).
        """
        async with trio.open_nursery() as cleaning:
            cleaning.start_soon(stop_helpers, self.state_dir, self.publisher)
            cleaning.start_soon(self._stop_unknown_orphans)
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:
                for worker in self.workers:
                    starting.start_soon(nursery.start, worker.run)
            task_status.started(len(self.workers))

    async def stop(self, reason: str) -> None:
        """Run the ladder of every VM in parallel; return when all have stopped."""
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(worker.stop, reason)

    def force(self) -> None:
        """Cut every running ladder short: each VM's group is SIGKILLed at once (bounded).
        For a second stop signal while `stop` (or the cancellation of `run`) is under way."""
        for worker in self.workers:
            worker.force()

    async def on_reload(self, new: FrameConfig, changed: list[str]) -> None:
        """A reload hook: VM changes are not applied live; say so. Running VMs keep the
        settings they were launched with, their ladder's timeouts included."""
        vm_changes = [path for path in changed if path == "vms" or path.startswith("vms.")]
        if vm_changes:
            await self.publisher.publish(
                ev.Message(
                    text="VM configuration changed: takes effect after a restart of frameos "
                    "(running VMs keep their current settings)"
                ),
                "warn",
            )

    async def _stop_unknown_orphans(self) -> None:
        """Pidfiles of VMs no longer configured: their processes still go through the ladder."""
        known = {w.name for w in self.workers}
        directory = self.state_dir / "vms"
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        async with trio.open_nursery() as nursery:
            for name in names:
                if name.endswith(".pid") and name[:-4] not in known:
                    nursery.start_soon(
                        clean_up_after, name[:-4], directory / name, None, self.publisher
                    )

    def collector(self) -> Collector:
        return PoolCollector(self)


class PoolCollector(Collector):
    """`frameos_vm_state`, `frameos_vm_restarts`, `frameos_vm_uptime_seconds` per VM."""

    def __init__(self, pool: VmPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "frameos_vm_state", "1 for the state each VM is in", labels=["vm", "state"]
        )
        restarts = CounterMetricFamily("frameos_vm_restarts", "Restarts of each VM", labels=["vm"])
        uptime = GaugeMetricFamily(
            "frameos_vm_uptime_seconds", "Seconds since the running VM was launched", labels=["vm"]
        )
        for worker in self.pool.workers:
            for value in VmState:
                state.add_metric([worker.name, value.value], 1 if worker.state is value else 0)
            restarts.add_metric([worker.name], worker.restarts)
            uptime.add_metric([worker.name], _uptime(worker))
        yield state
        yield restarts
        yield uptime


def _uptime(worker: VmWorker) -> float:
    try:
        return worker.uptime_s()
    except RuntimeError:  # outside trio (a scrape from a test's thread): unknown
        return 0.0
