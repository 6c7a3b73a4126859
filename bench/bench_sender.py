"""B13, the sender alone: the forwarder's NATS process catching up a logged backlog.

Each round writes `--events` (100,000) `message` events into a fresh event log, starts its own
`nats-server -js` (free loopback port, temporary store) and the real sender process
(`python -P -m frameos.forward.sender`, as the forwarder starts it), tells it the head, and
reads its reports until the broker acknowledged the last seq. Figures: throughput (its `up`
report → the last ack), and the CPU per event of the sender and of nats-server over the same
span (utime + stime from /proc, 10 ms ticks). With `--code DIR` the frameos of another
checkout is measured (its sender too): before/after in one run. The broker's subject is
checked afterwards (seq 1..N, once each, in order).

    python bench/bench_sender.py [--runs N] [--quick] [--events N] [--code DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, note, parse_args, result, rnd
from bench_forward import HOST, PAD, check_broker, cpu_of, start_nats

BENCH = "b13_sender"


def fill(log_path: Path, events: int) -> None:
    import trio

    from frameos.bus import Bus
    from frameos.eventlog import EventLog
    from frameos.events import Message

    async def publish() -> None:
        log = EventLog(log_path)
        bus = Bus(log, last_seq=log.open().last_seq, fsync="batch")
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            for i in range(events):
                await bus.publish(Message(text=f"b13 {i:09d} {PAD}"))
                if i % 100 == 99:
                    await trio.lowlevel.checkpoint()
            await bus.aclose()
        log.close()

    trio.run(publish)


def one_round(tmp: Path, events: int, code: Path) -> dict[str, Any]:
    from frameos.config.models import ForwardConfig

    log_path = tmp / "events.jsonl"
    fill(log_path, events)
    broker, url = start_nats(tmp / "nats")
    try:
        nats = ForwardConfig.model_validate({"nats": {"url": url}, "host": HOST}).nats
        spec = {
            "nats": nats.model_dump(mode="json"),
            "host": HOST,
            "parent": os.getpid(),
            "drain_s": 60,
            "log": str(log_path),
            "keep": 5,
            "cursor": str(tmp / "cursor"),
        }
        sender = subprocess.Popen(
            # as frameos starts it (forwarder.sender_argv; built here for older trees too)
            [sys.executable, "-P", "-m", "frameos.forward.sender", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(code)},
            cwd=tmp,
        )
        assert sender.stdin is not None
        assert sender.stdout is not None
        sender.stdin.write(f"{events}\n".encode())
        sender.stdin.flush()
        out: dict[str, Any] = {}
        start = cpu0 = (0.0, 0.0, 0.0)
        for line in sender.stdout:
            report = json.loads(line)
            if "up" in report:
                start = cpu0 = (time.perf_counter(), cpu_of(sender.pid), cpu_of(broker.pid))
            elif "message" in report or "down" in report:
                note(f"sender: {report}")
            if report.get("acked") == events:
                wall = time.perf_counter() - start[0]
                out["events_s"] = events / wall
                out["sender_cpu_us"] = (cpu_of(sender.pid) - cpu0[1]) / events * 1e6
                out["broker_cpu_us"] = (cpu_of(broker.pid) - cpu0[2]) / events * 1e6
                break
        sender.stdin.close()
        sender.wait(30)
        out["broker_ok"] = check_broker(url, events)
        return out
    finally:
        broker.terminate()
        broker.wait(10)


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--events", type=int, default=100_000)
        parser.add_argument("--code", type=Path, default=REPO, help="the frameos tree to measure")

    args = parse_args(__doc__.splitlines()[0], extra)
    code = args.code.resolve()
    sys.path.insert(0, str(code))
    if shutil.which("nats-server") is None:
        raise SystemExit("nats-server is missing")
    if args.quick:
        args.events = min(args.events, 20_000)
    rounds = []
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="frameos-b13s-") as name:
            figures = one_round(Path(name), args.events, code)
        note(f"round {index + 1}: " + ", ".join(f"{k}={rnd(v)}" for k, v in figures.items()))
        rounds.append(figures)
    result(
        BENCH,
        "sender_catchup_throughput",
        [r["events_s"] for r in rounds],
        unit="events/s",
        code=str(code),
        sender_cpu_us_per_event=[rnd(r["sender_cpu_us"]) for r in rounds],
        broker_cpu_us_per_event=[rnd(r["broker_cpu_us"]) for r in rounds],
    )
    emit(
        bench=BENCH,
        metric="broker_exactly_once_in_order",
        value=all(r["broker_ok"] for r in rounds),
    )


if __name__ == "__main__":
    main()
