"""The durable, append-only event log (SPEC §4): plain synchronous file I/O, no trio.

One envelope per line. On open, a torn last line is truncated and reported, and `last_seq`
tells the bus where numbering continues. The file is held with an exclusive `flock`, so two
writers can never interleave sequence numbers.

Writing. `append` writes whole lines; when a write fails (ENOSPC, EIO, a short write) the file
is cut back to the last good size before the error propagates, so no torn line is ever left and
the caller may simply retry. Rotation at `max_bytes` first opens `PATH.new`, then shifts
`PATH.k`, renames PATH → PATH.1 and PATH.new → PATH: a failed open (EMFILE, ENOSPC) changes
nothing and the rotation is retried later (`rotation_error` says why meanwhile); an interrupted
one is finished by the next `open`. With `keep: 0` the new file starts with the last line of the
old one, so seq continues after a restart whatever the retention.

Reading (`read_after`, any thread, own file handles). Seq increases by one per line within a
file and across files, so a cursor read is a binary search by byte offset in the one file that
holds the cursor, reading only a line's fixed prefix `{"v":1,"seq":N,`, then one sequential read
of at most `limit` lines: O(log size + limit) at any depth, no JSON decoding. Only complete
lines (ending in a newline) present when the read started are returned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from frameos.envelope import decode
from frameos.errors import EventLogError, StaleCursorError
from frameos.events import ENVELOPE_VERSION

TAIL_SCAN = 1 << 20  # how far back recovery looks for the last good line
PREFIX = b'{"v":%d,"seq":' % ENVELOPE_VERSION
PROBE = 4096  # bytes read at a time when looking for a line boundary
SCAN_BYTES = 16 << 10  # below this span the binary search reads the lines in one go
SNAPSHOT_TRIES = 3  # a rotation racing a reader is retried this often
MIN_FREE_BYTES = 64 << 10  # below this at open, the disk counts as full
ROTATE_RETRY_FIRST_S = 0.05
ROTATE_RETRY_MAX_S = 2.0
# How long a rotation or `close` waits for an fsync in flight (a slow or hung disk): then the
# rotation is left to a later append, and `close` closes without its own fsync.
LOCK_WAIT_S = 1.0
_WRITE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC

_HINTS = {
    errno.ENOSPC: "the disk is full: free space on it",
    errno.EDQUOT: "the disk quota is exhausted: free space or raise the quota",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n, LimitNOFILE=)",
    errno.ENFILE: "the system is out of file handles: close some or raise fs.file-max",
    errno.EROFS: "the filesystem is read-only: remount it read-write",
    errno.EACCES: "check that the directory is writable",
    errno.EPERM: "check that the directory is writable",
}


def explain(exc: OSError) -> str:
    """`strerror` and what to do about it, for one-line messages."""
    hint = _HINTS.get(exc.errno or 0, "check the disk and the path")
    return f"{exc.strerror or exc}; {hint}"


@dataclass(frozen=True)
class Recovery:
    """What opening the log found: where seq continues and what was cut off."""

    last_seq: int
    truncated_bytes: int
    truncated_at: int


@dataclass(frozen=True)
class Page:
    """One cursor read: lines with seq > the cursor, oldest first."""

    lines: list[bytes]  # envelope lines, each ending with b"\n"
    next_cursor: int  # seq of the last line returned; `after` when none was
    head: int  # newest complete seq in the log files at read time (0 when empty)
    oldest: int | None  # oldest retained seq (None when the log is empty)

    @property
    def complete(self) -> bool:
        """True when the read reached the head (nothing newer was in the files)."""
        return self.next_cursor >= self.head


@dataclass(frozen=True)
class _Segment:
    """One retained file as a reader saw it: its own fd and its complete lines' range."""

    fd: int
    first: int  # seq of the first line
    last: int  # seq of the last complete line
    last_start: int  # offset of the last complete line
    end: int  # offset just after the last complete line


class EventLog:
    """An append-only JSON-lines file with rotation, recovery and an exclusive writer lock."""

    def __init__(self, path: Path, *, max_bytes: int | None = 64 << 20, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None
        # Held while the fd is synced, swapped or closed: fsync runs in a worker thread while
        # appends happen on the event loop (the bus rotates in a worker thread too).
        self._fd_lock = threading.Lock()
        self._size = 0  # the last good size: everything up to it is whole lines
        self._torn = False  # a failed write may have left bytes past `_size`
        self._last_line = b""  # carried into the new file on rotation with keep 0
        self.bytes_written = 0
        self.rotation_error: OSError | None = None  # why the last rotation failed, if it did
        self.rotation_failures = 0
        self._rotate_delay = ROTATE_RETRY_FIRST_S
        self._rotate_not_before = 0.0

    # --- writer side ---------------------------------------------------------------------------

    def open(self) -> Recovery:
        """Open (creating parents), lock, recover the tail; raises EventLogError with a fix."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._finish_interrupted_rotation()
            fd = os.open(self.path, _WRITE_FLAGS, 0o640)
        except OSError as exc:
            raise EventLogError(
                f"event log {self.path}: cannot open ({explain(exc)}), or choose another path "
                f"with --event-log"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EventLogError(
                f"event log {self.path}: another frameos is writing it; stop that instance or "
                f"pass another --event-log"
            ) from None
        try:
            _require_room(fd)
            recovery = self._recover(fd)
            self._size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise EventLogError(
                f"event log {self.path}: cannot recover its tail ({explain(exc)})"
            ) from None
        except _DiskFull as full:
            os.close(fd)
            raise EventLogError(
                f"event log {self.path}: only {full.free} bytes free on its filesystem; free "
                f"space on it, or choose another path with --event-log"
            ) from None
        self._fd = fd
        return recovery

    def _finish_interrupted_rotation(self) -> None:
        """A crash mid-rotation leaves PATH.new: put it in place, or drop it if PATH exists."""
        new = self._new_path()
        if new.exists():
            if self.path.exists():
                new.unlink()
            else:
                new.replace(self.path)

    def _recover(self, fd: int) -> Recovery:
        size = os.fstat(fd).st_size
        window = TAIL_SCAN
        while True:  # widen the window until it holds a good line, or is the whole file
            start = max(0, size - window)
            tail = os.pread(fd, size - start, start)
            good_end, last_seq = self._last_good_line(tail, whole=start == 0)
            if last_seq is not None or start == 0:
                break
            window *= 2
        truncated = len(tail) - good_end
        if truncated:
            os.ftruncate(fd, start + good_end)
            os.fsync(fd)
        if last_seq is None:
            last_seq = self._last_seq_of_rotated()
        return Recovery(last_seq, truncated, start + good_end)

    def _last_good_line(self, tail: bytes, *, whole: bool) -> tuple[int, int | None]:
        """The end of the last good line in `tail` and its seq (None when it has none).

        A line is good when it ends with a newline and parses; everything after the last good
        line is a torn write. Unless `tail` is the `whole` file, what precedes its first
        newline may be the end of a longer line: it is never taken for a line.
        """
        floor = 0 if whole else tail.find(b"\n") + 1
        good_end = tail.rfind(b"\n") + 1
        while good_end > floor:
            begin = tail.rfind(b"\n", 0, good_end - 1) + 1
            try:
                seq = decode(tail[begin:good_end]).seq
            except ValueError:
                good_end = begin
                continue
            self._last_line = tail[begin:good_end]
            return good_end, seq
        return 0, None

    def _last_seq_of_rotated(self) -> int:
        for path in self._rotated_paths():
            last = _last_line(path)
            if last is not None:
                self._last_line = last
                return decode(last).seq
        return 0

    def append(self, data: bytes, *, rotate: bool = True) -> None:
        """Write `data` (whole lines); rotate when the file is full (unless `rotate` is False:
        on the event loop, call `rotate_if_due` in a worker thread instead, as it may wait on
        the fd lock and fsyncs).

        On OSError the file is cut back to its last good size (no torn line) and the error
        propagates: retrying the same `data` is safe. A failed rotation does not raise: the
        data is written, `rotation_error` says why, and a later append retries (backed off).
        """
        fd = self._require_fd()
        if self._torn:
            os.ftruncate(fd, self._size)
            self._torn = False
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            self._torn = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
                self._torn = False
            raise
        self._size += len(data)
        self.bytes_written += len(data)
        self._last_line = data[data.rfind(b"\n", 0, len(data) - 1) + 1 :]
        if rotate:
            self.rotate_if_due()

    def sync(self) -> None:
        """fsync the file (per the fsync policy); safe from a worker thread. Raises OSError."""
        with self._fd_lock:
            if self._fd is not None:
                os.fsync(self._fd)

    @property
    def rotation_due(self) -> bool:
        """The file reached `max_bytes` and no failed rotation is backing off."""
        return (
            self.max_bytes is not None
            and self._size >= self.max_bytes
            and time.monotonic() >= self._rotate_not_before
        )

    def rotate_if_due(self) -> None:
        """Rotate when `rotation_due`; never raises (`rotation_error` says why it failed).
        Blocks on the fd lock and fsyncs: from the event loop, call it in a worker thread."""
        if not self.rotation_due or not self._fd_lock.acquire(timeout=LOCK_WAIT_S):
            return  # not due, or an fsync in flight takes long: a later append tries again
        try:
            self._rotate_locked()
        except OSError as exc:
            self.rotation_error = exc
            self.rotation_failures += 1
            self._rotate_not_before = time.monotonic() + self._rotate_delay
            self._rotate_delay = min(self._rotate_delay * 2, ROTATE_RETRY_MAX_S)
            return
        finally:
            self._fd_lock.release()
        self.rotation_error = None
        self._rotate_delay = ROTATE_RETRY_FIRST_S

    def _rotate_locked(self) -> None:
        old = self._require_fd()
        os.fsync(old)
        new_path = self._new_path()
        fd = os.open(new_path, _WRITE_FLAGS | os.O_TRUNC, 0o640)  # first: may fail harmlessly
        carried = self._last_line if self.keep == 0 else b""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if carried:  # keep 0: the new file starts with the last line, so seq survives
                os.write(fd, carried)
                os.fsync(fd)
            for index in range(self.keep - 1, 0, -1):
                older = self._numbered(index)
                if older.exists():
                    older.replace(self._numbered(index + 1))
            if self.keep:
                self.path.replace(self._numbered(1))
            new_path.replace(self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                if not self.path.exists():  # undo the half of the rename that happened
                    self._numbered(1).replace(self.path)
                new_path.unlink(missing_ok=True)
            raise
        os.close(old)
        self._fd = fd
        self._size = len(carried)
        self._torn = False
        with contextlib.suppress(OSError):
            _fsync_dir(self.path.parent)

    def close(self) -> None:
        """fsync and close; never raises (a failed fsync was already reported by the bus).

        An fsync in flight longer than LOCK_WAIT_S (a hung disk, its thread abandoned by the
        bus) does not hold up the exit: the file is closed without waiting for it."""
        locked = self._fd_lock.acquire(timeout=LOCK_WAIT_S)
        try:
            fd, self._fd = self._fd, None
            if fd is not None:
                if locked:
                    with contextlib.suppress(OSError):
                        os.fsync(fd)
                os.close(fd)
        finally:
            if locked:
                self._fd_lock.release()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise EventLogError(f"event log {self.path} is not open")
        return self._fd

    # --- reader side (any thread, own file handles) ------------------------------------------

    def _numbered(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _new_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.new")

    def _rotated_paths(self) -> list[Path]:
        """Rotated files, newest first."""
        return [p for p in (self._numbered(i) for i in range(1, self.keep + 1)) if p.exists()]

    def files_oldest_first(self) -> list[Path]:
        return [*reversed(self._rotated_paths()), self.path]

    def oldest_seq(self) -> int | None:
        """The seq of the oldest retained event, or None when the log is empty."""
        with self._snapshot() as chain:
            return chain[0].first if chain else None

    def head_seq(self) -> int:
        """The seq of the newest complete line in the files (0 when the log is empty)."""
        with self._snapshot() as chain:
            return chain[-1].last if chain else 0

    def read_after(self, after: int, limit: int) -> Page:
        """Up to `limit` lines with seq > `after`, oldest first, across rotations.

        Raises StaleCursorError when events after `after` are no longer retained, and
        EventLogError when the files cannot be read.
        """
        with self._snapshot() as chain:
            if not chain:
                return Page([], after, 0, None)
            oldest, head = chain[0].first, chain[-1].last
            if after + 1 < oldest:
                raise StaleCursorError(after, oldest, head)
            lines: list[bytes] = []
            for seg in chain:
                if len(lines) >= limit:
                    break
                if seg.last <= after:
                    continue
                start = 0 if seg.first > after else _find(seg, after)
                _read_lines(seg, start, limit - len(lines), lines)
            cursor = _line_seq(lines[-1]) if lines else after
            return Page(lines, cursor if cursor is not None else after + len(lines), head, oldest)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[list[_Segment]]:
        """The retained files as one contiguous chain of segments, oldest first (fds closed
        on exit). A rotation during the opens shows as a break in the chain: try again."""
        chain: list[_Segment] = []
        try:
            for attempt in range(SNAPSHOT_TRIES):
                broken = self._open_chain(chain)
                if not broken or attempt == SNAPSHOT_TRIES - 1:
                    break
                _close_all(chain)
            yield chain
        except OSError as exc:
            raise EventLogError(f"event log {self.path}: cannot read ({explain(exc)})") from None
        finally:
            _close_all(chain)

    def _open_chain(self, chain: list[_Segment]) -> bool:
        """Fill `chain` (oldest first) from the newest file back; True when it broke off."""
        for path in [self.path, *self._rotated_paths()]:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                seg = _segment(fd)
            except BaseException:  # EIO reading it: not in `chain` yet, so close it here
                os.close(fd)
                raise
            if seg is None:
                os.close(fd)
                continue
            if chain and seg.last + 1 != chain[0].first:
                os.close(fd)
                return True
            chain.insert(0, seg)
        return False


class _DiskFull(Exception):
    def __init__(self, free: int) -> None:
        self.free = free


def _require_room(fd: int) -> None:
    """Refuse to start on a full disk: it would run with every event stuck in memory."""
    stat = os.fstatvfs(fd)
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail  # root may use the reserve
    free = blocks * stat.f_frsize
    if free < MIN_FREE_BYTES:
        raise _DiskFull(free)


def _close_all(chain: list[_Segment]) -> None:
    while chain:
        os.close(chain.pop().fd)


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- reading by offset -----------------------------------------------------------------------


def _parse_seq(buf: bytes, at: int) -> int | None:
    """The seq in the fixed prefix of the line starting at `at`, without decoding JSON."""
    if not buf.startswith(PREFIX, at):
        return None
    digits_at = at + len(PREFIX)
    comma = buf.find(b",", digits_at, digits_at + 21)
    digits = buf[digits_at:comma] if comma > 0 else b""
    return int(digits) if digits.isdigit() else None


def _line_seq(line: bytes) -> int | None:
    """A line's seq: from the prefix, else by decoding (a line not written by this version)."""
    seq = _parse_seq(line, 0)
    if seq is None:
        try:
            seq = decode(line).seq
        except ValueError:
            return None
    return seq


def _seq_at(fd: int, at: int, end: int) -> int | None:
    seq = _parse_seq(os.pread(fd, len(PREFIX) + 22, at), 0)
    if seq is None:
        stop = _newline_at_or_after(fd, at, end)
        seq = _line_seq(os.pread(fd, stop + 1 - at, at))
    return seq


def _newline_at_or_after(fd: int, pos: int, end: int) -> int:
    """Offset of the first newline in [pos, end) (end - 1 when none: `end` ends a line)."""
    while pos < end:
        chunk = os.pread(fd, min(PROBE, end - pos), pos)
        index = chunk.find(b"\n")
        if index >= 0:
            return pos + index
        pos += len(chunk)
    return end - 1


def _newline_before(fd: int, pos: int) -> int:
    """Offset of the last newline in [0, pos), or -1."""
    while pos > 0:
        start = max(0, pos - PROBE)
        index = os.pread(fd, pos - start, start).rfind(b"\n")
        if index >= 0:
            return start + index
        pos = start
    return -1


def _segment(fd: int) -> _Segment | None:
    """A file's complete lines: first and last seq and where they are (None when none)."""
    size = os.fstat(fd).st_size
    last_newline = _newline_before(fd, size)
    if last_newline < 0:
        return None
    end = last_newline + 1
    last_start = _newline_before(fd, last_newline) + 1
    first, last = _seq_at(fd, 0, end), _seq_at(fd, last_start, end)
    if first is None or last is None:
        return None
    return _Segment(fd, first, last, last_start, end)


def _find(seg: _Segment, after: int) -> int:
    """Offset of the first line with seq > `after`, for seg.first <= after < seg.last.

    Binary search by byte offset: `lo` is a line start with seq <= after, `hi` one with seq >
    after. Each probe reads one line's prefix; a short span is read and scanned in one go.
    """
    lo, hi = 0, seg.last_start
    while hi - lo > SCAN_BYTES:
        mid = (lo + hi) // 2
        start = _newline_at_or_after(seg.fd, mid, hi) + 1
        if start >= hi:
            break  # one long line spans [mid, hi): scan what is left of [lo, hi)
        seq = _seq_at(seg.fd, start, seg.end)
        if seq is not None and seq > after:
            hi = start
        else:
            lo = start
    buf = os.pread(seg.fd, hi - lo, lo)
    pos = 0
    while pos < len(buf):
        seq = _parse_seq(buf, pos)
        newline = buf.find(b"\n", pos)
        if seq is None:
            seq = _line_seq(buf[pos : newline + 1])
        if seq is not None and seq > after:
            return lo + pos
        pos = newline + 1
    return hi


def _read_lines(seg: _Segment, pos: int, limit: int, out: list[bytes]) -> None:
    """Append up to `limit` complete lines of `seg` from offset `pos` to `out`."""
    count = seg.last - seg.first + 1
    per_line = seg.end // count + 1 if count > 0 else 256
    want = 0
    while limit > 0 and pos < seg.end:
        want = max(want * 2, min(seg.end - pos, per_line * limit + PROBE))
        size = min(want, seg.end - pos)
        chunk = os.pread(seg.fd, size, pos)
        got = chunk.splitlines(keepends=True)
        if got and not got[-1].endswith(b"\n"):
            got.pop()  # cut by the read size: read again from there
        if not got:
            if len(chunk) < size:
                return  # the writer cut back lines of a failed write: they come again later
            continue  # a line longer than `want`: read more
        taken = got[:limit]
        out.extend(taken)
        limit -= len(taken)
        pos += sum(map(len, taken))
        want = 0


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
