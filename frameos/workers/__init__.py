"""VM workers and bootstrap pipelines (SPEC §5, §6).

    pool.VmPool ── orphans.py first (what a killed instance left), then one vm.VmWorker per VM
        vm.VmWorker (states.py) ── launch (overlay.py, launch.py, child.py: spawn + pidfile
                    or kill) ── wait ── restart.py
                    ├─ bootstrap.py after each launch (steps recorded in state_dir/procs)
                    └─ ladder.py on stop or cancellation (cooperative.py, qmp.py; child.kill_group)
    plan.py, paths.py, procfs.py, pidfile.py, demo.py: no trio, so `frameos check --plan` and the
    config loader stay fast (BARS B4).

Errors of this package (all `frameos.errors.FrameosError`; the supervision path reports them as
events, only the pool operations raise `OperationFailed` to their caller):

    WorkerError
    ├── LaunchError         a VM could not be started (command, cwd, overlay, socket path)
    ├── ChannelError        the cooperative channel failed (QMP protocol error, command failed)
    │   └── ChannelUnavailable  there is no channel to ask (no socket, refused, no method)
    └── OperationFailed     a pool operation (start_vm, stop_vm, ..., R2) did not do its job;
        ├── OperationCanceled   a stop of the same VM won over it
        └── VmBusy              the VM is not in a state the operation accepts

This module imports nothing heavy on purpose: importing `frameos.workers.plan` must not pull in
trio.
"""

from __future__ import annotations

from frameos.errors import FrameosError

__all__ = [
    "ChannelError",
    "ChannelUnavailable",
    "LaunchError",
    "OperationCanceled",
    "OperationFailed",
    "VmBusy",
    "WorkerError",
]


class WorkerError(FrameosError):
    """Base of the worker errors."""


class LaunchError(WorkerError):
    """A VM could not be launched; the message says what to fix."""


class ChannelError(WorkerError):
    """The cooperative channel answered wrongly or failed midway."""


class ChannelUnavailable(ChannelError):
    """There is nothing to ask: no socket, a refused connection, or no method."""


class OperationFailed(WorkerError):
    """A pool operation failed (a launch, a bootstrap, ...); the message says why."""


class OperationCanceled(OperationFailed):
    """A start, restart or bootstrap was canceled because a stop of the same VM won."""


class VmBusy(OperationFailed):
    """The VM is not in a state this operation accepts (e.g. `clean` while it runs)."""
