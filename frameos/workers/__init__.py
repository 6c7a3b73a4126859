"""VM workers and bootstrap pipelines (SPEC §5, §6).

    pool.VmPool ── orphans.py first (what a killed instance left), then one vm.VmWorker per VM
        vm.VmWorker (states.py) ── launch (overlay.py, launch.py, child.py: spawn + pidfile
                    or kill) ── wait ── restart.py
                    ├─ bootstrap.py after each launch (steps recorded in state_dir/procs)
                    └─ ladder.py on stop or cancellation (cooperative.py, qmp.py; child.kill_group)
    plan.py, paths.py, procfs.py, pidfile.py, demo.py: no trio, so `frameos check --plan` and the
    config loader stay fast (BARS B4).

Errors of this package (all `frameos.errors.FrameosError`, reported as events, never raised out
of the pool):

    WorkerError
    ├── LaunchError         a VM could not be started (command, cwd, overlay, socket path)
    └── ChannelError        the cooperative channel failed (QMP protocol error, command failed)
        └── ChannelUnavailable  there is no channel to ask (no socket, refused, no method)

This module imports nothing heavy on purpose: importing `frameos.workers.plan` must not pull in
trio.
"""

from __future__ import annotations

from frameos.errors import FrameosError

__all__ = ["ChannelError", "ChannelUnavailable", "LaunchError", "WorkerError"]


class WorkerError(FrameosError):
    """Base of the worker errors."""


class LaunchError(WorkerError):
    """A VM could not be launched; the message says what to fix."""


class ChannelError(WorkerError):
    """The cooperative channel answered wrongly or failed midway."""


class ChannelUnavailable(ChannelError):
    """There is nothing to ask: no socket, a refused connection, or no method."""
