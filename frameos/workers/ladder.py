"""The stop ladder (SPEC §5): ask, then SIGTERM, then SIGKILL, each rung a deadline.

    vm.shutdown_requested (deadline_ms: the whole budget)
    vm.cooperative_attempted (timeout_ms) ── exit ─────────────────► vm.cooperative_succeeded
      │ deadline / channel_unavailable / channel_error                         │
    vm.cooperative_timed_out                                                   │
    vm.shutdown_escalated SIGTERM (timeout_ms) ── exit ──┐                     │
    vm.shutdown_escalated SIGKILL (timeout_ms) ── exit ──┤                     │
                                                         ▼                     ▼
                                       vm.shutdown_complete forced   vm.shutdown_complete graceful

Shaped like trio's `run_process`: the parent awaits the process's exit once; beside it an
escalation task walks the rungs (asks, waits, SIGTERM, waits, SIGKILL, waits), each with its
own deadline, and is cancelled the moment the exit is seen. The escalation is not shielded:
whatever cancels the ladder (`force()`, the stop budget) also ends it, and the ladder goes
straight to `kill_group`, the one shielded part (bounded by sigkill_ms), as trio's killer runs
shielded only once the wait was cancelled: no process of the group is left alive, and
`vm.shutdown_complete` (forced) is still published. Events are published without waiting
(`publish_nowait`: a handful per stop), so a slow log never delays a signal. A ladder begun
after the stop was forced (`forced=True`) skips to the SIGKILL rung and announces only its
budget (`deadline_ms` = sigkill_ms); one for a process already gone announces 0 and ends
graceful with no cooperative events.
The same ladder stops our own VMs, orphans of a killed instance (with the timeouts recorded in
their pidfile) and VMs after a reload (with the timeouts they were launched with).
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import trio

from frameos import events as ev
from frameos.config import CooperativeMethod, TimeoutsConfig
from frameos.events import Event, Severity
from frameos.workers import ChannelError, ChannelUnavailable
from frameos.workers.child import Child, kill_group
from frameos.workers.cooperative import Request
from frameos.workers.publisher import Publisher

Outcome = Literal["graceful", "forced"]


class Rung(Enum):
    """Where a stop is; the escalation task moves it forward, never back."""

    REQUESTED = "requested"
    COOPERATIVE = "cooperative"
    SIGTERM = "SIGTERM"
    SIGKILL = "SIGKILL"
    AFTER_SIGKILL = "after SIGKILL"


@dataclass(frozen=True)
class LadderResult:
    """How a stop ended: `exited` is False only when the leader outlived SIGKILL's deadline."""

    outcome: Outcome
    total_ms: int
    changed: bool
    exited: bool


class Ladder:
    """One run of the ladder for one process group; `run` is the whole thing."""

    def __init__(
        self,
        vm: str,
        child: Child,
        *,
        method: CooperativeMethod,
        request: Request,
        timeouts: TimeoutsConfig,
        publisher: Publisher,
        forced: bool = False,
    ) -> None:
        self.vm, self.child, self.method, self.request = vm, child, method, request
        self.timeouts, self.publisher, self.forced = timeouts, publisher, forced
        self.started = 0.0
        self.rung = Rung.REQUESTED
        self._escalation = trio.CancelScope()

    async def run(self, reason: str) -> LadderResult:
        """Stop the process group and return how it went.

        Cancellation (a forced stop) cancels the escalation, SIGKILLs the group (shielded,
        bounded by sigkill_ms), reports the interrupted rung, publishes `vm.shutdown_complete`
        (forced: every `shutdown_requested` ends in one) and re-raises.
        """
        self.started = trio.current_time()
        changed = not self.child.exited
        self._say(ev.VmShutdownRequested(vm=self.vm, reason=reason, deadline_ms=self._budget_ms()))
        done = False
        try:
            async with trio.open_nursery() as nursery:
                if not self.child.exited:
                    nursery.start_soon(self._escalate, nursery.cancel_scope)
                try:
                    await self.child.wait()  # the one wait on the exit
                finally:
                    self._escalation.cancel()
            done = True
        finally:
            await kill_group(self.child, 0 if done else self.timeouts.sigkill_ms / 1000)
            if not done:
                self._report_interrupted()
                self._say_complete("forced", changed)  # synchronous: works while cancelled
        return self._complete(changed)

    def _budget_ms(self) -> int:
        """What this run can take: nothing for a process already gone, the SIGKILL rung for a
        forced ladder, else every rung."""
        if self.child.exited:
            return 0
        return self.timeouts.sigkill_ms if self.forced else self.timeouts.total_ms

    def _elapsed_ms(self, since: float | None = None) -> int:
        return int((trio.current_time() - (self.started if since is None else since)) * 1000)

    def _say(self, event: Event, severity: Severity | None = None) -> None:
        with contextlib.suppress(trio.ClosedResourceError):  # the bus is gone: nobody to tell
            self.publisher.publish_nowait(event, severity)

    async def _escalate(self, wait: trio.CancelScope) -> None:
        """The killer beside the wait: each rung in turn until the parent sees the exit
        (`forced`: straight to SIGKILL)."""
        rungs = [
            (signal.SIGTERM, self.timeouts.sigterm_ms),
            (signal.SIGKILL, self.timeouts.sigkill_ms),
        ]
        with self._escalation:
            if self.forced:
                del rungs[0]
            else:
                await self._cooperative()
            for sig, limit_ms in rungs:
                self.rung = Rung(sig.name)
                self.child.signal_group(sig)
                self._say(
                    ev.VmShutdownEscalated(
                        vm=self.vm,
                        signal="SIGTERM" if sig == signal.SIGTERM else "SIGKILL",
                        timeout_ms=limit_ms,
                    )
                )
                await trio.sleep(limit_ms / 1000)
            self.rung = Rung.AFTER_SIGKILL
            wait.cancel()  # the leader outlived SIGKILL's deadline: stop waiting for it

    async def _cooperative(self) -> None:
        """The first rung: deliver the request, then give the exit `cooperative_ms`."""
        limit_ms = self.timeouts.cooperative_ms
        self.rung = Rung.COOPERATIVE
        self._say(ev.VmCooperativeAttempted(vm=self.vm, method=self.method, timeout_ms=limit_ms))
        rung_start = trio.current_time()
        reason: Literal["timeout_expired", "channel_unavailable", "channel_error"]
        reason, detail = "timeout_expired", f"no exit within {limit_ms} ms"
        with trio.move_on_after(limit_ms / 1000):
            try:
                await self.request()
            except ChannelUnavailable as exc:
                reason, detail = "channel_unavailable", str(exc)
            except ChannelError as exc:
                reason, detail = "channel_error", str(exc)
            else:
                await trio.sleep_forever()
        self._say(
            ev.VmCooperativeTimedOut(
                vm=self.vm, waited_ms=self._elapsed_ms(rung_start), reason=reason, detail=detail
            )
        )

    def _complete(self, changed: bool) -> LadderResult:
        exited = self.child.exited
        graceful = exited and self.rung in (Rung.REQUESTED, Rung.COOPERATIVE)
        if exited and self.rung is Rung.COOPERATIVE:  # it answered the cooperative_attempted
            self._say(ev.VmCooperativeSucceeded(vm=self.vm, elapsed_ms=self._elapsed_ms()))
        if not exited:
            self._say(
                ev.Message(
                    text=f"{self.vm}: pid {self.child.pid} is still there "
                    f"{self.timeouts.sigkill_ms} ms after SIGKILL (stuck in the kernel?)"
                ),
                "error",
            )
        return self._say_complete("graceful" if graceful else "forced", changed, exited)

    def _say_complete(self, outcome: Outcome, changed: bool, exited: bool = True) -> LadderResult:
        result = LadderResult(outcome, self._elapsed_ms(), changed, exited)
        self._say(
            ev.VmShutdownComplete(
                vm=self.vm, outcome=outcome, total_ms=result.total_ms, changed=changed
            )
        )
        return result

    def _report_interrupted(self) -> None:
        state = "killed" if self.child.exited else "SIGKILLed but still there"
        self._say(
            ev.Message(
                text=f"{self.vm}: stop ladder interrupted during {self.rung.value} after "
                f"{self._elapsed_ms()} ms; pid {self.child.pid} {state}"
            ),
            "warn",
        )
