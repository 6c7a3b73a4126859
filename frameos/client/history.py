"""`frameos events [--since SEQ] [--follow] [--vm NAME] [--json] [--url URL]`: the log file
(EventLog.read_after pages, no server needed), or a running instance (`--url`): `/v1/events`
pages, then `/ws/events?since=` for `--follow`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from frameos.client.discover import ClientError, Target
from frameos.client.output import warn
from frameos.envelope import Envelope, decode
from frameos.errors import StaleCursorError
from frameos.eventlog import EventLog

Handler = Callable[[Envelope], bool]
PAGE = 1000
LOG_POLL_S = 0.25  # how often `events --follow` looks at the log file for new lines


def matcher(vm: str | None, show: Callable[[Envelope], None]) -> Handler:
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


async def from_file(path: Path, keep: int, since: int, handle: Handler, *, follow: bool) -> int:
    await read_log(EventLog(path, keep=keep), since, handle, follow=follow)  # a reader: no lock
    return 0


async def read_log(log: EventLog, after: int, handle: Handler, *, follow: bool) -> int:
    """Events after `after` from the log file (no server needed); with `follow`, then every
    new one as it is written (polled). Returns the last seq handled."""
    cursor = after
    while True:
        try:
            page = await trio.to_thread.run_sync(log.read_after, cursor, PAGE)
        except StaleCursorError as exc:
            warn(f"events after {exc.requested} are no longer in the log; from {exc.oldest} on")
            cursor = exc.oldest - 1
            continue
        for line in page.lines:
            envelope = decode(line)
            cursor = envelope.seq
            if handle(envelope):
                return cursor
        if not page.lines:
            if not follow:
                return cursor
            await trio.sleep(LOG_POLL_S)


async def from_instance(target: Target, since: int, handle: Handler, *, follow: bool) -> int:
    from frameos.client.api import Api  # the HTTP client, only when asked for an instance
    from frameos.client.stream import follow_ws, head, read_http

    async with Api(target) as api:
        cursor, _ = await read_http(api, since, handle)
        if follow:
            # a --since past the head: the websocket refuses a cursor ahead of the log, so start
            # at the head and skip what is not after --since
            start = min(cursor, await head(api))
            await follow_ws(api, start, lambda e: e.seq > since and handle(e))
    return 0
