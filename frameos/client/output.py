"""Events for whoever reads the client's stdout: rich human lines (frameos.render, debug events
left out, as `run` does without --verbose) or the envelopes' JSON lines, byte for byte."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from frameos.envelope import Envelope

if TYPE_CHECKING:
    from rich.console import Console


class Printer:
    """Prints envelopes as they arrive; flushes each, so a pipe reader sees them at once."""

    def __init__(self, *, json: bool) -> None:
        self.json = json
        self._console: Console | None = None

    def __call__(self, envelope: Envelope) -> None:
        if self.json:
            sys.stdout.buffer.write(envelope.line)
            sys.stdout.buffer.flush()
            return
        if envelope.severity == "debug":
            return
        from frameos.render import render

        self.console.print(render(envelope))

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True)
        return self._console


def warn(text: str) -> None:
    """A note for the person (never on stdout, which may be JSON lines)."""
    print(f"frameos: {text}", file=sys.stderr, flush=True)
