"""An asyncio event loop in its own thread, called from trio with a deadline.

nats-py is asyncio-only. Rather than run trio on top of asyncio (trio-asyncio), the client gets
a loop of its own in one daemon thread; trio hands it coroutines with `call` and waits, with a
deadline, for the result. One call is in flight per caller at a time, so the hand-over is
bounded by construction. Cancelling the trio side cancels the asyncio task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")
START_S = 5.0
STOP_S = 5.0


class AsyncioThread:
    """`async with AsyncioThread() as loop: await loop.call(coro, deadline_s)`."""

    def __init__(self, name: str = "frameos-asyncio") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    async def __aenter__(self) -> AsyncioThread:
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        ok = await trio.to_thread.run_sync(self._ready.wait, START_S, abandon_on_cancel=True)
        if not ok or self._loop is None:
            raise RuntimeError(f"{self.name}: the asyncio loop did not start in {START_S:g} s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with trio.CancelScope(shield=True):
            with contextlib.suppress(RuntimeError):  # already closed
                loop.call_soon_threadsafe(loop.stop)
            await trio.to_thread.run_sync(thread.join, STOP_S, abandon_on_cancel=True)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
            # what is still pending (a call abandoned by its deadline) is cancelled, not leaked
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    async def call(self, coro: Coroutine[Any, Any, T], deadline_s: float) -> T:
        """Run `coro` on the loop; its result, its exception, or trio.TooSlowError after
        `deadline_s` seconds (the coroutine is then cancelled)."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError(f"{self.name}: not started")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            with trio.fail_after(deadline_s):
                await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()
