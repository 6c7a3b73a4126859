"""The one error hierarchy of frameos.

    FrameosError                 anything frameos reports to a person instead of a traceback
    ├── ConfigError              a config or manifest file is missing, unreadable or invalid;
    │                            carries one `Problem` per thing that is wrong
    ├── UsageError               command-line flags that do not fit together (exit 2)
    ├── EventLogError            the durable event log cannot be opened, recovered or written
    ├── StaleCursorError         a reader asked for events older than the oldest retained one
    └── ServerError              the HTTP surface cannot bind or serve

Every message says what was wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass


class FrameosError(Exception):
    """Base class: a failure that frameos explains to the operator in one clear message."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (file, JSON path), what was expected and found."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


class ConfigError(FrameosError):
    """Invalid configuration or manifest: one or more problems, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class UsageError(FrameosError):
    """Flags that do not fit together."""

    exit_code = 2


class EventLogError(FrameosError):
    """The durable event log cannot be used."""


class StaleCursorError(FrameosError):
    """A cursor older than the oldest retained event (HTTP 410 `stale_cursor`)."""

    def __init__(self, requested: int, oldest: int, head: int) -> None:
        self.requested, self.oldest, self.head = requested, oldest, head
        super().__init__(
            f"cursor {requested} is older than the oldest retained event {oldest}; "
            f"resume from {oldest - 1} to read everything retained"
        )


class ServerError(FrameosError):
    """The HTTP surface cannot start."""
