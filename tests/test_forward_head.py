"""The head frameos tells its sender: written to a pipe without ever waiting (no broker, no
sender process: the pipe's write end as the forwarder holds it)."""

from __future__ import annotations

import os
from pathlib import Path

from frameos.bus import Bus
from frameos.config.models import ForwardConfig
from frameos.eventlog import EventLog
from frameos.forward import Forwarder


def forwarder(tmp_path: Path) -> Forwarder:
    log = EventLog(tmp_path / "events.jsonl")
    bus = Bus(log, last_seq=log.open().last_seq)
    config = ForwardConfig.model_validate({"nats": {"url": "nats://127.0.0.1:1"}, "host": "h1"})
    return Forwarder(bus, config, tmp_path)


def test_a_full_pipe_never_blocks_and_the_head_is_told_again_later(tmp_path: Path) -> None:
    fw = forwarder(tmp_path)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    try:
        fw._stdin = write_end
        fw.head = 7
        fw._tell()
        assert os.read(read_end, 100) == b"7\n"
        fw._tell()  # the same head: nothing written
        assert fw._told == 7
        while True:  # a sender that reads nothing: its pipe fills up
            try:
                os.write(write_end, b"x" * 4096)
            except BlockingIOError:
                break
        fw.head = 8
        fw._tell()  # returns at once; the full pipe holds a wake-up already
        assert fw._told == 7  # not told: told again at the next batch
        while True:
            try:
                os.read(read_end, 1 << 16)
            except BlockingIOError:
                break
        fw.head = 9
        fw._tell()
        assert os.read(read_end, 100) == b"9\n" and fw._told == 9
        os.close(read_end)
        read_end = -1
        fw.head = 10
        fw._tell()  # a sender that is gone (EPIPE): its restart reads the log from its cursor
        assert fw._told == 9
    finally:
        fw._end_stdin()
        if read_end >= 0:
            os.close(read_end)
        fw.bus.log.close()


def test_the_sender_is_this_frameos_whatever_its_cwd_holds(tmp_path: Path) -> None:
    """A `frameos` package in the cwd (a checkout, say) is not what the sender imports: it
    runs the code of the frameos that started it (was: `python -m` put the cwd first)."""
    import subprocess

    from frameos.forward.forwarder import sender_argv, sender_env

    decoy = tmp_path / "frameos" / "forward"
    decoy.mkdir(parents=True)
    (tmp_path / "frameos" / "__init__.py").write_text("")
    (decoy / "__init__.py").write_text("")
    (decoy / "sender.py").write_text("print('decoy'); raise SystemExit(3)\n")
    done = subprocess.run(
        sender_argv(), cwd=tmp_path, env=sender_env(), capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "usage: python -m frameos.forward.sender SPEC" in done.stderr
