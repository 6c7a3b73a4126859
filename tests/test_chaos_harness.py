"""The chaos session's own checks (bench/chaos.py, bench/_common.py) catch what they claim to:
a gap, a duplicate, a torn or garbled line in a rotated log, and a process of a tagged instance
wherever it was reparented. A checker that cannot fail would make `nox -s chaos` green for
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import chaos
from _common import TAG_VAR, kill_tagged, tagged


def line(seq: int) -> bytes:
    return json.dumps({"v": 1, "seq": seq, "event": "message", "fields": {}}).encode() + b"\n"


def write_log(directory: Path, files: list[list[int]], tail: bytes = b"") -> None:
    """`files` oldest first: the last is events.jsonl, the others events.jsonl.N … .1."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"{chaos.LOG_NAME}.{n}" for n in range(len(files) - 1, 0, -1)] + [chaos.LOG_NAME]
    for name, seqs in zip(names, files, strict=True):
        data = b"".join(line(s) for s in seqs)
        (directory / name).write_bytes(data + (tail if name == chaos.LOG_NAME else b""))


def test_a_whole_rotated_log_passes(tmp_path: Path) -> None:
    write_log(tmp_path, [[1, 2, 3], [4, 5], [6, 7, 8]])
    report = chaos.verify_log(tmp_path, live=False)
    assert chaos.log_ok(report)
    assert (report["first_seq"], report["last_seq"], report["lines"]) == (1, 8, 8)


@pytest.mark.parametrize(
    ("files", "tail", "key"),
    [
        ([[1, 2], [4, 5]], b"", "gaps"),  # a gap across a rotation
        ([[1, 2, 3], [3, 4]], b"", "duplicates"),  # renumbered after a restart
        ([[1, 2], [3]], b'{"v":1,"seq":4,"ev', "torn_tail"),  # a torn last line
    ],
)
def test_each_fault_is_caught(
    tmp_path: Path, files: list[list[int]], tail: bytes, key: str
) -> None:
    write_log(tmp_path, files, tail)
    report = chaos.verify_log(tmp_path, live=False)
    assert report[key]
    assert not chaos.log_ok(report)


def test_a_garbled_line_is_caught_and_a_live_tail_is_not(tmp_path: Path) -> None:
    write_log(tmp_path, [[1, 2]], b"half a li")
    assert chaos.log_ok(chaos.verify_log(tmp_path, live=True))  # a writer is appending
    (tmp_path / chaos.LOG_NAME).write_bytes(line(1) + b"garbage\n" + line(2))
    report = chaos.verify_log(tmp_path, live=True)
    assert report["bad_lines"] == 1
    assert not chaos.log_ok(report)


def test_tagged_finds_a_reparented_grandchild() -> None:
    tag = f"test-{os.getpid()}"
    env = {**os.environ, TAG_VAR: tag}
    # the shell exits at once: its `sleep` child is reparented, found by the tag alone
    subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 &"], env=env, check=True, timeout=10)
    try:
        # polled: while the forked shell execs `sleep`, its /proc environ can read empty
        assert chaos.wait_for(lambda: len(tagged(tag)) == 1, 5.0), tagged(tag)
        (pid,) = tagged(tag)
        comm = Path(f"/proc/{pid}/comm")  # the forked shell execs `sleep` a moment later
        assert chaos.wait_for(lambda: comm.read_text().strip() == "sleep", 5.0)
        assert tagged(f"{tag}-other") == set()
    finally:
        assert kill_tagged(tag) == 1
    assert chaos.wait_for(lambda: not tagged(tag), 5.0)
