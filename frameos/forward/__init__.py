"""Forwarding every event to a broker fleets already run: NATS JetStream (SPEC §12).

forwarder.py  the sink: owns the sender process, tells it the head, reports what it says
sender.py     the sender, a child process: reads the log after the cursor, publishes in order
jetstream.py  the JetStream side (in the sender, on asyncio): stream, last seq, pipelined publishes
cursor.py     the last seq the broker acknowledged, persisted in the state dir
follow.py     `frameos events --from nats://…`: the events of every host

`Forwarder` is imported on first use: the sender process imports this package too, and needs
none of the forwarder's (trio, the bus, the workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frameos.forward.forwarder import Forwarder, host_name

__all__ = ["Forwarder", "host_name"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from frameos.forward import forwarder

        return getattr(forwarder, name)
    raise AttributeError(f"module 'frameos.forward' has no attribute {name!r}")
