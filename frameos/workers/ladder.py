"""The stop ladder (SPEC §5): ask, then SIGTERM, then SIGKILL, each rung a deadline.

    vm.shutdown_requested
    vm.cooperative_attempted ── exit ───────────────────────────► vm.cooperative_succeeded
      │ deadline / channel_unavailable / channel_error                         │
    vm.cooperative_timed_out                                                   │
    vm.shutdown_escalated SIGTERM ── exit ──┐                                  │
      │ sigterm_ms                          │                                  │
    vm.shutdown_escalated SIGKILL ── exit ──┤                                  │
                                            ▼                                  ▼
                               vm.shutdown_complete forced      vm.shutdown_complete graceful

Like trio's `_run_process`, the ladder owns the process while it waits on it: a task delivers
the cooperative request while the rung awaits the exit, and a `finally:` kills the group under a
shielded, bounded scope. So cancellation arriving in any rung (a second SIGTERM, the service's
shutdown deadline) still leaves no process of the group alive.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Literal

import trio

from frameos import events as ev
from frameos.config import TimeoutsConfig
from frameos.workers import ChannelError, ChannelUnavailable
from frameos.workers.child import Child
from frameos.workers.cooperative import Request
from frameos.workers.publisher import Publisher

Method = Literal["qmp", "signal", "command", "none"]
Outcome = Literal["graceful", "forced"]


@dataclass(frozen=True)
class LadderResult:
    """How a stop ended: `exited` is False only when the leader outlived SIGKILL's deadline."""

    outcome: Outcome
    total_ms: int
    changed: bool
    exited: bool


class Ladder:
    """One run of the ladder for one process; `run` is the whole thing."""

    def __init__(
        self,
        vm: str,
        child: Child,
        *,
        method: Method,
        request: Request,
        timeouts: TimeoutsConfig,
        publisher: Publisher,
    ) -> None:
        self.vm, self.child, self.method, self.request = vm, child, method, request
        self.timeouts, self.publisher = timeouts, publisher
        self.started = 0.0
        self.rung = "requested"
        self._done = False
        self._failure: tuple[Literal["channel_unavailable", "channel_error"], str] | None = None

    async def run(self, reason: str) -> LadderResult:
        """Stop the process. Cancellation kills the group (shielded, bounded) and re-raises."""
        self.started = trio.current_time()
        publish = self.publisher.publish
        changed = not self.child.exited
        try:
            await publish(ev.VmShutdownRequested(vm=self.vm, reason=reason))
            if await self._cooperative():
                return await self._complete("graceful", changed)
            for sig, limit_ms in (
                (signal.SIGTERM, self.timeouts.sigterm_ms),
                (signal.SIGKILL, self.timeouts.sigkill_ms),
            ):
                if await self._escalate(sig, limit_ms):
                    return await self._complete("forced", changed)
            await publish(
                ev.Message(
                    text=f"{self.vm}: pid {self.child.pid} is still there "
                    f"{self.timeouts.sigkill_ms} ms after SIGKILL (stuck in the kernel?)"
                ),
                "error",
            )
            return await self._complete("forced", changed, exited=False)
        finally:
            await self._kill_bounded()
            if not self._done:
                self._report_interrupted()

    def _elapsed_ms(self) -> int:
        return int((trio.current_time() - self.started) * 1000)

    async def _cooperative(self) -> bool:
        """The first rung: True when the process exited within `cooperative_ms`."""
        limit_ms = self.timeouts.cooperative_ms
        publish = self.publisher.publish
        await publish(
            ev.VmCooperativeAttempted(vm=self.vm, method=self.method, timeout_ms=limit_ms)
        )
        rung_start = trio.current_time()
        self.rung = "cooperative"
        if not self.child.exited:
            with trio.move_on_after(limit_ms / 1000):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._deliver, nursery.cancel_scope)
                    await self.child.wait()
                    nursery.cancel_scope.cancel()
        waited_ms = int((trio.current_time() - rung_start) * 1000)
        if self.child.exited:
            await publish(ev.VmCooperativeSucceeded(vm=self.vm, elapsed_ms=self._elapsed_ms()))
            return True
        reason, detail = self._failure or ("timeout_expired", f"no exit within {limit_ms} ms")
        await publish(
            ev.VmCooperativeTimedOut(vm=self.vm, waited_ms=waited_ms, reason=reason, detail=detail)
        )
        return False

    async def _deliver(self, rung: trio.CancelScope) -> None:
        """Send the cooperative request; a failed channel ends the rung at once."""
        try:
            await self.request()
        except ChannelUnavailable as exc:
            self._failure = ("channel_unavailable", str(exc))
            rung.cancel()
        except ChannelError as exc:
            self._failure = ("channel_error", str(exc))
            rung.cancel()

    async def _escalate(self, sig: signal.Signals, limit_ms: int) -> bool:
        """One signal rung: True when the process exited within `limit_ms`."""
        await self.publisher.publish(
            ev.VmShutdownEscalated(
                vm=self.vm,
                signal="SIGTERM" if sig == signal.SIGTERM else "SIGKILL",
                timeout_ms=limit_ms,
            )
        )
        self.rung = sig.name
        self.child.signal_group(sig)
        with trio.move_on_after(limit_ms / 1000):
            await self.child.wait()
        if sig == signal.SIGKILL:
            self.rung = "after SIGKILL"
        return self.child.exited

    async def _complete(self, outcome: Outcome, changed: bool, exited: bool = True) -> LadderResult:
        self._done = True
        result = LadderResult(outcome, self._elapsed_ms(), changed, exited)
        await self.publisher.publish(
            ev.VmShutdownComplete(
                vm=self.vm, outcome=outcome, total_ms=result.total_ms, changed=changed
            )
        )
        return result

    async def _kill_bounded(self) -> None:
        """However the ladder ended: the leader dead (within sigkill_ms), the group emptied."""
        if not self.child.exited and self.rung != "after SIGKILL":
            with trio.move_on_after(self.timeouts.sigkill_ms / 1000, shield=True):
                self.child.signal_group(signal.SIGKILL)
                await self.child.wait()
        self.child.kill_leftovers()

    def _report_interrupted(self) -> None:
        state = "killed" if self.child.exited else "SIGKILLed but still there"
        with contextlib.suppress(trio.ClosedResourceError):
            self.publisher.publish_nowait(
                ev.Message(
                    text=f"{self.vm}: stop ladder interrupted during {self.rung} after "
                    f"{self._elapsed_ms()} ms; pid {self.child.pid} {state}"
                ),
                "warn",
            )
