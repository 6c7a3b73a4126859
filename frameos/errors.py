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


# A file can hold tens of thousands of mistakes; a person reads the first few.
MAX_PROBLEMS = 20


class ConfigError(FrameosError):
    """Invalid configuration or manifest: one or more problems, reported together.

    At most MAX_PROBLEMS are kept; a last one says how many more there were."""

    def __init__(self, problems: list[Problem]) -> None:
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            problems = [
                *problems[:MAX_PROBLEMS],
                Problem(
                    problems[MAX_PROBLEMS].source,
                    "",
                    f"and {more} more problem{'s' if more > 1 else ''} not shown; fix these first",
                ),
            ]
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
