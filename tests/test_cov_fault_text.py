"""The one line an internal fault of the supervisor ends with (frameos/supervisor.py): the
exception, where it was raised (file and line, the innermost frame), and what happened; a
FrameosError is its own message."""

from __future__ import annotations

import sys

from frameos.errors import FrameosError
from frameos.supervisor import _fault_text


def _lookup(table: dict[str, int]) -> int:
    return table["pid"]


def test_an_internal_fault_names_where_it_was_raised() -> None:
    try:
        _lookup({})
    except KeyError as exc:
        line = sys.exc_info()[2].tb_next.tb_lineno  # type: ignore[union-attr]
        text = _fault_text(exc)
    assert text == (
        f"internal fault: KeyError: 'pid' at test_cov_fault_text.py:{line}; every VM was "
        "stopped and frameos exits (please report this)"
    )
    assert line == _lookup.__code__.co_firstlineno + 1  # the innermost frame, not the caller's


def test_a_fault_never_raised_has_no_place_and_a_frameos_error_is_itself() -> None:
    assert _fault_text(RuntimeError("x")) == (
        "internal fault: RuntimeError: x; every VM was stopped and frameos exits "
        "(please report this)"
    )
    assert _fault_text(FrameosError("vm a: launch failed")) == "vm a: launch failed"
