"""The two state tables of a VM worker: the VM's lifecycle and the bootstrap of its launch.

    idle ─► starting ─► running ─► backoff ─► starting ...
              │            ├─────► finished   (the policy does not restart this exit)
              │            └─────► gave_up    (more than max_restarts in window_s)
              └─ (a failed launch counts as an abnormal exit)
    any of them ─► stopping ─► stopped        (stop() or cancellation: the ladder)
    running ─► stopping ─► backoff | finished | gave_up
                                              (a liveness failure: the ladder, then the policy)
    finished, gave_up ─► starting             (relaunch: an operator's start)
    stopped ─► starting                       (a new session: an operator's start)

    bootstrap: none ─► pending ─► running ─► ok | failed ─► pending (the next launch) ...
               (no steps: straight to ok at each launch)

An illegal transition is a bug: `VmWorker.set_state` and `set_boot` raise.
"""

from __future__ import annotations

from enum import Enum


class VmState(Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FINISHED = "finished"
    GAVE_UP = "gave_up"
    STOPPING = "stopping"
    STOPPED = "stopped"


_S = VmState
TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    _S.IDLE: frozenset({_S.STARTING, _S.STOPPING}),
    _S.STARTING: frozenset({_S.RUNNING, _S.BACKOFF, _S.FINISHED, _S.GAVE_UP, _S.STOPPING}),
    _S.RUNNING: frozenset({_S.BACKOFF, _S.FINISHED, _S.GAVE_UP, _S.STOPPING}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPING}),
    _S.FINISHED: frozenset({_S.STARTING, _S.STOPPING}),
    _S.GAVE_UP: frozenset({_S.STARTING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.BACKOFF, _S.FINISHED, _S.GAVE_UP}),
    _S.STOPPED: frozenset({_S.STARTING}),
}


class BootState(Enum):
    """The bootstrap of the current launch (SPEC §6)."""

    NONE = "none"  # not launched yet
    PENDING = "pending"  # launched; the bootstrap task has not begun
    RUNNING = "running"
    OK = "ok"  # succeeded, had nothing to do, or there are no steps
    FAILED = "failed"  # failed or was interrupted


_B = BootState
BOOT_TRANSITIONS: dict[BootState, frozenset[BootState]] = {
    _B.NONE: frozenset({_B.PENDING, _B.OK}),
    _B.PENDING: frozenset({_B.RUNNING}),
    _B.RUNNING: frozenset({_B.OK, _B.FAILED}),
    _B.OK: frozenset({_B.PENDING, _B.OK}),
    _B.FAILED: frozenset({_B.PENDING, _B.OK}),
}
