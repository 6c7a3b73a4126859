"""The keyboard: the tty in cbreak mode (no echo, no line buffering; Ctrl-C still a signal), keys
read from a `trio.lowlevel.FdStream` on a duplicate of stdin, the terminal restored on every
way out (`with raw_keys() as keys:`)."""

from __future__ import annotations

import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import trio

ESCAPES = {
    b"\x1b[A": "up",
    b"\x1bOA": "up",
    b"\x1b[B": "down",
    b"\x1bOB": "down",
    b"\x1b[C": "right",
    b"\x1b[D": "left",
}
NAMED = {b"\r": "enter", b"\n": "enter", b"\x7f": "backspace", b"\x08": "backspace"}


def parse(data: bytes) -> list[str]:
    """The keys in one read: arrows and named keys by name, a lone ESC as "esc", the rest as
    the characters typed."""
    keys: list[str] = []
    index = 0
    while index < len(data):
        if data[index : index + 1] == b"\x1b":
            seq = data[index : index + 3]
            if seq in ESCAPES:
                keys.append(ESCAPES[seq])
                index += 3
                continue
            if data[index + 1 : index + 2] in (b"[", b"O"):  # an escape this view does not use
                end = index + 2
                while end < len(data) and not (0x40 <= data[end] <= 0x7E):
                    end += 1
                index = end + 1
                continue
            keys.append("esc")
            index += 1
            continue
        byte = data[index : index + 1]
        if byte in NAMED:
            keys.append(NAMED[byte])
            index += 1
            continue
        # a UTF-8 character: its lead byte says how long it is
        lead = data[index]
        length = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        keys.append(data[index : index + length].decode("utf-8", "replace"))
        index += length
    return keys


@contextmanager
def raw_keys(fd: int | None = None) -> Iterator[AsyncIterator[str]]:
    """cbreak mode on the tty `fd` (stdin) for the block; yields the async iterator of keys."""
    fd = sys.stdin.fileno() if fd is None else fd
    saved = termios.tcgetattr(fd)
    dup = os.dup(fd)
    blocking = os.get_blocking(fd)
    stream = trio.lowlevel.FdStream(dup)  # owns `dup` (and sets it, so the tty, non-blocking)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield _keys(stream)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        os.set_blocking(fd, blocking)  # the shell after us reads this tty blocking


async def _keys(stream: trio.lowlevel.FdStream) -> AsyncIterator[str]:
    async with stream:
        while True:
            data = await stream.receive_some(256)
            if not data:
                return
            for key in parse(data):
                yield key
