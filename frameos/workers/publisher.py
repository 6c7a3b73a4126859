"""What the workers need of the bus: publish, waiting or not (the Bus is one; tests fake it)."""

from __future__ import annotations

from typing import Protocol

from frameos.events import Event, Severity


class Publisher(Protocol):
    """`frameos.bus.Bus` satisfies this."""

    async def publish(self, event: Event, severity: Severity | None = None) -> object: ...

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> object: ...
