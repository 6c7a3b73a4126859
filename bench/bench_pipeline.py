"""B1: publish → durable log (fsync=batch) → stdout JSON sink, sustained, with zero loss.

Each round runs in its own process (so stdout is a real fd): frameos's `Bus` (fsync=batch, the
config's default rotation size) with its `JsonSink` on stdout, where stdout is a pipe read by a
child `cat > /dev/null`. One publisher task publishes `Message` events (~150-byte envelopes) for
`--seconds` (10; --quick 3), yielding to the scheduler after every `--burst` events (100), then
closes the bus and the sink. The figure is events / (first publish → the sink wrote the last
event), i.e. everything logged and printed, not just handed to `publish`.

Afterwards the parent reads the log files (oldest first) and checks that seq runs 1..N with no
gap or duplicate and that every published event (the text carries its index) is there exactly
once, in order. A sink drop would be reported (the bar is about the log, which never drops).

    python bench/bench_pipeline.py [--runs N] [--quick] [--seconds S] [--burst B]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, fs_type, note, parse_args, result, rnd

BENCH = "b1_pipeline"
TEXT_PAD = "x" * 40  # makes the envelope ~150 bytes
BAR = 50_000


# --- the measured process ---------------------------------------------------------------------


async def child_main(log_dir: Path, seconds: float, burst: int, out: Path) -> None:
    import trio

    from frameos.bus import Bus
    from frameos.config import validate_config
    from frameos.eventlog import EventLog
    from frameos.events import Message
    from frameos.sinks import JsonSink

    config = validate_config({}, "bench")
    log = EventLog(log_dir / "events.jsonl", max_bytes=config.event_log.max_bytes, keep=1000)
    recovery = log.open()
    bus = Bus(log, last_seq=recovery.last_seq, fsync="batch")
    sink = JsonSink(bus, sys.stdout.buffer)
    checkpoint = trio.lowlevel.checkpoint
    published = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await nursery.start(sink.run)
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            for _ in range(burst):
                await bus.publish(Message(text=f"b1 {published:09d} {TEXT_PAD}"))
                published += 1
            await checkpoint()
        t_published = time.perf_counter()
        await bus.aclose()
        t_logged = time.perf_counter()
        sink.close()
    t_printed = time.perf_counter()
    log.close()
    out.write_text(json.dumps({
        "published": published, "last_seq": bus.last_seq, "elapsed_s": t_printed - t0,
        "publish_s": t_published - t0, "logged_s": t_logged - t0,
        "sink_dropped": sink.dropped, "bytes_logged": bus.bytes_logged,
    }))


# --- verification -----------------------------------------------------------------------------


def verify(log_dir: Path, published: int) -> dict[str, Any]:
    """Read every log file oldest first: seq 1..N, no gap, no duplicate, each event once."""
    import orjson

    files = sorted(log_dir.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    files.append(log_dir / "events.jsonl")
    expected_seq, expected_index, others, problems = 1, 0, 0, []
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
                    problems.append(f"unparsable line in {path.name}")
                    continue
                if data["seq"] != expected_seq:
                    problems.append(f"seq {data['seq']} where {expected_seq} was expected")
                    expected_seq = data["seq"]
                expected_seq += 1
                text = data["fields"].get("text", "") if data["event"] == "message" else ""
                if not text.startswith("b1 "):
                    others += 1
                    continue
                index = int(text[3:12])
                if index != expected_index:
                    problems.append(f"event {index} where {expected_index} was expected")
                expected_index = index + 1
                if len(problems) > 20:
                    break
    found = expected_index
    if found != published:
        problems.append(f"{published} published, the log ends at event {found}")
    return {"ok": not problems, "problems": problems[:5], "other_events": others,
            "files": len(files)}


# --- the driver -------------------------------------------------------------------------------


def one_round(seconds: float, burst: int, base: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="frameos-b1-", dir=base) as tmp:
        tmp_path = Path(tmp)
        out = tmp_path / "result.json"
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert cat.stdin is not None
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--child", "--log-dir", str(tmp_path / "log"),
                 "--seconds", str(seconds), "--burst", str(burst), "--out", str(out)],
                stdout=cat.stdin, stderr=subprocess.PIPE, timeout=seconds + 60, check=False)
        finally:
            cat.stdin.close()
            cat.wait(10)
        if child.returncode != 0:
            raise RuntimeError(f"pipeline child failed ({child.returncode}): "
                               f"{child.stderr.decode(errors='replace')[-3000:]}")
        figures = json.loads(out.read_text())
        figures["verify"] = verify(tmp_path / "log", figures["published"])
        figures["log_fs"] = fs_type(tmp_path)
        return figures


def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seconds", type=float, default=None)
        p.add_argument("--burst", type=int, default=100,
                       help="events published between two yields to the scheduler")
        p.add_argument("--dir", type=Path, default=None, help="where the log goes (a disk)")
        p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--log-dir", type=Path, help=argparse.SUPPRESS)
        p.add_argument("--out", type=Path, help=argparse.SUPPRESS)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.child:
        import trio

        trio.run(child_main, args.log_dir, args.seconds, args.burst, args.out)
        return 0
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rates, rounds = [], []
    for index in range(args.runs):
        figures = one_round(seconds, args.burst, args.dir)
        rate = figures["published"] / figures["elapsed_s"]
        rates.append(rate)
        rounds.append(figures)
        note(f"round {index + 1}: {rate:,.0f} events/s, {figures['published']:,} events, "
             f"verify {'ok' if figures['verify']['ok'] else figures['verify']['problems']}")
    lossless = all(r["verify"]["ok"] for r in rounds)
    result(BENCH, "events_per_s", rates, unit="events/s", bar=f">= {BAR} with zero loss",
           ok=lambda v: v >= BAR and lossless,
           zero_loss=lossless, seconds=seconds, burst=args.burst,
           events=[r["published"] for r in rounds],
           publish_only_events_per_s=rnd(
               sorted(r["published"] / r["publish_s"] for r in rounds)[len(rounds) // 2]),
           sink_dropped=sum(r["sink_dropped"] for r in rounds),
           other_events_in_log=sum(r["verify"]["other_events"] for r in rounds),
           log_bytes_per_event=rnd(rounds[0]["bytes_logged"] / max(1, rounds[0]["published"])),
           log_fs=rounds[0]["log_fs"], stdout="pipe to a child `cat > /dev/null`",
           fsync="batch")
    emit(bench=BENCH, metric="zero_loss", value=lossless, runs=len(rounds),
         problems=[p for r in rounds for p in r["verify"]["problems"]][:5],
         bar="every published seq in the log exactly once, in order", met=lossless)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
