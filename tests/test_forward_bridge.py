"""The asyncio thread behind the forwarder: results, exceptions and deadlines cross into trio."""

from __future__ import annotations

import asyncio

import pytest
import trio

from frameos.forward.bridge import AsyncioThread


async def test_a_result_and_an_exception_cross_over() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise ValueError("broker said no")

    async with AsyncioThread() as loop:
        assert await loop.call(answer(), 5) == 42
        with pytest.raises(ValueError, match="broker said no"):
            await loop.call(fail(), 5)


async def test_a_hung_call_ends_at_its_deadline_and_is_cancelled_on_the_loop() -> None:
    cancelled = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            token.run_sync_soon(cancelled.set)
            raise

    async with AsyncioThread() as loop:
        with pytest.raises(trio.TooSlowError):
            await loop.call(hang(), 0.05)
        with trio.fail_after(5):
            await cancelled.wait()
