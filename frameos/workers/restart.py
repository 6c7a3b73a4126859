"""Restart policy, backoff and give-up (SPEC §5), as pure logic over times in seconds.

    permanent  restart after every exit
    transient  restart only after an abnormal exit (non-zero status, a signal, a failed launch)
    temporary  never restart

Backoff doubles from `backoff_initial_ms` to `backoff_max_ms` and starts over after a run that
lasted longer than `window_s`. More than `max_restarts` restarts within the last `window_s`
seconds gives up: with max_restarts 5, the 6th restart in a window is refused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from frameos.config import RestartConfig


class Verdict(Enum):
    RESTART = "restart"
    DONE = "done"  # the policy does not restart this exit
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    backoff_ms: int = 0
    restarts_in_window: int = 0


class RestartTracker:
    """Decides what follows each exit; `restarts` counts every restart granted so far."""

    def __init__(self, config: RestartConfig) -> None:
        self.config = config
        self.restarts = 0
        self._recent: deque[float] = deque()
        self._next_backoff_ms = config.backoff_initial_ms

    def reset(self) -> None:
        """An operator's start: a fresh window and backoff (`restarts` keeps counting)."""
        self._recent.clear()
        self._next_backoff_ms = self.config.backoff_initial_ms

    def on_exit(self, now: float, uptime_s: float, abnormal: bool) -> Decision:
        """The decision for an exit at `now` after a run of `uptime_s` seconds."""
        config = self.config
        if config.policy == "temporary" or (config.policy == "transient" and not abnormal):
            return Decision(Verdict.DONE)
        if uptime_s > config.window_s:
            self._next_backoff_ms = config.backoff_initial_ms
        while self._recent and self._recent[0] <= now - config.window_s:
            self._recent.popleft()
        if len(self._recent) >= config.max_restarts:
            return Decision(Verdict.GIVE_UP, restarts_in_window=len(self._recent))
        backoff = self._next_backoff_ms
        self._next_backoff_ms = min(backoff * 2, config.backoff_max_ms)
        self._recent.append(now)
        self.restarts += 1
        return Decision(Verdict.RESTART, backoff, len(self._recent))
