"""Following an instance's events (frameos/client/stream.py) against the real server in-process:
an idle wait that is asked again until its caller says stop, on the websocket and on the
polling fallback, and a token refused at the websocket handshake (not retried)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from frameos.client import stream
from frameos.client.api import Api, TokenRefused
from frameos.client.discover import Target
from frameos.envelope import Envelope
from frameos.events import Message
from tests.api_helpers import serving_api
from tests.test_server import serving

IDLE_S = 0.05
Follow = Callable[..., Awaitable[int]]


class Idle:
    """on_idle: "not yet" `times` times, then "stop"; counts the calls."""

    def __init__(self, times: int) -> None:
        self.times, self.calls = times, 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.times


@pytest.mark.parametrize("follow", [stream.follow_ws, stream.poll_http], ids=["ws", "polling"])
async def test_an_idle_follow_asks_again_until_told_to_stop(tmp_path: Path, follow: Follow) -> None:
    async with serving(tmp_path) as server:
        for index in range(3):
            await server.bus.publish(Message(text=f"before {index}"))
        seen: list[int] = []

        def handle(envelope: Envelope) -> bool:
            seen.append(envelope.seq)
            return False  # never done: only on_idle ends it

        idle = Idle(times=2)
        async with Api(Target(server.url, None, None, (), None, None)) as api:
            with trio.fail_after(20):
                last = await follow(api, 0, handle, idle_s=IDLE_S, on_idle=idle)
    assert seen == [1, 2, 3] and last == 3
    assert idle.calls == 3  # "not yet" twice: it kept waiting; then it ended at the cursor


async def test_a_token_refused_at_the_websocket_is_not_retried(tmp_path: Path) -> None:
    async with serving_api(tmp_path, loopback=False) as served:
        target = Target(served.url, None, None, ("$FRAMEOS_TOKEN_FILE (unset)",), None, None)
        async with Api(target) as api:
            with trio.fail_after(20), pytest.raises(TokenRefused, match=r"wants an API token"):
                await stream.follow_ws(api, 0, lambda e: True)
