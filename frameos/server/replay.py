"""The one replay path: cursors, pages from the log, and the error bodies both readers share.

`/v1/events` and the `/ws/events` replay both read through `read_page` (EventLog.read_after in
a worker thread, interface A), so they have one idea of "head" (the log's newest complete seq
at read time) and one 410 `stale_cursor` body (SPEC §4).
"""

from __future__ import annotations

import trio

from frameos.errors import StaleCursorError
from frameos.eventlog import EventLog, Page

PAGE = 1000
MAX_CURSOR_DIGITS = 18  # below 2**63; longer is a client bug, not a position in any log


class CursorError(ValueError):
    """A cursor parameter that is not a sequence number (HTTP 400)."""

    def __init__(self, name: str, raw: str) -> None:
        shown = raw if len(raw) <= 40 else f"{raw[:20]}…({len(raw)} characters)"
        super().__init__(
            f"{name} must be a non-negative integer sequence number (ASCII digits, at most "
            f"{MAX_CURSOR_DIGITS}), found {shown!r}; pass the seq of the last event you have, "
            "or 0 for everything retained"
        )
        self.name = name


def parse_cursor(raw: str | None, name: str, default: int) -> int:
    """A query parameter as a sequence number; CursorError names the parameter and the fix."""
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_CURSOR_DIGITS):
        raise CursorError(name, raw)
    return int(raw)


def error_body(code: str, message: str, **details: object) -> dict[str, object]:
    return {"error": code, "message": message, "details": details}


def stale_body(exc: StaleCursorError) -> dict[str, object]:
    return error_body(
        "stale_cursor",
        str(exc),
        requested_cursor=exc.requested,
        oldest_available_cursor=exc.oldest - 1,
        head_cursor=exc.head,
        recovery=f"resume from oldest_available_cursor ({exc.oldest - 1})",
    )


async def read_page(log: EventLog, after: int, limit: int = PAGE) -> Page:
    """Envelope lines after `after`, off the event loop; StaleCursorError when rotated away."""
    return await trio.to_thread.run_sync(log.read_after, after, limit)
