"""`GET /v1/vms/{name}/log` reads a VM's output file in pieces (frameos/server/api.py
read_output): rotation under the reader, a missing file, and UTF-8 never cut mid-character."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameos.server.api import _whole_utf8, read_output


def test_pieces_of_the_file_follow_on_from_next_offset(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"hello world\n")
    first = read_output(path, 0, 5)
    assert (first.data, first.offset, first.next_offset, first.size) == ("hello", 0, 5, 12)
    rest = read_output(path, first.next_offset, 100)
    assert rest.data == " world\n" and rest.next_offset == 12 and not rest.rotated
    assert read_output(path, 12, 100).data == ""  # at the end: nothing yet


def test_an_offset_past_the_end_is_a_rotation_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"new file\n")
    piece = read_output(path, 500, 100)
    assert piece.rotated and piece.offset == 0 and piece.data == "new file\n"


def test_a_missing_file_is_empty_and_rotated_only_for_a_reader_that_had_read(
    tmp_path: Path,
) -> None:
    assert not read_output(tmp_path / "none", 0, 10).rotated
    gone = read_output(tmp_path / "none", 40, 10)
    assert gone.rotated and (gone.data, gone.size, gone.next_offset) == ("", 0, 0)


def test_a_character_cut_by_the_limit_comes_whole_with_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes("a€b".encode())  # € is 3 bytes
    first = read_output(path, 0, 3)  # "a" and two of the euro's bytes
    assert first.data == "a" and first.next_offset == 1
    second = read_output(path, first.next_offset, 3)
    assert second.data == "€" and second.next_offset == 4


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"abc", b"abc"),
        ("é".encode(), "é".encode()),  # 2-byte sequence, whole
        ("a€".encode(), "a€".encode()),  # 3-byte, whole
        ("a😀".encode(), "a😀".encode()),  # 4-byte, whole
        ("a😀".encode()[:-1], b"a"),  # 4-byte cut after 3
        ("aé".encode()[:-1], b"a"),  # 2-byte cut after its lead
        ("€".encode()[:-1], "€".encode()[:-1]),  # nothing but a cut character: left as is
        (b"a\x80\x80\x80\x80", b"a\x80\x80\x80\x80"),  # not UTF-8: not trimmed
        (b"", b""),
    ],
)
def test_whole_utf8_trims_only_a_cut_last_character(data: bytes, kept: bytes) -> None:
    assert _whole_utf8(data) == kept
