"""A rotation of the event log that fails half way (frameos/eventlog.py `_rotate_locked`): the
current file is put back where it was, the half-made new file removed, nothing is lost, the log
goes on in the current file, and the next rotation works. The failure is a real OSError from a
rename (EIO), injected at the rename that moves the new file in or an older one along."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from frameos.envelope import encode
from frameos.eventlog import EventLog
from frameos.events import Message


def line(seq: int) -> bytes:
    return encode(Message(text=f"event {seq:03d} " + "x" * 60), seq, 1.0).line


def seqs_in(*paths: Path) -> list[int]:
    out: list[int] = []
    for path in paths:
        out += [
            int(x.split(b'"seq":', 1)[1].split(b",", 1)[0]) for x in path.read_bytes().splitlines()
        ]
    return out


def failing_rename(monkeypatch: pytest.MonkeyPatch, source_name: str) -> list[str]:
    """Path.replace raises EIO when it moves a file named `source_name`; the attempts seen."""
    real = Path.replace
    tried: list[str] = []

    def replace(self: Path, target: str | Path) -> Path:
        tried.append(self.name)
        if self.name == source_name:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    return tried


def filled(tmp_path: Path, count: int) -> EventLog:
    log = EventLog(tmp_path / "events.jsonl", max_bytes=512, keep=3)
    log.open()
    for seq in range(1, count + 1):
        log.append(line(seq), rotate=False)
    return log


@pytest.mark.parametrize(
    "failing",
    ["events.jsonl.new", "events.jsonl.1"],
    ids=["moving-the-new-file-in (after the current one moved out)", "moving-an-older-one-along"],
)
def test_a_rotation_failing_half_way_loses_nothing_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    log = filled(tmp_path, 6)
    log.rotate_if_due()  # a first rotation: events.jsonl.1 exists from now on
    assert seqs_in(tmp_path / "events.jsonl.1") == list(range(1, 7))
    for seq in range(7, 13):
        log.append(line(seq), rotate=False)
    tried = failing_rename(monkeypatch, failing)
    log.rotate_if_due()
    assert isinstance(log.rotation_error, OSError) and log.rotation_failures == 1
    assert failing in tried
    assert not (tmp_path / "events.jsonl.new").exists()  # the half-made file is gone
    assert seqs_in(*log.files_oldest_first()) == list(range(1, 13))  # nothing lost
    assert seqs_in(tmp_path / "events.jsonl") == list(range(7, 13))  # the current file is back
    log.append(line(13), rotate=False)  # the log goes on in the current file
    assert seqs_in(tmp_path / "events.jsonl") == list(range(7, 14))
    monkeypatch.undo()
    log._rotate_not_before = 0.0  # the retry backoff has passed
    log.rotate_if_due()
    log.append(line(14), rotate=False)
    log.close()
    assert log.rotation_error is None
    assert seqs_in(*log.files_oldest_first()) == list(range(1, 15))
    assert seqs_in(tmp_path / "events.jsonl") == [14]
