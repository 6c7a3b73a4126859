"""Event sources for the client from a running instance: `/v1/events` pages and `/ws/events`
(the log file is read by history.py, without the HTTP client).

Each calls `handle(envelope)` for every event in seq order and stops when it returns True (the
client found what it waited for). The websocket follower reconnects with `?since=` the last seq
it handed on, so a dropped connection loses or repeats nothing; a cursor the log no longer
retains is said on stderr and reading resumes at the oldest event retained.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

from frameos.client.api import Api, ClientError, unreachable
from frameos.client.output import warn
from frameos.envelope import Envelope, decode

Handler = Callable[[Envelope], bool]
_DECODER = json.JSONDecoder()
PAGE = 1000
POLL_S = 0.25  # how often /v1/events is asked when the websocket is refused
WS_CONNECT_S = 10.0
WS_CLOSE_S = 2.0
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.2, 2.0
RECONNECT_GIVE_UP_S = 15.0  # an instance gone this long is reported unreachable


async def read_http(api: Api, after: int, handle: Handler) -> tuple[int, bool]:
    """`GET /v1/events` pages from `after` until the replay is complete.
    Returns (the last seq handled, whether `handle` said stop)."""
    cursor = after
    while True:
        response = await api.send("GET", "/v1/events", params={"after": cursor, "limit": PAGE})
        if response.status_code == 410:
            details = api.parse(response, "GET", "/v1/events").get("details", {})
            oldest = int(details["oldest_available_cursor"])
            warn(f"events after {cursor} are no longer retained; from {oldest + 1} on")
            cursor = oldest
            continue
        if response.status_code == 400 and _ahead(api, response):
            return cursor, False  # a cursor past the head: nothing to read (yet)
        if response.status_code != 200:
            raise await api.refusal(response, "GET", "/v1/events")
        body = api.parse(response, "GET", "/v1/events")
        for raw in raw_events(response.text, len(body["events"])):
            envelope = decode(raw.encode())
            cursor = envelope.seq
            if handle(envelope):
                return cursor, True
        if body["replay_complete"] or not body["events"]:
            return cursor, False


def _ahead(api: Api, response: httpx.Response) -> bool:
    """A 400 invalid_cursor: the cursor is ahead of the instance's newest event."""
    body = api.parse(response, "GET", "/v1/events")
    return isinstance(body, dict) and body.get("error") == "invalid_cursor"


def raw_events(text: str, count: int) -> list[str]:
    """The `events` array's items as the server wrote them (the envelope bytes, not a
    re-serialization: SPEC §3.1 wants the same bytes on every transport)."""
    start = text.index('"events"')
    index = text.index("[", start) + 1
    items: list[str] = []
    for _ in range(count):
        while text[index] in " \t\r\n,":
            index += 1
        _, end = _DECODER.raw_decode(text, index)
        items.append(text[index:end])
        index = end
    return items


async def head(api: Api) -> int:
    """The newest seq in the instance's log: `head_cursor` of a one-event page (or of the 410
    that says the log no longer starts at 1)."""
    response = await api.send("GET", "/v1/events", params={"after": 0, "limit": 1})
    if response.status_code == 410:
        return int(api.parse(response, "GET", "/v1/events")["details"]["head_cursor"])
    if response.status_code != 200:
        raise await api.refusal(response, "GET", "/v1/events")
    return int(api.parse(response, "GET", "/v1/events")["head_cursor"])


async def follow_ws(
    api: Api,
    since: int,
    handle: Handler,
    *,
    idle_s: float | None = None,
    on_idle: Callable[[], Awaitable[bool]] | None = None,
) -> int:
    """Every event after `since` from `/ws/events?since=` (a replay from the log, then live),
    until `handle` returns True. After `idle_s` without an event, `on_idle()` may end the wait
    (True). Reconnects after a drop; ClientError when the instance stays gone."""
    cursor = since
    delay, gone_since = RECONNECT_FIRST_S, None
    headers = [(k.encode(), v.encode()) for k, v in api.target.headers.items()]
    while True:
        url = f"{api.target.ws_url}/ws/events?since={cursor}"
        try:
            async with open_websocket_url(
                url,
                extra_headers=headers,
                connect_timeout=WS_CONNECT_S,
                disconnect_timeout=WS_CLOSE_S,
            ) as ws:
                delay, gone_since = RECONNECT_FIRST_S, None
                while True:
                    message = None
                    with trio.move_on_after(idle_s if idle_s is not None else float("inf")):
                        message = await ws.get_message()
                    if message is None:
                        if on_idle is not None and await on_idle():
                            return cursor
                        continue
                    data = message.encode() if isinstance(message, str) else message
                    try:
                        envelope = decode(data)
                    except ValueError:
                        continue  # not an envelope (a consumer ignores what it does not know)
                    if envelope.seq <= cursor:
                        continue  # never twice, whatever a reconnect replays
                    cursor = envelope.seq
                    if handle(envelope):
                        return cursor
        except ConnectionRejected as exc:
            response = httpx.Response(exc.status_code, content=exc.body or b"")
            if exc.status_code == 410:
                details = api.parse(response, "GET", "/ws/events").get("details", {})
                oldest = int(details["oldest_available_cursor"])
                warn(f"events after {cursor} are no longer retained; from {oldest + 1} on")
                cursor = oldest
                continue
            if exc.status_code in (401, 403):
                raise await api.refusal(response, "GET", "/ws/events") from None
            warn(f"/ws/events refused (HTTP {exc.status_code}): polling /v1/events instead")
            return await poll_http(api, cursor, handle, idle_s=idle_s, on_idle=on_idle)
        except (ConnectionClosed, HandshakeError, OSError) as exc:
            now = trio.current_time()
            gone_since = now if gone_since is None else gone_since
            if now - gone_since > RECONNECT_GIVE_UP_S:
                raise unreachable(api.target, _why(exc)) from None
            if on_idle is not None and await _quietly(on_idle):
                return cursor
        await trio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)


async def poll_http(
    api: Api,
    since: int,
    handle: Handler,
    *,
    idle_s: float | None = None,
    on_idle: Callable[[], Awaitable[bool]] | None = None,
) -> int:
    """follow_ws without the websocket: `/v1/events` pages every POLL_S."""
    cursor, quiet = since, 0.0
    while True:
        before = cursor
        cursor, stop = await read_http(api, cursor, handle)
        if stop:
            return cursor
        if cursor != before:
            quiet = 0.0
            continue
        quiet += POLL_S
        if on_idle is not None and idle_s is not None and quiet >= idle_s:
            quiet = 0.0
            if await on_idle():
                return cursor
        await trio.sleep(POLL_S)


async def _quietly(on_idle: Callable[[], Awaitable[bool]]) -> bool:
    """on_idle(), where an unreachable instance means "not yet" (the reconnect loop decides)."""
    try:
        return await on_idle()
    except ClientError:
        return False


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "the websocket closed" if isinstance(exc, ConnectionClosed) else type(exc).__name__
