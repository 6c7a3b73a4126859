"""B12 terminal view: `frameos watch`'s CPU under 1,000 events/s, and how soon the head seq is on
its screen after a 10,000-event burst.

The real `frameos run` (two sleeping VMs) and the real `frameos watch` on a pseudo-terminal of
120×40 (stdlib pty; a thread reads the screen bytes as a terminal would and notes each `seq N` of
the header). The instance is the real HTTP surface (front door, hypercorn, the /ws/events fast
path) on a real bus and event log with a stand-in pool of two VMs, in this process
(tests/api_helpers.py `serving_api`): `message` events are published on its bus, so they go the
whole way (log, websocket, view) without an HTTP producer's cost in the way.

  (a) `--seconds` (5) at `--rate` (1000) events/s, paced in 10 ms batches: the view's CPU
      (utime+stime of its process, from /proc/PID/task/*/schedstat) / wall time, as % of a core;
      the rate actually reached is reported beside it.
  (b) `--events` (10,000) events published flat out (the loop yields every 500): the time from
      the last one published to the header showing its seq.

With `--compare DIR` (a checkout of another version, e.g. `git worktree add /tmp/before
main`), every round also runs that version's view against the same instance, alternating which
goes first, and a note gives both medians and their ratio: on a shared machine only figures
measured side by side compare.

    python bench/bench_watch.py [--runs N] [--quick] [--seconds S] [--rate N] [--events N]
                                [--compare DIR]
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import frameos_argv, median, note, parse_args, proc_runtime_s, result

BENCH = "b12_watch"
CPU_BAR_PCT = 15.0
HEAD_BAR_S = 2.0
SEQ = re.compile(rb"seq (\d+)")


def _argv() -> list[str]:
    """frameos, or (with $BENCH_WATCH_PROFILE=FILE) frameos under cProfile writing FILE."""
    profile = os.environ.get("BENCH_WATCH_PROFILE")
    if profile:
        return [sys.executable, "-m", "cProfile", "-o", profile, "-m", "frameos"]
    return frameos_argv()


class Screen:
    """`frameos watch` on a pty; a thread drains the screen and keeps the newest seq shown."""

    def __init__(self, url: str, token_file: Path, root: Path | None = None) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}
        env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [*_argv(), "watch", url, "--token-file", str(token_file)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=root,  # `python -m frameos` runs the frameos of its cwd
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.seq = 0
        self.drops = 0  # draws that said `disconnected` (a slow consumer dropped by the hub)
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        tail = b""
        while True:
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            if b"disconnected" in data:
                self.drops += 1
            found = SEQ.findall(tail + data)
            tail = data[-16:]
            if found:
                with self.changed:
                    self.seq = max(self.seq, *(int(n) for n in found))
                    self.changed.notify_all()

    def wait_seq(self, seq: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.seq >= seq, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.write(self.master, b"q")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)
        self.thread.join(2)


async def steady(bus: Any, screen: Screen, seconds: float, rate: int) -> tuple[float, float]:
    """(the view's CPU in % of a core, events/s reached) over `seconds` at `rate`, published in
    10 ms batches."""
    import trio

    from frameos import events as ev

    batch = max(1, rate // 100)
    sent, t0 = 0, trio.current_time()
    cpu0, wall0 = proc_runtime_s(screen.proc.pid), time.perf_counter()
    while trio.current_time() - t0 < seconds:
        for _ in range(batch):
            bus.publish_nowait(ev.Message(text=f"bench event {sent}"), "info")
            sent += 1
        await trio.sleep_until(t0 + sent / rate)
    elapsed = time.perf_counter() - wall0
    cpu = proc_runtime_s(screen.proc.pid) - cpu0
    return 100 * cpu / elapsed, sent / elapsed


async def burst(bus: Any, screen: Screen, events: int) -> float:
    """Seconds from the burst's last event in the log to its seq on the screen."""
    import trio

    from frameos import events as ev

    head = 0
    for index in range(events):
        head = bus.publish_nowait(ev.Message(text=f"burst event {index}"), "progress").seq
        if index % 500 == 499:
            await trio.lowlevel.checkpoint()  # let the bus write the log and the hub send
    done = time.perf_counter()
    ok = await trio.to_thread.run_sync(screen.wait_seq, head, 30.0)
    return time.perf_counter() - done if ok else float("nan")


async def measure(served: Any, screen: Screen, args: Any) -> tuple[float, float, float]:
    """(CPU %, events/s reached, head-on-screen s) of one view."""
    import trio

    from frameos import events as ev

    seq = served.bus.publish_nowait(ev.Message(text="bench starts"), "info").seq
    if not await trio.to_thread.run_sync(screen.wait_seq, seq, 20.0):
        raise RuntimeError("frameos watch never drew its header")
    pct, reached = await steady(served.bus, screen, args.seconds, args.rate)
    seconds = await burst(served.bus, screen, args.events)
    return pct, reached, seconds


async def rounds(args: Any, directory: Path) -> dict[str, tuple[list[float], ...]]:
    """{label: (cpu, rates, heads)} for this tree ("this") and the `--compare` one ("other")."""
    import trio

    from tests.api_helpers import ADMIN, serving_api

    token_file = directory / "token"
    token_file.write_text(ADMIN)
    views: list[tuple[str, Path | None]] = [("this", None)]
    if args.compare:
        views.append(("other", Path(args.compare).resolve()))
    figures: dict[str, tuple[list[float], ...]] = {label: ([], [], []) for label, _ in views}
    async with serving_api(directory) as served:
        for round_ in range(args.runs):
            for label, root in views if round_ % 2 == 0 else views[::-1]:
                screen = Screen(served.url, token_file, root)
                try:
                    pct, reached, seconds = await measure(served, screen, args)
                finally:
                    await trio.to_thread.run_sync(screen.close)
                note(
                    f"round {round_ + 1}{f' ({label})' if args.compare else ''}: cpu "
                    f"{pct:.1f} % at {reached:.0f} ev/s; head on screen {seconds * 1000:.0f} ms "
                    f"after the burst; {screen.drops} draws said disconnected"
                )
                for values, value in zip(figures[label], (pct, reached, seconds), strict=True):
                    values.append(value)
    return figures


def main() -> int:
    import trio

    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument("--seconds", type=float, default=5.0),
            p.add_argument("--rate", type=int, default=1000),
            p.add_argument("--events", type=int, default=10_000),
            p.add_argument("--compare", metavar="DIR", help="another checkout's view, alongside"),
        ),
    )
    if args.quick:
        args.seconds = 2.0
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        figures = trio.run(rounds, args, Path(tmp))
    cpu, rates, heads = figures["this"]
    if args.compare:
        other_cpu, _, other_heads = figures["other"]
        note(
            f"cpu: this {median(cpu):.1f} %, {args.compare} {median(other_cpu):.1f} % "
            f"(ratio {median(cpu) / median(other_cpu):.2f}); head: this {median(heads):.2f} s, "
            f"{args.compare} {median(other_heads):.2f} s"
        )
    result(
        BENCH,
        "view_cpu_pct_of_a_core",
        cpu,
        unit="%",
        bar=f"<= {CPU_BAR_PCT:g} %",
        ok=lambda v: v <= CPU_BAR_PCT,
        events_per_s=[round(r) for r in rates],
    )
    result(
        BENCH,
        "head_seq_on_screen_after_burst_s",
        heads,
        unit="s",
        bar=f"<= {HEAD_BAR_S:g} s",
        ok=lambda v: v <= HEAD_BAR_S,
        events=args.events,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
