"""The short commands' emitter: a full disk under the event log never ends `check`."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from frameos import events as ev
from frameos.emit import SyncEmitter
from frameos.eventlog import EventLog


def test_a_full_disk_stops_appending_but_keeps_reporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emitter = SyncEmitter("json", tmp_path / "events.jsonl")
    emitter.emit(ev.Message(text="fits"))

    def full(self: EventLog, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EventLog, "append", full)
    emitter.emit(ev.Message(text="does not fit"))
    emitter.emit(ev.Message(text="printed all the same"))
    emitter.close()
    out, err = capsys.readouterr()
    assert [line.count('"seq":') for line in out.splitlines()] == [1, 1, 1]
    assert "printed all the same" in out
    assert err.count("No space left on device; events are not appended") == 1
    assert (tmp_path / "events.jsonl").read_text().count("\n") == 1
