"""What the running supervisor knows about itself: read by /healthz, /readyz, /metrics, the
tickers and the systemd notifier; written by the components that own each fact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from frameos import __version__
from frameos.config import FrameConfig


class Phase(Enum):
    """The supervisor's lifecycle; moves forward only."""

    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"

    def advance(self, to: Phase) -> Phase:
        order = list(Phase)
        if order.index(to) < order.index(self):
            raise ValueError(f"illegal phase transition {self.value} → {to.value}")
        return to


@dataclass(frozen=True)
class WorkerCounts:
    total: int = 0
    running: int = 0
    failed: int = 0


@dataclass
class RuntimeState:
    """Mutable facts of one `frameos run`."""

    config: FrameConfig
    config_source: str
    apps_loaded: int = 0
    scenes_loaded: int = 0
    version: str = __version__
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    phase: Phase = Phase.STARTING
    server_url: str = ""
    heartbeats: int = 0
    metrics_ticks: int = 0
    last_heartbeat_mono: float = 0.0
    last_heartbeat_lag_ms: float = 0.0
    # Providers filled in by the components that own the facts (workers, websocket hub).
    not_ready_providers: list[Callable[[], list[str]]] = field(default_factory=list)
    worker_counts: Callable[[], WorkerCounts] = WorkerCounts

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono

    def set_phase(self, phase: Phase) -> None:
        self.phase = self.phase.advance(phase)

    def not_ready_reasons(self) -> list[str]:
        """Why /readyz is 503; empty when ready. The one list of reasons: /readyz, `frameos
        status` (which reads /readyz) and the systemd STATUS line all show it. While starting,
        "starting" first, then what the VMs are waiting for."""
        if self.phase not in (Phase.STARTING, Phase.READY):
            return [f"shutdown in progress ({self.phase.value})"]
        return (
            ["starting", *self.vm_reasons()] if self.phase is Phase.STARTING else self.vm_reasons()
        )

    def vm_reasons(self) -> list[str]:
        """What the components (the VMs) hold readiness back for, whatever the phase."""
        return [reason for provider in self.not_ready_providers for reason in provider()]
