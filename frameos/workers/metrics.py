"""The VMs' Prometheus figures: imported with the HTTP stack, never before the VMs launch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from frameos.workers.pool import uptime_s
from frameos.workers.vm import VmState

if TYPE_CHECKING:
    from frameos.workers.pool import VmPool


class PoolCollector(Collector):
    """`frameos_vm_state`, `frameos_vm_restarts`, `frameos_vm_uptime_seconds`,
    `frameos_vm_probe_failures` per VM."""

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
        failures = CounterMetricFamily(
            "frameos_vm_probe_failures",
            "Failed readiness/liveness probe attempts and missed watchdog pings of each VM",
            labels=["vm"],
        )
        for worker in self.pool.workers:
            for value in VmState:
                state.add_metric([worker.name, value.value], 1 if worker.state is value else 0)
            restarts.add_metric([worker.name], worker.restarts)
            uptime.add_metric([worker.name], uptime_s(worker))
            failures.add_metric([worker.name], worker.probe_failures)
        yield state
        yield restarts
        yield uptime
        yield failures
