"""Where each side's contract comes from: a JSON file (`fixture`) or a probe command whose stdout
is the contract (`discovered`).

Loading never raises for bad input: a missing or invalid file, a probe that fails, times out,
prints nothing or prints something that is not JSON all become messages that name the source
(the side and the path or command) and quote what a probe printed, bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from frameos.config import read_json
from frameos.errors import ConfigError, Problem, UsageError
from frameos.events import ContractSource
from frameos.parity.contracts import Side

PREVIEW_CHARS = 200  # how much of a probe's output an error message quotes


@dataclass(frozen=True)
class Source:
    """Where one side's contract comes from: a file (`fixture`) or a probe command."""

    side: Side
    kind: ContractSource
    value: str  # the path or the shell command

    def describe(self) -> str:
        """`renderer contract file PATH` or `renderer probe `CMD``, for messages."""
        if self.kind == "fixture":
            return f"{self.side} contract file {self.value}"
        return f"{self.side} probe `{_clip(self.value)}`"


def sources_from(args: argparse.Namespace) -> tuple[Source, Source]:
    """The source of each side; UsageError (exit 2) naming the flags when a side has 0 or 2."""
    problems: list[str] = []
    found: list[Source] = []
    for side in ("renderer", "driver"):
        path = getattr(args, f"{side}_contract", None)
        command = getattr(args, f"{side}_probe_cmd", None)
        flags = f"--{side}-contract PATH or --{side}-probe-cmd CMD"
        if path is not None and command is not None:
            problems.append(f"give only one of {flags} (both were given)")
        elif path is None and command is None:
            problems.append(f"give one of {flags} (neither was given)")
        elif path is not None:
            found.append(Source(side, "fixture", path))
        else:
            found.append(Source(side, "discovered", str(command)))
    if problems:
        raise UsageError("parity needs exactly one source per side: " + "; ".join(problems))
    return found[0], found[1]


def probe_timeout(value: float | None) -> float:
    """`--probe-timeout` in seconds: a positive number, else a UsageError."""
    timeout = 10.0 if value is None else float(value)
    if not timeout > 0:  # also refuses NaN
        raise UsageError(f"--probe-timeout must be a positive number of seconds, found {value}")
    return timeout


@dataclass(frozen=True)
class Loaded:
    """One side's raw contract JSON, or why it could not be had."""

    data: Any = None
    printed: str | None = None  # a probe's stdout, quoted when it is not a contract
    problems: tuple[str, ...] = ()


async def load(source: Source, limit_s: float) -> Loaded:
    """Read the file or run the probe. Never raises for bad input: problems are in the result.

    Cancellation kills a running probe's whole process group.
    """
    try:
        if source.kind == "fixture":
            data = await trio.to_thread.run_sync(_read_contract_file, Path(source.value))
            return Loaded(data=data)
        stdout, stderr = await run_probe(source.value, limit_s)
    except ConfigError as exc:
        return Loaded(problems=tuple(f"{source.describe()}: {p.message}" for p in exc.problems))
    return _parse_probe_output(source, stdout, stderr)


def _read_contract_file(path: Path) -> Any:
    try:
        return read_json(path)
    except RecursionError:
        raise ConfigError([Problem(str(path), "", "JSON is nested too deeply")]) from None


async def run_probe(command: str, limit_s: float) -> tuple[str, str]:
    """Run a shell command for at most `limit_s` seconds and return its stdout and stderr.

    Raises ConfigError when it times out (it is killed, with its whole process group) or exits
    non-zero. Cancellation kills the process group too.
    """
    try:
        with trio.fail_after(limit_s):
            result = await trio.run_process(
                command,
                shell=True,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                start_new_session=True,
                deliver_cancel=_kill_group,
            )
    except trio.TooSlowError as exc:
        message = f"timed out after {limit_s:g} s and was killed"
        message += " (raise --probe-timeout if it needs longer)"
        raise ConfigError([Problem("probe", "", message)]) from exc
    except OSError as exc:
        raise ConfigError([Problem("probe", "", f"could not start: {exc.strerror}")]) from None
    stdout, stderr = _decode(result.stdout), _decode(result.stderr)
    if result.returncode != 0:
        message = f"{_exit_status(result.returncode)} ({_outputs(stdout, stderr)})"
        raise ConfigError([Problem("probe", "", message)])
    return stdout, stderr


async def _kill_group(process: trio.Process) -> None:
    # the shell may have children of its own: signal the whole session it leads
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _parse_probe_output(source: Source, printed: str, stderr: str) -> Loaded:
    if not printed.strip():
        message = (
            f"printed nothing on stdout, but it must print the {source.side} contract as JSON "
            f"(stderr (tail): {_tail(stderr)})"
        )
        return Loaded(problems=(f"{source.describe()}: {message}",))
    try:
        return Loaded(data=json.loads(printed), printed=printed)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        reason = "nested too deeply"
    message = f"printed something that is not JSON ({reason}): {preview(printed)}"
    return Loaded(problems=(f"{source.describe()}: {message}",))


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _outputs(stdout: str, stderr: str) -> str:
    return f"stdout: {preview(stdout)}, stderr (tail): {_tail(stderr)}"


def _tail(text: str) -> str:
    return repr(text.strip()[-PREVIEW_CHARS:])


def _clip(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def preview(text: str) -> str:
    """The start of what a probe printed, quoted and bounded, for error messages."""
    text = text.strip()
    if len(text) <= PREVIEW_CHARS:
        return repr(text)
    return f"{text[:PREVIEW_CHARS]!r}… ({len(text)} chars)"


async def load_both(sources: tuple[Source, Source], limit_s: float) -> tuple[Loaded, Loaded]:
    """Load both sides concurrently (probes run in parallel, each with its own timeout)."""
    results: dict[Side, Loaded] = {}

    async def one(source: Source) -> None:
        results[source.side] = await load(source, limit_s)

    async with trio.open_nursery() as nursery:
        for source in sources:
            nursery.start_soon(one, source)
    return results[sources[0].side], results[sources[1].side]
