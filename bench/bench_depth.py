"""B9: reads of the event log at any depth, through the real `frameos run` (issue 9).

A log of `--events` (300,000) `message` envelopes (~180 bytes a line, one file, no rotation) is
written straight into an EventLog with frameos.envelope.encode, then the real `frameos run`
starts on it (a temp config: `event_log.path` there, frame_port 0, heartbeat_interval 0.2, no
VMs); its stdout (JSON lines) is read by the bench. HEAD is the newest seq of the prebuilt log.

    poll_ratio        GET /v1/events?after=HEAD-100 ÷ ?after=1 (limit 100; medians of
                      `--samples` alternating requests, new connection each). Bar ≤ 3.
    ws_first_ratio    connect → first frame of /ws/events?since=HEAD-100 ÷ ?since=1. Bar ≤ 3.
    replay_s          a full replay: /ws/events?since=0 until seq HEAD arrived (checked: every
                      seq, in order, no gap). Bar ≤ 30 s; capped at `--replay-cap` (60 s), then
                      reported with "complete": false and the count received.
    loop_lag_ms       4 threads of a child process poll /v1/events?after=HEAD-100-k (k in
                      0..999) in a loop, new connection each, for `--load-s` s; the
                      runtime:heartbeat events' loop_lag_ms over that window: max and p99.
                      Bar ≤ 50 ms.
    healthz_p99_ms    meanwhile a probe times GET /healthz (new connection) every 20 ms. Bar ≤ 50.

(4) runs `--runs` windows (3; 1 with --quick); its figures are the medians over the windows.
Each request has a timeout (`--timeout`, 10 s); a timed-out request counts as that long.

    python bench/bench_depth.py [--events 300000] [--quick]
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FrameosRun,
    WsReader,
    emit,
    http_get,
    median,
    note,
    parse_args,
    percentile,
    result,
    rnd,
    seq_of,
    write_config,
)

BENCH = "b9_depth"
RATIO_BAR = 3.0
REPLAY_BAR_S = 30.0
LAG_BAR_MS = 50.0
POLLERS = 4
PROBE_INTERVAL_S = 0.02
TEXT = "depth bench filler: " + "x" * 96


def build_log(path: Path, events: int) -> int:
    """Write `events` message envelopes (seq 1..events) into an EventLog at `path`."""
    sys.path.insert(0, os.getcwd())
    from frameos.envelope import encode
    from frameos.eventlog import EventLog
    from frameos.events import Message

    log = EventLog(path, max_bytes=None, keep=1)
    log.open()
    now = time.time() - events / 1000
    chunk: list[bytes] = []
    for seq in range(1, events + 1):
        chunk.append(encode(Message(text=f"{TEXT} {seq}"), seq, now + seq / 1000).line)
        if len(chunk) == 10_000:
            log.append(b"".join(chunk))
            chunk.clear()
    if chunk:
        log.append(b"".join(chunk))
    log.close()
    return events


def timed_get(port: int, path: str, timeout: float) -> float:
    t0 = time.perf_counter()
    try:
        status, _ = http_get(port, path, timeout=timeout)
        if status != 200:
            note(f"GET {path}: status {status}")
    except OSError as exc:
        note(f"GET {path}: {type(exc).__name__} {exc}")
        return timeout
    return time.perf_counter() - t0


def first_frame_s(port: int, since: int, timeout: float) -> float:
    t0 = time.perf_counter()
    try:
        ws = WsReader(port, f"/ws/events?since={since}", timeout=timeout)
    except OSError as exc:
        note(f"ws since={since}: {exc}")
        return timeout
    try:
        for _ in ws.frames(time.monotonic() + timeout):
            return time.perf_counter() - t0
    finally:
        ws.close()
    return timeout


def full_replay(port: int, head: int, cap_s: float) -> dict[str, Any]:
    """Replay from since=0 until seq `head`; verify order and gaps."""
    t0 = time.perf_counter()
    ws = WsReader(port, "/ws/events?since=0", timeout=cap_s)
    count, last, gaps, disorder = 0, 0, 0, 0
    try:
        for payload in ws.frames(time.monotonic() + cap_s):
            seq = seq_of(payload)
            if seq <= last:
                disorder += 1
            elif seq != last + 1:
                gaps += 1
            last = max(last, seq)
            count += 1
            if last >= head:
                break
    finally:
        ws.close()
    took = time.perf_counter() - t0
    if last >= head:
        ended = "complete"
    elif ws.closed is not None:
        ended = f"close frame {ws.closed}"
    else:
        ended = "deadline" if took >= cap_s else "connection dropped (EOF)"
    return {
        "seconds": took,
        "received": count,
        "last_seq": last,
        "gaps": gaps,
        "disorder": disorder,
        "complete": last >= head,
        "ended": ended,
    }


class Loop(threading.Thread):
    """Call `step` until `stop` is set; keep the durations."""

    def __init__(self, step: Any, stop: threading.Event, interval: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.step, self.stop, self.interval = step, stop, interval
        self.samples: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.step())
            if self.interval:
                self.stop.wait(self.interval)


def load_window(
    port: int, deep: int, args: Any, heartbeats: list[tuple[float, float]]
) -> dict[str, float]:
    """One window of (4): the pollers' child process runs `load_s`; the probe runs meanwhile."""
    stop = threading.Event()
    probe = Loop(lambda: timed_get(port, "/healthz", args.timeout), stop, PROBE_INTERVAL_S)
    pollers = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--poll",
            str(port),
            str(deep),
            str(args.load_s),
            str(args.timeout),
            str(args.poll_interval),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    window_start = time.monotonic()
    probe.start()
    out, _ = pollers.communicate(timeout=args.load_s + args.timeout + 30)
    if pollers.returncode != 0:
        raise RuntimeError(f"the pollers' process failed (exit {pollers.returncode})")
    window_end = time.monotonic()
    stop.set()
    probe.join(args.timeout + 1)
    polls = json.loads(out or "[]")
    lags = [lag for at, lag in heartbeats if window_start < at <= window_end + 0.2]
    probes = [s * 1000 for s in probe.samples]
    return {
        "lag_max": max(lags) if lags else float("nan"),
        "lag_p99": percentile(lags, 0.99),
        "lag_p50": percentile(lags, 0.5),
        "heartbeats": len(lags),
        "polls": len(polls),
        "poll_p50": percentile(polls, 0.5) * 1000,
        "probe_p99": percentile(probes, 0.99),
        "probe_p50": percentile(probes, 0.5),
        "probe_max": max(probes, default=float("nan")),
        "probes": len(probes),
    }


def poll_deep(port: int, deep: int, seconds: float, timeout: float, interval: float) -> None:
    """The child process of (4): POLLERS threads poll deep until `seconds` passed; prints the
    durations (s) as one JSON list."""
    stop = threading.Event()
    rng = random.Random(9)
    pollers = [
        Loop(
            lambda: timed_get(
                port, f"/v1/events?after={deep - rng.randrange(1000)}&limit=100", timeout
            ),
            stop,
            interval,
        )
        for _ in range(POLLERS)
    ]
    for thread in pollers:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in pollers:
        thread.join(timeout + 1)
    print(json.dumps([s for p in pollers for s in p.samples]), flush=True)


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "--poll":
        port, deep, seconds, timeout, interval = sys.argv[2:]
        poll_deep(int(port), int(deep), float(seconds), float(timeout), float(interval))
        return 0

    def extra(parser: Any) -> None:
        parser.add_argument("--events", type=int, default=300_000)
        parser.add_argument("--samples", type=int, default=9)
        parser.add_argument("--load-s", type=float, default=8.0)
        parser.add_argument("--replay-cap", type=float, default=60.0)
        parser.add_argument("--timeout", type=float, default=10.0)
        parser.add_argument("--skip-replay", action="store_true")
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=0.0,
            help="pause of each deep poller between polls (0: a tight loop, the default)",
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    if "--runs" not in sys.argv[1:]:
        args.runs = 1 if args.quick else 3  # windows of the load phase (4)
    if args.quick:
        args.samples, args.load_s = 5, 4.0
    heartbeats: list[tuple[float, float]] = []  # (bench monotonic time, loop_lag_ms)

    def on_line(raw: bytes) -> None:
        if b'"event":"runtime:heartbeat"' in raw:
            heartbeats.append((time.monotonic(), float(json.loads(raw)["fields"]["loop_lag_ms"])))

    with tempfile.TemporaryDirectory(prefix="frameos-b9-") as tmp:
        base = Path(tmp)
        log_path = base / "log" / "events.jsonl"
        t0 = time.perf_counter()
        head = build_log(log_path, args.events)
        size = log_path.stat().st_size
        note(
            f"log: {head} events, {size / 2**20:.1f} MiB, built in {time.perf_counter() - t0:.1f} s"
        )
        config = write_config(
            base,
            frame_port=0,
            state_dir=str(base / "state"),
            heartbeat_interval=0.2,
            metrics_interval=60,
            event_log={"path": str(log_path), "max_bytes": 1 << 34, "keep": 1},
        )
        run = FrameosRun(config, on_line=on_line)
        try:
            run.wait_ready(60)
            port = run.port
            deep, shallow = max(1, head - 100), 1
            # (1) /v1/events at the head vs at the start, alternating
            heads_s, starts_s = [], []
            for _ in range(args.samples):
                heads_s.append(timed_get(port, f"/v1/events?after={deep}&limit=100", args.timeout))
                starts_s.append(
                    timed_get(port, f"/v1/events?after={shallow}&limit=100", args.timeout)
                )
            poll_ratio = median(heads_s) / median(starts_s)
            result(
                BENCH,
                "poll_ratio",
                [poll_ratio],
                unit="x",
                bar=f"<= {RATIO_BAR}",
                ok=lambda v: v <= RATIO_BAR,
                events=head,
                head_ms=rnd(median(heads_s) * 1000),
                start_ms=rnd(median(starts_s) * 1000),
            )
            # (2) first websocket frame at the head vs at the start
            wsh, wss = [], []
            for _ in range(args.samples):
                wsh.append(first_frame_s(port, deep, args.timeout))
                wss.append(first_frame_s(port, shallow, args.timeout))
            ws_ratio = median(wsh) / median(wss)
            result(
                BENCH,
                "ws_first_ratio",
                [ws_ratio],
                unit="x",
                bar=f"<= {RATIO_BAR}",
                ok=lambda v: v <= RATIO_BAR,
                head_ms=rnd(median(wsh) * 1000),
                start_ms=rnd(median(wss) * 1000),
            )
            # (3) a full replay
            if not args.skip_replay:
                replay = full_replay(port, head, args.replay_cap)
                complete = replay["complete"] and not replay["gaps"] and not replay["disorder"]
                result(
                    BENCH,
                    "replay_s",
                    [replay["seconds"]],
                    unit="s",
                    bar=f"<= {REPLAY_BAR_S:g}",
                    ok=lambda v: complete and v <= REPLAY_BAR_S,
                    **{k: v for k, v in replay.items() if k != "seconds"},
                    cap_s=args.replay_cap,
                )
            # (4) 4 deep pollers (threads of a child process, so the probe here does not wait
            # on their GIL), heartbeat loop lag and /healthz latency meanwhile; `--runs` windows
            windows = [load_window(port, deep, args, heartbeats) for _ in range(args.runs)]
            result(
                BENCH,
                "loop_lag_max_ms",
                [w["lag_max"] for w in windows],
                unit="ms",
                bar=f"<= {LAG_BAR_MS:g}",
                ok=lambda v: v <= LAG_BAR_MS,
                p99_ms=[rnd(w["lag_p99"]) for w in windows],
                p50_ms=[rnd(w["lag_p50"]) for w in windows],
                heartbeats=[w["heartbeats"] for w in windows],
                pollers=POLLERS,
                poll_interval_s=args.poll_interval,
                load_s=args.load_s,
                polls=[w["polls"] for w in windows],
                poll_p50_ms=[rnd(w["poll_p50"]) for w in windows],
            )
            result(
                BENCH,
                "healthz_p99_ms",
                [w["probe_p99"] for w in windows],
                unit="ms",
                bar=f"<= {LAG_BAR_MS:g}",
                ok=lambda v: v <= LAG_BAR_MS,
                p50_ms=[rnd(w["probe_p50"]) for w in windows],
                max_ms=[rnd(w["probe_max"]) for w in windows],
                probes=[w["probes"] for w in windows],
            )
        finally:
            status = run.stop(20)
            if status != 0:
                emit(bench=BENCH, metric="exit_status", value=status, note="frameos run exit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
