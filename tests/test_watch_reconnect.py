"""The view's reconnect guarantee (SPEC §10): when the instance goes away it says so, keeps the
picture, retries, and resumes from the last seq it saw: nothing is missed or shown twice.

The real view (`App.run`: the stream, the snapshots, the model) against the real HTTP surface
and /ws/events through a TCP forwarder that can cut every connection and refuse new ones while
events go on being published, then let it back in. (tests/test_watch_e2e.py restarts a real
`frameos run` under the view in tmux; this counts every event.)"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import trio
from rich.console import Console

from frameos.client.api import Api
from frameos.client.discover import Target
from frameos.events import Message
from frameos.watch.app import App
from tests.api_helpers import ADMIN, serving_api
from tests.conftest import until


class Cutter:
    """A TCP forwarder to `port`; `cut()` ends every connection and refuses new ones until
    `mend()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up = True
        self.scopes: set[trio.CancelScope] = set()

    async def handle(self, client: trio.SocketStream) -> None:
        if not self.up:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self.scopes.add(scope)
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.port)
                async with client, server, trio.open_nursery() as nursery:
                    nursery.start_soon(self.pump, client, server, nursery.cancel_scope)
                    nursery.start_soon(self.pump, server, client, nursery.cancel_scope)
            finally:
                self.scopes.discard(scope)

    @staticmethod
    async def pump(src: trio.SocketStream, dst: trio.SocketStream, both: trio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send_all(chunk)
        except trio.BrokenResourceError:
            pass
        both.cancel()

    def cut(self) -> None:
        self.up = False
        for scope in self.scopes:
            scope.cancel()

    def mend(self) -> None:
        self.up = True


async def keys_until(quit: trio.Event):  # type: ignore[no-untyped-def]
    await quit.wait()
    return
    yield  # pragma: no cover  (an async iterator of no keys)


async def test_a_cut_resumes_from_the_last_seq_nothing_missed_nothing_twice(
    tmp_path: Path,
) -> None:
    async with serving_api(tmp_path) as served, trio.open_nursery() as nursery:
        cutter = Cutter(served.port)
        listeners = await nursery.start(partial(trio.serve_tcp, cutter.handle, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        console = Console(width=120, height=40, force_terminal=True, file=io.StringIO())

        def publish(count: int, what: str) -> int:
            for index in range(count):
                head = served.bus.publish_nowait(Message(text=f"{what} {index}"), "info").seq
            return head

        async with Api(Target(url, ADMIN, None, (), None, None), timeout=5) as api:
            app = App(api, console)
            model = app.model
            before = publish(50, "before")  # the view replays the last ones at start
            nursery.start_soon(app.run, keys_until(app.quit))
            await until(lambda: model.seq >= before and model.connection == "connected", 30)

            for round_ in range(3):
                head = publish(60, f"live {round_}")
                await until(lambda: model.seq >= head)  # noqa: B023
                cutter.cut()
                await until(lambda: model.connection.startswith("disconnected"))
                head = publish(60, f"unseen {round_}")  # published while the view is away
                assert model.seq < head  # it did not see them
                cutter.mend()
                await until(lambda: model.seq >= head and model.connection == "connected")  # noqa: B023

            app.quit.set()
        nursery.cancel_scope.cancel()

    shown = [m.seq for m in model.messages if m.name == Message.NAME]  # 410 of 500 kept
    assert shown == list(range(shown[0], head + 1))  # every one once, in order
    assert shown[0] <= before - 49  # from the replay at start on
