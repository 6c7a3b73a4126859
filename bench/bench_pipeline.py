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

`--compare ROOT` runs the same rounds, alternating, against the frameos checkout at ROOT (e.g.
`git archive <before> | tar -x -C /tmp/before`): the before/after ratio comes from one run.

`--reads N` (after the rounds, or alone with `--runs 0`) builds an N-event log (300,000 by
default in the issue) by appending envelopes, then times `EventLog.read_after`: a page of 100 at
the head vs at after=1 (medians of 50 calls each), and a full replay in pages of 1,000 (total
time and the slowest page, an upper bound on how long one call holds the GIL).

    python bench/bench_pipeline.py [--runs N] [--quick] [--seconds S] [--burst B]
                                   [--compare ROOT] [--reads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, fs_type, median, note, parse_args, result, rnd

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
    # as `frameos run` does once started (supervisor.py): import-time objects out of the GC's way
    import gc

    gc.freeze()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
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
        if hasattr(sink, "close"):  # older checkouts (--compare) end their sink this way
            sink.close()
    t_printed = time.perf_counter()
    log.close()
    out.write_text(
        json.dumps(
            {
                "published": published,
                "last_seq": bus.last_seq,
                "elapsed_s": t_printed - t0,
                "publish_s": t_published - t0,
                "logged_s": t_logged - t0,
                "sink_dropped": sink.dropped,
                "bytes_logged": bus.bytes_logged,
                "frameos_file": sys.modules["frameos"].__file__,
                "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0,
            }
        )
    )


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
    return {
        "ok": not problems,
        "problems": problems[:5],
        "other_events": others,
        "files": len(files),
    }


# --- the driver -------------------------------------------------------------------------------


def one_round(seconds: float, burst: int, base: Path | None, root: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="frameos-b1-", dir=base) as tmp:
        tmp_path = Path(tmp)
        out = tmp_path / "result.json"
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert cat.stdin is not None
        try:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--frameos",
                    str(root),
                    "--log-dir",
                    str(tmp_path / "log"),
                    "--seconds",
                    str(seconds),
                    "--burst",
                    str(burst),
                    "--out",
                    str(out),
                ],
                stdout=cat.stdin,
                stderr=subprocess.PIPE,
                timeout=seconds + 60,
                check=False,
            )
        finally:
            cat.stdin.close()
            cat.wait(10)
        if child.returncode != 0:
            raise RuntimeError(
                f"pipeline child failed ({child.returncode}): "
                f"{child.stderr.decode(errors='replace')[-3000:]}"
            )
        figures = json.loads(out.read_text())
        figures["verify"] = verify(tmp_path / "log", figures["published"])
        figures["log_fs"] = fs_type(tmp_path)
        return figures


# --- cursor reads (issue 9) ------------------------------------------------------------------


def cursor_reads(events: int, base: Path | None) -> None:
    """read_after at the head vs at after=1, and a full replay in pages of 1,000."""
    from frameos.envelope import encode
    from frameos.eventlog import EventLog
    from frameos.events import Message

    with tempfile.TemporaryDirectory(prefix="frameos-reads-", dir=base) as tmp:
        log = EventLog(Path(tmp) / "events.jsonl", max_bytes=None)
        log.open()
        t0 = time.perf_counter()
        for start in range(1, events + 1, 10_000):
            log.append(
                b"".join(
                    encode(Message(text=f"r {seq:09d} {TEXT_PAD}"), seq, time.time()).line
                    for seq in range(start, min(start + 10_000, events + 1))
                )
            )
        built_s = time.perf_counter() - t0
        size = log.path.stat().st_size
        head = log.head_seq()

        def timed(after: int, limit: int) -> float:
            t = time.perf_counter()
            page = log.read_after(after, limit)
            elapsed = time.perf_counter() - t
            assert len(page.lines) == min(limit, head - after), (after, len(page.lines))
            return elapsed

        at_head = [timed(head - 100, 100) for _ in range(50)]
        at_one = [timed(1, 100) for _ in range(50)]
        head_1000 = [timed(head - 1000, 1000) for _ in range(20)]
        t0, cursor, page_s = time.perf_counter(), 0, []
        while True:
            t = time.perf_counter()
            page = log.read_after(cursor, 1000)
            page_s.append(time.perf_counter() - t)
            if not page.lines:
                break
            cursor = page.next_cursor
        replay_s = time.perf_counter() - t0
        pages, slowest = len(page_s) - 1, max(page_s)
        p99 = sorted(page_s)[int(len(page_s) * 0.99)]
        assert cursor == head, (cursor, head)
        log.close()
    head_ms, one_ms = median(at_head) * 1e3, median(at_one) * 1e3
    note(
        f"{events:,} events ({size / 1e6:.0f} MB, built in {built_s:.1f} s): page of 100 at the "
        f"head {head_ms:.3f} ms, at after=1 {one_ms:.3f} ms (ratio {head_ms / one_ms:.2f}); "
        f"page of 1000 at the head {median(head_1000) * 1e3:.2f} ms; full replay "
        f"{replay_s:.2f} s in {pages} pages, page p99 {p99 * 1e3:.2f} ms, "
        f"slowest {slowest * 1e3:.2f} ms"
    )
    emit(
        bench="eventlog_reads",
        metric="head_vs_after1_ratio",
        value=rnd(head_ms / one_ms),
        head_ms=rnd(head_ms),
        after1_ms=rnd(one_ms),
        page=100,
        events=events,
        bar="<= 3",
        met=head_ms <= 3 * one_ms,
    )
    emit(
        bench="eventlog_reads",
        metric="full_replay_s",
        value=rnd(replay_s),
        pages=pages,
        page=1000,
        slowest_page_ms=rnd(slowest * 1e3),
        p99_page_ms=rnd(p99 * 1e3),
        head_page_1000_ms=rnd(median(head_1000) * 1e3),
        events=events,
        bar="<= 30 s",
        met=replay_s <= 30,
    )


def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seconds", type=float, default=None)
        p.add_argument(
            "--burst",
            type=int,
            default=100,
            help="events published between two yields to the scheduler",
        )
        p.add_argument("--dir", type=Path, default=None, help="where the log goes (a disk)")
        p.add_argument(
            "--compare",
            type=Path,
            default=None,
            help="another frameos checkout to alternate rounds with (before/after)",
        )
        p.add_argument(
            "--reads",
            type=int,
            default=0,
            help="then time cursor reads on a log of this many events (300000)",
        )
        p.add_argument("--reads-only", action="store_true", help="skip the pipeline rounds")
        p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--frameos", type=Path, default=REPO, help=argparse.SUPPRESS)
        p.add_argument("--log-dir", type=Path, help=argparse.SUPPRESS)
        p.add_argument("--out", type=Path, help=argparse.SUPPRESS)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.child:
        import trio

        sys.path.insert(0, str(args.frameos))
        trio.run(child_main, args.log_dir, args.seconds, args.burst, args.out)
        return 0
    sys.path.insert(0, str(REPO))
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    if not args.reads_only:
        roots = {"": REPO} if args.compare is None else {"": REPO, "_compare": args.compare}
        rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in roots}
        for index in range(args.runs):
            for label, root in roots.items():  # alternating: the same machine state for both
                figures = one_round(seconds, args.burst, args.dir, root)
                figures["rate"] = figures["published"] / figures["elapsed_s"]
                rounds[label].append(figures)
                assert str(figures["frameos_file"]).startswith(str(root)), figures
                note(
                    f"round {index + 1}{label}: {figures['rate']:,.0f} events/s, "
                    f"{figures['cpu_s'] / figures['published'] * 1e6:.2f} µs CPU/event, "
                    f"{figures['published']:,} events, verify "
                    f"{'ok' if figures['verify']['ok'] else figures['verify']['problems']}"
                )
        for label, root in roots.items():
            report(BENCH + label, rounds[label], seconds, args.burst, root)
        if args.compare is not None:
            this = median([r["rate"] for r in rounds[""]])
            other = median([r["rate"] for r in rounds["_compare"]])
            emit(
                bench=BENCH,
                metric="events_per_s_vs_compare",
                value=rnd(this / other),
                this=rnd(this),
                compare=rnd(other),
                compare_root=str(args.compare),
                bar="no regression",
                met=this >= 0.95 * other,
            )
            # CPU per event: steadier than events/s on a shared machine
            this_cpu = median([r["cpu_s"] / r["published"] * 1e6 for r in rounds[""]])
            other_cpu = median([r["cpu_s"] / r["published"] * 1e6 for r in rounds["_compare"]])
            emit(
                bench=BENCH,
                metric="cpu_us_per_event_vs_compare",
                value=rnd(this_cpu / other_cpu),
                this_us=rnd(this_cpu),
                compare_us=rnd(other_cpu),
                bar="no regression",
                met=this_cpu <= 1.05 * other_cpu,
            )
    if args.reads:
        cursor_reads(args.reads, args.dir)
    return 0


def report(
    bench: str, rounds: list[dict[str, Any]], seconds: float, burst: int, root: Path
) -> None:
    rates = [r["rate"] for r in rounds]
    lossless = all(r["verify"]["ok"] for r in rounds)
    result(
        bench,
        "events_per_s",
        rates,
        unit="events/s",
        bar=f">= {BAR} with zero loss",
        ok=lambda v: v >= BAR and lossless,
        zero_loss=lossless,
        seconds=seconds,
        burst=burst,
        events=[r["published"] for r in rounds],
        publish_only_events_per_s=rnd(
            sorted(r["published"] / r["publish_s"] for r in rounds)[len(rounds) // 2]
        ),
        sink_dropped=sum(r["sink_dropped"] for r in rounds),
        other_events_in_log=sum(r["verify"]["other_events"] for r in rounds),
        log_bytes_per_event=rnd(rounds[0]["bytes_logged"] / max(1, rounds[0]["published"])),
        log_fs=rounds[0]["log_fs"],
        stdout="pipe to a child `cat > /dev/null`",
        fsync="batch",
        frameos=str(root),
    )
    emit(
        bench=bench,
        metric="zero_loss",
        value=lossless,
        runs=len(rounds),
        problems=[p for r in rounds for p in r["verify"]["problems"]][:5],
        bar="every published seq in the log exactly once, in order",
        met=lossless,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
