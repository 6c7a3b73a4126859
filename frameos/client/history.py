"""`frameos events [--since SEQ] [--follow] [--vm NAME] [--json] [--url URL]`: the log file
(EventLog.read_after pages, no server needed), or a running instance (`--url`): `/v1/events`
pages, then `/ws/events?since=` for `--follow`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from frameos.client.api import Api
from frameos.client.discover import ClientError, Target
from frameos.client.stream import follow_ws, open_log, read_http, read_log
from frameos.envelope import Envelope


def matcher(vm: str | None, show: Callable[[Envelope], None]) -> Callable[[Envelope], bool]:
    """The handler: shows every event (or only those with `vm` == vm); never stops."""

    def handle(envelope: Envelope) -> bool:
        if vm is None or envelope.fields().get("vm") == vm:
            show(envelope)
        return False

    return handle


def require_log(path: Path) -> None:
    if not path.exists():
        raise ClientError(
            f"no event log at {path}: has frameos run with this config? pass --event-log PATH, "
            "or --url URL to ask a running instance"
        )


async def from_file(
    path: Path, keep: int, since: int, handle: Callable[[Envelope], bool], *, follow: bool
) -> int:
    await read_log(open_log(path, keep), since, handle, follow=follow)
    return 0


async def from_instance(
    target: Target, since: int, handle: Callable[[Envelope], bool], *, follow: bool
) -> int:
    async with Api(target) as api:
        cursor, _ = await read_http(api, since, handle)
        if follow:
            await follow_ws(api, cursor, handle)
    return 0
