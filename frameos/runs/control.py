"""What the /v1 API is given to act on (interface R4): built by the supervisor, passed to
`create_app`. A plain holder: each part owns its facts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frameos.bus import Bus
    from frameos.runs.service import RunService
    from frameos.state import RuntimeState
    from frameos.workers.pool import VmPool


@dataclass
class ControlPlane:
    """The run service, the VM pool, the bus, the runtime state, and the registry of external
    workers (owned by the API: `None` until it builds one)."""

    runs: RunService
    pool: VmPool
    bus: Bus
    state: RuntimeState
    workers: Any = None
