"""Reading seqs from log lines other versions (or a crash) may leave (frameos/eventlog.py):
a line whose keys are in another order is decoded, junk is no seq, and the last line of a
rotated file is the last one that decodes."""

from __future__ import annotations

import json
from pathlib import Path

from frameos.envelope import encode
from frameos.eventlog import EventLog, _last_line, _line_seq, _parse_seq
from frameos.events import Message


def line(seq: int) -> bytes:
    return encode(Message(text=f"event {seq}"), seq, 1.0).line


def test_the_seq_comes_from_the_prefix_or_from_decoding_the_line() -> None:
    ours = line(42)
    assert _parse_seq(ours, 0) == 42 and _line_seq(ours) == 42
    reordered = json.dumps(dict(reversed(json.loads(ours).items()))).encode()  # another writer
    assert _parse_seq(reordered, 0) is None and _line_seq(reordered) == 42
    assert _line_seq(b"not json at all") is None
    assert _parse_seq(ours[:-12].replace(b"42", b"4x"), 0) is None  # a prefix without digits


def test_the_last_line_of_a_rotated_file_is_the_last_that_decodes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.1"
    path.write_bytes(line(1) + line(2) + b'{"v":1,"seq":3,"torn')
    assert _last_line(path) == line(2)
    path.write_bytes(b"junk\nmore junk\n")
    assert _last_line(path) is None
    assert _last_line(tmp_path / "gone") is None


def test_a_line_longer_than_the_read_window_is_read_whole(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.open()
    long = encode(Message(text="L" * 100_000), 2, 1.0).line
    log.append(line(1) + long + line(3))
    page = log.read_after(1, 1)
    assert page.lines == [long] and page.next_cursor == 2
    log.close()
    log.close()  # closing twice is harmless
