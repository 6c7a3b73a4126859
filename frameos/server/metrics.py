"""Prometheus exposition for /metrics (prometheus-client, its own registry, never the global).

Gauges and counters are read from the live objects at scrape time, so nothing on the event hot
path touches Prometheus. Other components (the VM workers) add their own collectors with
`registry.register`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from frameos.bus import Bus
from frameos.server.wsfast import WsHub
from frameos.state import RuntimeState

if TYPE_CHECKING:
    from frameos.forward import Forwarder


class RuntimeCollector(Collector):
    """Bus, websocket, ticker and worker figures of this instance."""

    def __init__(self, state: RuntimeState, bus: Bus, hub: WsHub) -> None:
        self.state, self.bus, self.hub = state, bus, hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state, bus, hub = self.state, self.bus, self.hub
        yield GaugeMetricFamily(
            "frameos_uptime_seconds", "Seconds since start", value=state.uptime()
        )
        yield GaugeMetricFamily(
            "frameos_ready",
            "1 when /readyz answers 200",
            value=0 if state.not_ready_reasons() else 1,
        )
        yield CounterMetricFamily(
            "frameos_events_published", "Events published on the bus", value=bus.published
        )
        yield CounterMetricFamily(
            "frameos_events_dropped",
            "Events dropped by observers (never by the log)",
            value=bus.dropped,
        )
        yield CounterMetricFamily(
            "frameos_event_log_bytes", "Bytes appended to the event log", value=bus.bytes_logged
        )
        yield GaugeMetricFamily(
            "frameos_event_seq", "Sequence number of the newest event", value=bus.last_seq
        )
        yield CounterMetricFamily(
            "frameos_event_log_write_errors",
            "Failed writes to the event log (retried; no event is lost)",
            value=bus.write_errors,
        )
        yield GaugeMetricFamily(
            "frameos_event_log_fault",
            "1 while the event log cannot be written (/healthz says degraded)",
            value=0 if bus.fault is None else 1,
        )
        yield CounterMetricFamily(
            "frameos_heartbeats", "Heartbeats emitted", value=state.heartbeats
        )
        yield GaugeMetricFamily(
            "frameos_loop_lag_seconds",
            "Lateness of the last heartbeat",
            value=state.last_heartbeat_lag_ms / 1000,
        )
        yield GaugeMetricFamily(
            "frameos_ws_clients", "Connected websocket clients", value=len(hub.clients)
        )
        yield CounterMetricFamily(
            "frameos_ws_connections", "Websocket connections accepted", value=hub.connected_total
        )
        yield CounterMetricFamily(
            "frameos_ws_clients_dropped",
            "Websocket clients dropped for falling behind",
            value=hub.dropped_slow,
        )
        yield CounterMetricFamily(
            "frameos_ws_clients_rejected",
            "Websocket upgrades refused with 503 past websocket.max_clients",
            value=hub.rejected_full,
        )
        yield CounterMetricFamily(
            "frameos_ws_frames", "Event frames handed to websocket clients", value=hub.frames_sent
        )
        yield CounterMetricFamily(
            "frameos_ws_protocol_errors",
            "Websocket clients closed for protocol errors",
            value=hub.protocol_errors,
        )
        counts = state.worker_counts()
        workers = GaugeMetricFamily(
            "frameos_workers", "Supervised workers by state", labels=["state"]
        )
        workers.add_metric(["total"], counts.total)
        workers.add_metric(["running"], counts.running)
        workers.add_metric(["failed"], counts.failed)
        yield workers


class ForwardCollector(Collector):
    """The NATS forwarder (SPEC §12): what the broker took, what waits, and the link."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        fw = self.forwarder
        yield CounterMetricFamily(
            "frameos_forward_events",
            "Events the broker acknowledged (this run)",
            value=fw.forwarded,
        )
        yield GaugeMetricFamily(
            "frameos_forward_pending",
            "Logged events the broker has not acknowledged",
            value=fw.pending,
        )
        yield GaugeMetricFamily(
            "frameos_forward_acked_seq", "The last seq the broker acknowledged", value=fw.acked
        )
        yield GaugeMetricFamily(
            "frameos_forward_connected", "1 while the broker is connected", value=int(fw.connected)
        )


class Metrics:
    """The registry plus the HTTP instruments the app updates per request."""

    def __init__(self, state: RuntimeState, bus: Bus, hub: WsHub) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(RuntimeCollector(state, bus, hub))
        self.http_requests = Counter(
            "frameos_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "frameos_http_request_duration_seconds",
            "HTTP request handling time by route",
            ["route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
