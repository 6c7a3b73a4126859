"""Forwarding every event to a broker fleets already run: NATS JetStream (SPEC §12).

bridge.py     an asyncio loop in its own thread, called from trio with a deadline
nats.py       the JetStream side (runs on that loop): stream, last seq, ordered publishes
cursor.py     the last seq the broker acknowledged, persisted in the state dir
forwarder.py  the sink: reads the log after the cursor and publishes, in seq order
follow.py     `frameos events --from nats://…`: the events of every host
"""

from __future__ import annotations

from frameos.forward.forwarder import Forwarder, host_name

__all__ = ["Forwarder", "host_name"]
