"""Two kinds of bad input worded at their edges: request heads the front door refuses
(frameos/server/httphead.py) and programs a VM's command names (frameos/config/runnable.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameos.config import runnable
from frameos.server.httphead import MAX_HEAD_BYTES, Rejected, parse_head


def test_a_head_over_the_limit_is_431_and_a_bad_version_400() -> None:
    with pytest.raises(Rejected) as big:
        parse_head(b"GET / HTTP/1.1\r\nx: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n")
    assert big.value.status == 431
    with pytest.raises(Rejected) as bad:
        parse_head(b"GET / HTPT/1.1\r\n\r\n")
    assert bad.value.status == 400 and "malformed HTTP version" in bad.value.message


def test_a_program_that_is_a_directory_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "tool").mkdir()
    why = runnable._program_problem("tool", str(tmp_path), None)
    assert why == f"'tool' is a directory ({tmp_path / 'tool'}), not a program; name the program"


def test_a_path_entry_that_cannot_be_listed_is_skipped_for_the_guess(tmp_path: Path) -> None:
    (tmp_path / "frameos-tool").write_text("")
    search = f"{tmp_path / 'missing'}:{tmp_path}"
    why = runnable._program_problem("frameos-tol", search, None)
    assert why is not None and "did you mean 'frameos-tool'?" in why


def test_the_guess_reads_at_most_max_listed_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runnable, "MAX_LISTED", 3)
    for name in ("a1", "a2", "a3", "a4"):
        (tmp_path / name).write_text("")
    second = tmp_path / "second"
    second.mkdir()
    (second / "frameos-tool").write_text("")
    why = runnable._program_problem("frameos-tol", f"{tmp_path}:{second}", None)
    assert why is not None and "did you mean" not in why  # the list stopped before `second`
