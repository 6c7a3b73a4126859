"""`frameos logs VM [--follow] [--lines N]`: the VM's output file, through
`GET /v1/vms/{name}/log?offset=N&limit=BYTES` ({data, next_offset, size, rotated})."""

from __future__ import annotations

import sys
from typing import Any

import trio

from frameos.client.api import Api, ClientError
from frameos.client.discover import Target
from frameos.client.output import warn

CHUNK = 64 * 1024  # bytes asked for per request
TAIL_MAX = 16 << 20  # --lines never reads more than this much of the file's end
POLL_S = 0.5  # how often --follow asks for more


async def logs(target: Target, vm: str, *, lines: int, follow: bool) -> int:
    async with Api(target) as api:
        path = f"/v1/vms/{vm}/log"

        async def read(offset: int, limit: int = CHUNK) -> dict[str, Any]:
            _, body = await api.call("GET", path, params={"offset": offset, "limit": limit}, vm=vm)
            if not isinstance(body, dict) or "next_offset" not in body:
                raise ClientError(f"{target.url}{path} answered without next_offset: not frameos?")
            return body

        size = int((await read(0, 1))["size"])
        text, offset = await _tail(read, size, lines)
        _write(text)
        while follow:
            body = await read(offset)
            if body.get("rotated"):
                warn(f"{vm}'s output file was rotated; reading the new one from its start")
            _write(_data(body))
            if int(body["next_offset"]) == offset:
                await trio.sleep(POLL_S)
            offset = int(body["next_offset"])
        return 0


async def _tail(read: Any, size: int, lines: int) -> tuple[str, int]:
    """The last `lines` lines below byte `size` (read backwards in growing windows), and the
    offset to follow from."""
    window = CHUNK
    while True:
        start = max(0, size - window)
        text, offset = "", start
        while offset < size:
            body = await read(offset, min(CHUNK, size - offset))
            if int(body["next_offset"]) <= offset:
                break
            text += _data(body)
            offset = int(body["next_offset"])
        if start == 0 or text.count("\n") > lines or window >= TAIL_MAX:
            break
        window *= 4
    kept = text.splitlines(keepends=True)
    if start > 0:
        kept = kept[1:]  # the first line may be cut
    return "".join(kept[-lines:] if lines > 0 else []), offset


def _data(body: dict[str, Any]) -> str:
    return str(body.get("data", ""))


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
