"""The durable log: append, recovery of torn tails, seq continuation, rotation, reading."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from frameos import eventlog
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


# --- faults (issue 8 #2, #6) -----------------------------------------------------------------


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write then ENOSPC mid-line: the file is cut back to its last whole line."""
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    log.open()
    log.append(lines(1, 3))
    real_write = os.write

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 30:
            return real_write(fd, bytes(data)[:30])  # a short write: half a line
        raise enospc()

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError, match="No space left"):
        log.append(lines(4, 2))
    assert path.read_bytes() == lines(1, 3)  # no partial line left behind
    monkeypatch.setattr(os, "write", real_write)
    log.append(lines(4, 2))  # the retry of the same batch
    assert path.read_bytes() == lines(1, 5)
    log.close()


def test_a_failed_cut_back_is_redone_before_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    log.open()
    real_write, real_truncate = os.write, os.ftruncate

    def torn(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[:10])
        raise OSError(errno.EIO, "I/O error")

    def failing_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", torn)
    monkeypatch.setattr(os, "ftruncate", failing_truncate)
    with pytest.raises(OSError, match="I/O error"):
        log.append(lines(1, 1))
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    log.append(lines(1, 1))
    assert path.read_bytes() == lines(1, 1)
    log.close()


def test_rotation_that_cannot_open_its_new_file_renames_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE at rotation: the old code had already renamed events.jsonl to .1 and crashed."""
    path = tmp_path / "e.jsonl"
    log = EventLog(path, max_bytes=500, keep=2)
    log.open()
    monkeypatch.setattr(eventlog, "ROTATE_RETRY_FIRST_S", 0.0)  # retry at the next append
    log._rotate_delay = 0.0
    real_open = os.open
    failures = [0]

    def no_fds(file: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if str(file).endswith(".new") and failures[0] < 2:
            failures[0] += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(file, flags, mode)

    monkeypatch.setattr(os, "open", no_fds)
    log.append(lines(1, 10))  # over max_bytes: the rotation fails, the data is written
    assert isinstance(log.rotation_error, OSError) and log.rotation_error.errno == errno.EMFILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    log.append(lines(11, 1))  # fails again, writing goes on in the same file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    log.append(lines(12, 1))  # the fd limit is gone: rotates
    assert log.rotation_error is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl", "e.jsonl.1"]
    assert path.read_bytes() == b""
    log.append(lines(13, 1))
    assert [decode(line).seq for line in log.read_after(0, 100).lines] == list(range(1, 14))
    log.close()


def test_a_rotation_interrupted_before_the_last_rename_is_finished_on_open(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    (tmp_path / "e.jsonl.1").write_bytes(lines(1, 3))
    (tmp_path / "e.jsonl.new").write_bytes(b"")  # renamed PATH → PATH.1, then killed
    log = EventLog(path, keep=2)
    assert log.open().last_seq == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl", "e.jsonl.1"]
    log.close()


def test_a_leftover_new_file_is_dropped_when_the_log_is_in_place(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(lines(1, 3))
    (tmp_path / "e.jsonl.new").write_bytes(b"")  # killed after opening PATH.new
    log = EventLog(path, keep=2)
    assert log.open().last_seq == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    log.close()


def test_keep_0_never_renumbers_after_a_kill_right_after_rotation(tmp_path: Path) -> None:
    """issue 8 #6: the old code truncated the file, so the next instance started again at 1."""
    path = tmp_path / "e.jsonl"
    log = EventLog(path, max_bytes=500, keep=0)
    log.open()
    log.append(lines(1, 10))  # rotates: keep 0 keeps nothing but the last line
    assert not list(tmp_path.glob("e.jsonl.*"))
    assert [decode(line).seq for line in log.read_after(9, 10).lines] == [10]
    assert log._fd is not None
    os.close(log._fd)  # "SIGKILL": no close, no fsync of anything more
    again = EventLog(path, max_bytes=500, keep=0)
    assert again.open().last_seq == 10
    again.append(lines(11, 1))
    assert [decode(line).seq for line in again.read_after(9, 10).lines] == [10, 11]
    again.close()


def test_opening_on_a_full_disk_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog, "MIN_FREE_BYTES", 1 << 62)  # every disk is full
    with pytest.raises(EventLogError, match=r"bytes free on its filesystem; free space on it"):
        EventLog(tmp_path / "e.jsonl").open()


def test_open_errors_name_the_cause_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> int:
        raise enospc()

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(
        EventLogError, match=r"cannot open \(No space left on device; the disk is full"
    ):
        EventLog(tmp_path / "e.jsonl").open()


def test_a_reader_racing_the_writer_and_its_rotations_sees_no_gap(tmp_path: Path) -> None:
    """A reader following next_cursor in another thread while the writer appends and rotates:
    every page continues exactly where the last one ended (or the cursor went stale)."""
    log = EventLog(tmp_path / "e.jsonl", max_bytes=4000, keep=3)
    log.open()
    problems: list[str] = []
    done = threading.Event()

    def follow() -> None:
        cursor = 0
        while not done.is_set() or cursor < 3000:
            try:
                page = log.read_after(cursor, 50)
            except StaleCursorError as stale:
                cursor = stale.oldest - 1  # rotated away meanwhile: resume at the oldest
                continue
            seqs = [decode(line).seq for line in page.lines]
            if seqs != list(range(cursor + 1, cursor + 1 + len(seqs))):
                problems.append(f"after {cursor}: {seqs[:3]}…")
                return
            cursor = page.next_cursor

    reader = threading.Thread(target=follow)
    reader.start()
    for start in range(1, 3001, 5):
        log.append(lines(start, 5))
    done.set()
    reader.join(30)
    assert not reader.is_alive()
    assert problems == []
    log.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_failing_read_leaks_no_file_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fd just opened for a file whose first read failed (EIO) was not in the chain yet,
    so nothing closed it: one fd leaked per failing read."""
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    log.append(lines(1, 3))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(eventlog, "_segment", eio)
    before = open_fds()
    for _ in range(5):
        with pytest.raises(EventLogError, match="cannot read"):
            log.read_after(0, 10)
    assert open_fds() == before
    log.close()


@pytest.mark.parametrize("case", ["a long last line", "a long torn tail"])
def test_recovery_never_cuts_mid_line_when_the_tail_window_has_no_good_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """With no good line in the last TAIL_SCAN bytes (a line longer than that, or a torn tail
    as long), recovery cut the file at the window's start, mid-line, and took seq from the
    rotated files (renumbering)."""
    monkeypatch.setattr(eventlog, "TAIL_SCAN", 256)
    path = tmp_path / "events.jsonl"
    long_line = encode(Message(text="x" * 1000), 4, 1.0).line
    good = lines(1, 3) + (long_line if case == "a long last line" else b"")
    torn = b"" if case == "a long last line" else b'{"v":1,"seq":4,"text":"' + b"y" * 1000
    path.write_bytes(good + torn)
    log = EventLog(path)
    recovery = log.open()
    assert recovery.last_seq == (4 if case == "a long last line" else 3)
    assert (recovery.truncated_bytes, recovery.truncated_at) == (len(torn), len(good))
    assert path.read_bytes() == good
    log.append(lines(recovery.last_seq + 1, 1))
    log.close()
    seqs = [decode(line).seq for line in path.read_bytes().splitlines()]
    assert seqs == list(range(1, recovery.last_seq + 2))
