"""The durable log: append, recovery of torn tails, seq continuation, rotation, reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frameos.envelope import decode, encode
from frameos.errors import EventLogError, StaleCursorError
from frameos.eventlog import EventLog, Page
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
    page = log.read_after(oldest - 1, 10_000)
    assert [decode(line).seq for line in page.lines] == list(range(oldest, 201))
    assert (page.next_cursor, page.head, page.oldest, page.complete) == (200, 200, oldest, True)
    assert [decode(line).seq for line in log.read_after(oldest + 9, 5).lines] == list(
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
    [line] = log.read_after(0, 10).lines
    data = json.loads(line)
    assert list(data) == ["v", "seq", "timestamp", "event", "severity", "fields"]
    assert data["fields"] == {"text": "m1"}
    log.close()


def test_read_after_at_any_depth(tmp_path: Path) -> None:
    """Binary search by offset: every cursor, including inside the scanned span and the ends."""
    log = EventLog(tmp_path / "e.jsonl", max_bytes=None)
    log.open()
    log.append(lines(1, 3000))  # ~300 KB: many probes before the final scan
    for after in (0, 1, 2, 57, 1499, 1500, 2998, 2999):
        page = log.read_after(after, 2)
        assert [decode(line).seq for line in page.lines] == list(
            range(after + 1, min(after + 3, 3001))
        )
        assert page.next_cursor == min(after + 2, 3000)
        assert (page.head, page.oldest) == (3000, 1)
    assert log.read_after(3000, 10) == Page([], 3000, 3000, 1)
    assert log.read_after(4000, 10) == Page([], 4000, 3000, 1)
    assert not log.read_after(0, 10).complete
    assert (log.oldest_seq(), log.head_seq()) == (1, 3000)
    log.close()


def test_empty_log_reads_empty(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    log.open()
    assert log.read_after(0, 10) == Page([], 0, 0, None)
    assert (log.oldest_seq(), log.head_seq()) == (None, 0)
    log.close()


def test_a_line_being_written_is_never_returned(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    log.open()
    log.append(lines(1, 3))
    with path.open("ab") as handle:  # what a reader can see in the middle of a write
        handle.write(lines(4, 1)[:20])
    page = log.read_after(0, 10)
    assert [decode(line).seq for line in page.lines] == [1, 2, 3]
    assert page.head == 3
    log.close()


def test_stale_cursor_names_oldest_and_head(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", max_bytes=2000, keep=1)
    log.open()
    for start in range(1, 100, 10):
        log.append(lines(start, 10))
    oldest = log.oldest_seq()
    assert oldest is not None and oldest > 1
    with pytest.raises(StaleCursorError) as caught:
        log.read_after(oldest - 2, 10)
    assert (caught.value.requested, caught.value.oldest, caught.value.head) == (
        oldest - 2,
        oldest,
        100,
    )
    assert decode(log.read_after(oldest - 1, 1).lines[0]).seq == oldest
    log.close()


def test_lines_with_another_prefix_are_still_found(tmp_path: Path) -> None:
    """A line whose prefix is not the fixed one (another key order) falls back to decoding."""
    path = tmp_path / "e.jsonl"
    odd = b"".join(
        b'{"seq":%d,"v":1,"timestamp":1.0,"event":"message","severity":"info","fields":{"text":"%s"}}\n'
        % (seq, b"x" * 200)
        for seq in range(1, 400)
    )
    path.write_bytes(odd)
    log = EventLog(path, max_bytes=None)
    log.open()
    assert [decode(line).seq for line in log.read_after(300, 3).lines] == [301, 302, 303]
    log.close()
