"""What the workers need of the bus: publish, waiting or not (the Bus is one; tests fake it).

`RunTagger` is the publisher of one VM worker: every event it passes on carries the `run_id`
of the operation in flight on that VM (R2: every event an op causes carries its run id), and
the worker sees each of its own events on the way (its snapshot's bootstrap steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from frameos.events import Event, Severity


class Publisher(Protocol):
    """`frameos.bus.Bus` satisfies this."""

    async def publish(self, event: Event, severity: Severity | None = None) -> object: ...

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> object: ...


class RunTagger:
    """Sets `run_id` (when the event model has the field) while an operation is in flight."""

    def __init__(self, inner: Publisher, observe: Callable[[Event], None] | None = None) -> None:
        self.inner, self.observe = inner, observe
        self.run_id: str | None = None

    def tag(self, event: Event) -> Event:
        run_id = self.run_id
        if (
            run_id is not None
            and "run_id" in type(event).model_fields
            and getattr(event, "run_id", None) is None
        ):
            event = event.model_copy(update={"run_id": run_id})
        if self.observe is not None:
            self.observe(event)
        return event

    async def publish(self, event: Event, severity: Severity | None = None) -> object:
        return await self.inner.publish(self.tag(event), severity)

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> object:
        return self.inner.publish_nowait(self.tag(event), severity)
