"""The forwarder's cursor: the last seq the broker acknowledged, one small file per host."""

from __future__ import annotations

import os
from pathlib import Path


def cursor_path(state_dir: Path, host: str) -> Path:
    return state_dir / "forward" / f"nats-{host}.cursor"


def load(path: Path) -> int:
    """The saved seq; 0 when there is none (or it is unreadable: the broker's last seq then
    says where to go on, see Forwarder)."""
    try:
        return max(0, int(path.read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


def save(path: Path, seq: int) -> None:
    """Atomic: a temp file, fsync, rename; a crash leaves the old cursor or the new one. The
    temp file is named for the process: a sender still exiting may race its successor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, b"%d\n" % seq)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
