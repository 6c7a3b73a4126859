"""Bootstrap pipelines (SPEC §6): host-side steps run after each launch of a VM.

Each step is an argv with a timeout, retries and a delay between attempts; it runs in its own
process group, recorded in `state_dir/procs/` while it runs (the next start kills it if frameos
was killed meanwhile), with the VM's environment plus `FRAMEOS_SSH_USER/HOST/PORT/IDENTITY/
OPTIONS`, `FRAMEOS_VM`, `FRAMEOS_VM_PID`, `FRAMEOS_QMP_SOCKET` and `FRAMEOS_OVERLAY`. Its output is
streamed as `message` events, bounded per step (`MAX_LINES`, `MAX_BYTES`); the tail is kept for
`detail` when the step fails. `trigger: auto` skips the run (`noop`) when the stamp of the last
success matches the plan's digest (plan.py); `always` runs on every launch.
"""

from __future__ import annotations

import contextlib
import shlex
from collections import deque
from dataclasses import dataclass

import trio

from frameos import events as ev
from frameos.config import BootstrapStep, VmConfig
from frameos.workers import LaunchError
from frameos.workers.child import SPAWN_ERRORS, Tracking, run_captured, signal_name
from frameos.workers.paths import VmPaths, substitute
from frameos.workers.plan import decide, read_stamp, write_stamp
from frameos.workers.publisher import Publisher

MAX_LINES = 200
MAX_BYTES = 64 * 1024
LINE_CHARS = 1000
TAIL_LINES = 20
STEP_GRACE_S = 1.0


@dataclass(frozen=True)
class BootstrapContext:
    """What a bootstrap of one launch needs."""

    vm: VmConfig
    paths: VmPaths
    env: dict[str, str]
    publisher: Publisher
    pid: int


def step_env(ctx: BootstrapContext) -> dict[str, str]:
    """The VM's environment plus the FRAMEOS_* variables steps read."""
    env = dict(ctx.env)
    env.update(
        FRAMEOS_VM=ctx.vm.name,
        FRAMEOS_VM_PID=str(ctx.pid),
        FRAMEOS_QMP_SOCKET=str(ctx.paths.qmp_socket),
    )
    if ctx.paths.overlay is not None:
        env["FRAMEOS_OVERLAY"] = str(ctx.paths.overlay)
    if ctx.vm.bootstrap is not None:
        ssh = ctx.vm.bootstrap.ssh
        env["FRAMEOS_SSH_PORT"] = str(ssh.port)
        env["FRAMEOS_SSH_OPTIONS"] = shlex.join(ssh.options)
        for key, value in (("USER", ssh.user), ("HOST", ssh.host), ("IDENTITY", ssh.identity)):
            if value is not None:
                env[f"FRAMEOS_SSH_{key}"] = value
    return env


class StepOutput:
    """Splits a step's output into lines, publishes the first ones, keeps the tail."""

    def __init__(self, prefix: str, publisher: Publisher) -> None:
        self.prefix, self.publisher = prefix, publisher
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.lines = self.bytes = self.hidden = 0
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for line in complete:
            self._line(line)
        if len(self._partial) > LINE_CHARS * 4:  # a runaway line: cut it
            self._line(self._partial)
            self._partial = b""

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        if self.hidden:
            self.publisher.publish_nowait(
                ev.Message(
                    text=f"{self.prefix}: {self.hidden} more output lines not shown "
                    f"(limit {MAX_LINES} lines / {MAX_BYTES} bytes per step)"
                ),
                "warn",
            )

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip("\r")
        if len(text) > LINE_CHARS:
            text = text[:LINE_CHARS] + "…"
        self.tail.append(text)
        if self.lines < MAX_LINES and self.bytes + len(raw) <= MAX_BYTES:
            self.lines += 1
            self.bytes += len(raw)
            self.publisher.publish_nowait(ev.Message(text=f"{self.prefix}: {text}"), "info")
        else:
            self.hidden += 1

    def detail(self, error: str) -> str:
        return error + ("; last output:\n" + "\n".join(self.tail) if self.tail else "")


async def run_bootstrap(ctx: BootstrapContext) -> bool:
    """Run the VM's bootstrap for this launch; True when it succeeded or had nothing to do.

    Cancellation (the VM exited, or the service is stopping) kills the running step and
    publishes `bootstrap.failed`.
    """
    boot = ctx.vm.bootstrap
    run, _why, value = decide(ctx.vm, read_stamp(ctx.paths.stamp))
    if boot is None or value is None:
        return True
    started, publish = trio.current_time(), ctx.publisher.publish
    await publish(ev.BootstrapStarted(vm=ctx.vm.name, trigger=boot.trigger))
    if not run:
        await publish(ev.BootstrapCompleted(vm=ctx.vm.name, status="noop", duration_ms=0))
        return True
    finished = False
    try:
        for step in boot.steps:
            error = await _run_step(ctx, step)
            if error is not None:
                await publish(
                    ev.BootstrapFailed(vm=ctx.vm.name, duration_ms=_ms(started), error=error)
                )
                finished = True
                return False
        write_stamp(ctx.paths.stamp, value)
        await publish(
            ev.BootstrapCompleted(vm=ctx.vm.name, status="success", duration_ms=_ms(started))
        )
        finished = True
        return True
    finally:
        if not finished:
            with contextlib.suppress(trio.ClosedResourceError):
                ctx.publisher.publish_nowait(
                    ev.BootstrapFailed(
                        vm=ctx.vm.name,
                        duration_ms=_ms(started),
                        error="interrupted: the VM exited or frameos is stopping",
                    )
                )


async def _run_step(ctx: BootstrapContext, step: BootstrapStep) -> str | None:
    """Run one step with its retries; None on success, else what went wrong the last time."""
    attempts = step.retries + 1
    error = "not run"
    for attempt in range(1, attempts + 1):
        started = trio.current_time()
        output = StepOutput(f"{ctx.vm.name}/{step.name}", ctx.publisher)
        error_or_none = await _attempt(ctx, step, output)
        output.close()
        status = "success" if error_or_none is None else "failed"
        await ctx.publisher.publish(
            ev.BootstrapStep(
                vm=ctx.vm.name,
                step=step.name,
                status=status,
                duration_ms=_ms(started),
                attempt=attempt,
                detail=None if error_or_none is None else output.detail(error_or_none),
            )
        )
        if error_or_none is None:
            return None
        error = error_or_none
        if attempt < attempts:
            await trio.sleep(step.retry_delay_ms / 1000)
    return f"step {step.name!r} failed after {attempts} attempt(s): {error}"


async def _attempt(ctx: BootstrapContext, step: BootstrapStep, output: StepOutput) -> str | None:
    try:
        argv = substitute(step.command, ctx.paths)
        with trio.move_on_after(step.timeout_ms / 1000) as deadline:
            code = await run_captured(
                argv,
                output.feed,
                env=step_env(ctx),
                cwd=ctx.vm.cwd,
                grace_s=STEP_GRACE_S,
                tracking=Tracking(ctx.paths.procs, ctx.vm.name, "step"),
            )
    except LaunchError as exc:
        return str(exc)
    except SPAWN_ERRORS as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"cannot start {step.command[0]!r}: {why}"
    if deadline.cancelled_caught:
        return f"timed out after {step.timeout_ms} ms"
    if code < 0:
        return f"killed by {signal_name(-code)}"
    return None if code == 0 else f"exited with status {code}"


def _ms(since: float) -> int:
    return int((trio.current_time() - since) * 1000)
