"""The durable, append-only event log (SPEC §4): plain synchronous file I/O, no trio.

One envelope per line. On open, a torn last line is truncated and reported, and `last_seq`
tells the bus where numbering continues. The file is held with an exclusive `flock`, so two
writers can never interleave sequence numbers. Rotation at `max_bytes` renames PATH → PATH.1 …
PATH.keep. The bus calls `append` and `sync` from a worker thread; readers open their own handles.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from frameos.envelope import decode
from frameos.errors import EventLogError

TAIL_SCAN = 1 << 20  # how far back recovery looks for the last good line


@dataclass(frozen=True)
class Recovery:
    """What opening the log found: where seq continues and what was cut off."""

    last_seq: int
    truncated_bytes: int
    truncated_at: int


class EventLog:
    """An append-only JSON-lines file with rotation, recovery and an exclusive writer lock."""

    def __init__(self, path: Path, *, max_bytes: int | None = 64 << 20, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None
        # Held while the fd is synced, swapped or closed: fsync runs in a worker thread while
        # appends (and so rotation) happen on the event loop.
        self._fd_lock = threading.Lock()
        self._size = 0
        self.bytes_written = 0

    # --- writer side ---------------------------------------------------------------------------

    def open(self) -> Recovery:
        """Open (creating parents), lock, recover the tail; raises EventLogError with a fix."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise EventLogError(
                f"event log {self.path}: cannot open ({exc.strerror}); check that the directory "
                f"is writable, or choose another path with --event-log"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EventLogError(
                f"event log {self.path}: another frameos is writing it; stop that instance or "
                f"pass another --event-log"
            ) from None
        self._fd = fd
        recovery = self._recover(fd)
        self._size = os.fstat(fd).st_size
        return recovery

    def _recover(self, fd: int) -> Recovery:
        size = os.fstat(fd).st_size
        start = max(0, size - TAIL_SCAN)
        tail = os.pread(fd, size - start, start)
        # A line is good when it ends with a newline and parses; everything after the last good
        # line is a torn write.
        good_end = tail.rfind(b"\n") + 1
        last_seq: int | None = None
        while good_end > 0:
            begin = tail.rfind(b"\n", 0, good_end - 1) + 1
            try:
                last_seq = decode(tail[begin:good_end]).seq
                break
            except ValueError:
                good_end = begin
        truncated = len(tail) - good_end
        if truncated:
            os.ftruncate(fd, start + good_end)
            os.fsync(fd)
        if last_seq is None:
            last_seq = self._last_seq_of_rotated()
        return Recovery(last_seq, truncated, start + good_end)

    def _last_seq_of_rotated(self) -> int:
        for path in self._rotated_paths():
            last = _last_line(path)
            if last is not None:
                return decode(last).seq
        return 0

    def append(self, data: bytes) -> None:
        """Write `data` (whole lines) with one write call; rotate when the file is full."""
        fd = self._require_fd()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self._size += len(data)
        self.bytes_written += len(data)
        if self.max_bytes is not None and self._size >= self.max_bytes:
            self._rotate()

    def sync(self) -> None:
        """fsync the file (per the fsync policy); safe from a worker thread."""
        with self._fd_lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def _rotate(self) -> None:
        with self._fd_lock:
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        fd = self._require_fd()
        os.fsync(fd)
        if self.keep == 0:
            os.ftruncate(fd, 0)
            self._size = 0
            return
        for index in range(self.keep - 1, 0, -1):
            older = self._numbered(index)
            if older.exists():
                older.replace(self._numbered(index + 1))
        self.path.replace(self._numbered(1))
        new_fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        self._fd = new_fd
        self._size = 0
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def _require_fd(self) -> int:
        if self._fd is None:
            raise EventLogError(f"event log {self.path} is not open")
        return self._fd

    # --- reader side (any thread, own file handles) ------------------------------------------

    def _numbered(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _rotated_paths(self) -> list[Path]:
        """Rotated files, newest first."""
        return [p for p in (self._numbered(i) for i in range(1, self.keep + 1)) if p.exists()]

    def files_oldest_first(self) -> list[Path]:
        return [*reversed(self._rotated_paths()), self.path]

    def oldest_seq(self) -> int | None:
        """The seq of the oldest retained event, or None when the log is empty."""
        for path in self.files_oldest_first():
            first = _first_line(path)
            if first is not None:
                return decode(first).seq
        return None

    def read_after(self, after: int, limit: int) -> list[bytes]:
        """Up to `limit` envelope lines with seq > `after`, oldest first, across rotations."""
        out: list[bytes] = []
        files = self.files_oldest_first()
        # Skip whole files whose successor starts at or before `after` + 1.
        starts = [_first_seq(p) for p in files]
        begin = 0
        for index, first in enumerate(starts):
            if first is not None and first <= after + 1:
                begin = index
        for path in files[begin:]:
            for line in _lines(path):
                if len(out) >= limit:
                    return out
                try:
                    seq = decode(line).seq
                except ValueError:
                    continue  # a line being written right now
                if seq > after:
                    out.append(line)
        return out


def _first_seq(path: Path) -> int | None:
    line = _first_line(path)
    return decode(line).seq if line is not None else None


def _first_line(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            line = handle.readline()
    except FileNotFoundError:
        return None
    return line if line.endswith(b"\n") else None


def _last_line(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_SCAN)
            handle.seek(start)
            chunk = handle.read()
    except FileNotFoundError:
        return None
    lines = [ln for ln in chunk.split(b"\n") if ln]
    for line in reversed(lines):
        try:
            decode(line)
            return line + b"\n"
        except ValueError:
            continue
    return None


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    yield line
    except FileNotFoundError:
        return
