"""A bootstrap step's output (frameos/workers/bootstrap.py StepOutput): a runaway line without a
newline is cut and shown, a last line without one is not lost, a long line is shortened."""

from __future__ import annotations

from typing import Any

from frameos.workers import bootstrap
from frameos.workers.bootstrap import StepOutput


class Published:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def publish_nowait(self, event: Any, severity: Any = None) -> None:
        self.texts.append(event.text)


def test_a_runaway_line_is_cut_and_a_last_partial_line_kept() -> None:
    published = Published()
    out = StepOutput("web: step 1", published)
    out.feed(b"x" * (bootstrap.LINE_CHARS * 4 + 1))  # no newline, ever
    assert len(out.tail) == 1 and out.tail[0].endswith("…")
    assert len(out.tail[0]) == bootstrap.LINE_CHARS + 1  # shortened, with the ellipsis
    out.feed(b"done without a newline")
    out.close()
    assert list(out.tail)[-1] == "done without a newline"
    assert len(published.texts) == 2  # both lines shown, as `message` events
