"""Synchronous emission for the short commands (`check`, `contract`, `parity`).

They must start fast (BARS B4), so they use no trio: each event is encoded once, appended to the
event log when one is configured, and written to stdout as JSON or as a human line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from frameos.envelope import Envelope, encode
from frameos.errors import EventLogError
from frameos.eventlog import EventLog
from frameos.events import Event, Severity

if TYPE_CHECKING:
    from rich.console import Console

Output = Literal["json", "human"]


def choose_output(flag: str, stream: TextIO | None = None) -> Output:
    """`--output auto` means human on a terminal, JSON lines otherwise."""
    if flag in ("json", "human"):
        return flag  # type: ignore[return-value]  # narrowed by the membership test
    stream = stream or sys.stdout
    return "human" if stream.isatty() else "json"


class SyncEmitter:
    """Encode, log (when a log path is given), print. Never raises on a busy log: it says so."""

    def __init__(self, output: Output, log_path: Path | None = None) -> None:
        self.output = output
        self.log: EventLog | None = None
        self.seq = 0
        # made at the first human line: JSON output never imports rich
        self._human: Console | None = None
        if log_path is not None:
            log = EventLog(log_path)
            try:
                self.seq = log.open().last_seq
                self.log = log
            except EventLogError as exc:
                print(f"frameos: warning: {exc}; events are not appended", file=sys.stderr)

    def emit(self, event: Event, severity: Severity | None = None) -> Envelope:
        self.seq += 1
        envelope = encode(event, self.seq, time.time(), severity)
        if self.log is not None:
            try:
                self.log.append(envelope.line)
            except OSError as exc:  # a full disk: say so once, keep reporting on stdout
                print(
                    f"frameos: warning: event log {self.log.path}: {exc.strerror or exc}; "
                    "events are not appended",
                    file=sys.stderr,
                )
                self._release_log()
        if self.output == "json":
            sys.stdout.buffer.write(envelope.line)
            sys.stdout.buffer.flush()
        else:
            from frameos.render import render

            self._console().print(render(envelope))
        return envelope

    def _console(self) -> Console:
        if self._human is None:
            from rich.console import Console

            self._human = Console(highlight=False, soft_wrap=True)
        return self._human

    def close(self) -> None:
        if self.log is not None:
            self._release_log()

    def _release_log(self) -> None:
        log, self.log = self.log, None
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
