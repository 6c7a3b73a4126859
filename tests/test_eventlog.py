"""The durable log: append, recovery of torn tails, seq continuation, rotation, reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frameos.envelope import decode, encode
from frameos.errors import EventLogError
from frameos.eventlog import EventLog
from frameos.events import Message


def lines(first: int, count: int) -> bytes:
    return b"".join(
        encode(Message(text=f"m{seq}"), seq, 1.0).line for seq in range(first, first + count)
    )


def test_append_and_reopen_continues_seq(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    assert log.open().last_seq == 0
    log.append(lines(1, 5))
    log.close()
    again = EventLog(tmp_path / "events.jsonl")
    recovery = again.open()
    assert (recovery.last_seq, recovery.truncated_bytes) == (5, 0)
    again.close()


@pytest.mark.parametrize("torn", [b'{"v":1,"seq":6,"time', b"garbage\n", b'{"v":1}\n{"v'])
def test_torn_tail_is_truncated_and_reported(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "events.jsonl"
    good = lines(1, 5)
    path.write_bytes(good + torn)
    log = EventLog(path)
    recovery = log.open()
    log.close()
    assert recovery.last_seq == 5
    assert recovery.truncated_bytes == len(torn)
    assert recovery.truncated_at == len(good)
    assert path.read_bytes() == good


def test_entirely_torn_file_starts_from_the_rotated_one(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    (tmp_path / "events.jsonl.1").write_bytes(lines(1, 3))
    path.write_bytes(b'{"v":1,"se')
    log = EventLog(path)
    assert log.open().last_seq == 3
    log.close()


def test_second_writer_is_refused(tmp_path: Path) -> None:
    first = EventLog(tmp_path / "e.jsonl")
    first.open()
    with pytest.raises(EventLogError, match="another frameos is writing it"):
        EventLog(tmp_path / "e.jsonl").open()
    first.close()


def test_unopenable_path_says_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EventLogError, match=r"cannot open.*--event-log"):
        EventLog(tmp_path / "file" / "events.jsonl").open()


def test_rotation_keeps_files_and_reads_across_them(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=2000, keep=2)
    log.open()
    for start in range(1, 200, 10):
        log.append(lines(start, 10))
    assert (tmp_path / "events.jsonl.1").exists() and (tmp_path / "events.jsonl.2").exists()
    assert not (tmp_path / "events.jsonl.3").exists()
    oldest = log.oldest_seq()
    assert oldest is not None and oldest > 1  # the oldest files were dropped
    got = [decode(line).seq for line in log.read_after(oldest - 1, 10_000)]
    assert got == list(range(oldest, 201))
    assert [decode(line).seq for line in log.read_after(oldest + 9, 5)] == list(
        range(oldest + 10, oldest + 15)
    )
    log.close()
    reopened = EventLog(path, max_bytes=2000, keep=2)
    assert reopened.open().last_seq == 200
    reopened.close()


def test_lines_are_the_envelope_shape(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    log.open()
    log.append(lines(1, 1))
    [line] = log.read_after(0, 10)
    data = json.loads(line)
    assert list(data) == ["v", "seq", "timestamp", "event", "severity", "fields"]
    assert data["fields"] == {"text": "m1"}
    log.close()
