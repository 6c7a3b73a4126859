"""A QMP socket file left by an earlier instance is removed before QEMU binds it
(frameos/workers/orphans.py); anything else at that path is left alone."""

from __future__ import annotations

import socket
from pathlib import Path

from frameos.workers.orphans import remove_stale_socket


def test_only_a_socket_file_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / "vm.qmp"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # closed without unlinking, as a killed QEMU leaves it
    remove_stale_socket(stale)
    assert not stale.exists()
    remove_stale_socket(stale)  # already gone: nothing to do
    plain = tmp_path / "not-a-socket"
    plain.write_text("data")
    remove_stale_socket(plain)
    assert plain.read_text() == "data"
    remove_stale_socket(tmp_path)  # a directory: left alone
    assert tmp_path.is_dir()
