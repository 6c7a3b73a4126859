"""Property: whatever happened to the log, a cursor read returns exactly what is retained.

Any sequence of appends, rotations (small max_bytes, keep 0..3), torn tails (garbage without a
newline, then a reopen) and restarts (close and reopen, or a "SIGKILL": the fd dropped without
close) → `read_after(c, n)` returns exactly the retained seqs > c, in order, at most n, and
raises StaleCursorError exactly when c + 1 < the oldest retained seq. A model of the files
(the same bytes, the same rotation rule) says what is retained; seq never renumbers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frameos import eventlog
from frameos.envelope import decode, encode
from frameos.errors import StaleCursorError
from frameos.eventlog import EventLog
from frameos.events import Message

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6), st.integers(0, 120)),
        st.tuples(
            st.just("torn"),
            st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"x")),
            st.just(0),
        ),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
        st.tuples(st.just("kill"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None  # memory: 200 examples stay fast


class Model:
    """The retained files as lists of (seq, line length): newest last in `current`."""

    def __init__(self, max_bytes: int, keep: int) -> None:
        self.max_bytes, self.keep = max_bytes, keep
        self.rotated: list[list[int]] = []  # newest first
        self.current: list[int] = []
        self.size = 0
        self.last = 0
        self.last_len = 0

    def append(self, sizes: list[int]) -> None:
        for _ in sizes:
            self.last += 1
            self.current.append(self.last)
        self.size += sum(sizes)
        self.last_len = sizes[-1]
        if self.size >= self.max_bytes:
            if self.keep == 0:
                self.current, self.size = [self.last], self.last_len
            else:
                self.rotated = [self.current, *self.rotated][: self.keep]
                self.current, self.size = [], 0

    def retained(self) -> list[int]:
        return [seq for file in reversed(self.rotated) for seq in file] + self.current


def reopen(path: Path, max_bytes: int, keep: int) -> tuple[EventLog, int]:
    log = EventLog(path, max_bytes=max_bytes, keep=keep)
    return log, log.open().last_seq


@settings(max_examples=200, deadline=None)
@given(
    script=ops,
    keep=st.integers(0, 3),
    max_bytes=st.integers(200, 1500),
    reads=st.lists(st.tuples(st.integers(-1, 120), st.integers(0, 50)), min_size=1, max_size=8),
)
def test_read_after_returns_exactly_the_retained_seqs(
    script: list[tuple[str, object, int]], keep: int, max_bytes: int, reads: list[tuple[int, int]]
) -> None:
    # a tiny scan span, so the binary search by offset runs even in these small files
    # and no fsync: this is about what is read, not about power cuts (and it stays fast)
    with (
        tempfile.TemporaryDirectory(dir=SHM) as tmp,
        mock.patch.object(eventlog, "SCAN_BYTES", 64),
        mock.patch.object(os, "fsync", return_value=None),
    ):
        path = Path(tmp) / "events.jsonl"
        model = Model(max_bytes, keep)
        log, last = reopen(path, max_bytes, keep)
        for op, arg, length in script:
            if op == "append":
                assert isinstance(arg, int)
                batch = [
                    encode(Message(text="x" * length), last + i, 1.0).line
                    for i in range(1, arg + 1)
                ]
                log.append(b"".join(batch))
                last += arg
                model.append([len(line) for line in batch])
            elif op == "torn":
                assert isinstance(arg, bytes)
                log.close()
                with path.open("ab") as handle:
                    handle.write(arg)
                log, last = reopen(path, max_bytes, keep)
            elif op == "restart":
                log.close()
                log, last = reopen(path, max_bytes, keep)
            else:  # "kill": no fsync, no close; the kernel drops the fd and its lock
                assert log._fd is not None
                os.close(log._fd)
                log._fd = None
                log, last = reopen(path, max_bytes, keep)
            assert last == model.last  # seq continues, whatever the retention
        retained = model.retained()
        for after, limit in reads:
            if retained and after + 1 < retained[0]:
                with pytest.raises(StaleCursorError):
                    log.read_after(after, limit)
                continue
            page = log.read_after(after, limit)
            want = [seq for seq in retained if seq > after][:limit]
            assert [decode(line).seq for line in page.lines] == want
            assert all(line.endswith(b"\n") for line in page.lines)
            assert page.next_cursor == (want[-1] if want else after)
            assert page.head == (retained[-1] if retained else 0)
            assert page.oldest == (retained[0] if retained else None)
        log.close()
