"""B13: forwarding to NATS JetStream — throughput, and the log→broker lag at 1,000 events/s.

Each round starts its own `nats-server -js` (free loopback port, temporary store) and runs
frameos's `Bus` + `Forwarder` in this process (no stdout sink), three phases:

- catch-up: `--events` (100,000; --quick 20,000) events are logged flat out with no forwarder
  (that rate is the baseline of the next phase), then a forwarder starts from cursor 0; the
  figure is events / (connected → the broker acknowledged the last), i.e. the forwarder's own
  throughput, reading the log and waiting for acks; `start_s` is the time to connected.
- flat out: the B1 publisher (bursts of 100, `--seconds`) with the forwarder attached; the
  figure is the publish rate (the log's, what B1 measures) and how far the forwarder was behind
  at the end. The forwarder must not limit the pipeline: publishing never waits on it.
  `alone_cpu_us` / `flat_cpu_us`: this process's CPU per published event (every thread) without
  and with the forwarder catching up; `sender_cpu_us`: the sender process's CPU per forwarded
  event over the round (0 where the forwarder has no process of its own).
- sustained: 50,000 events/s (500 every 10 ms) for `--seconds`, the forwarder attached; the
  figure is the events published ÷ the time from the first publish until the broker acknowledged
  the last (B13's "50,000 events/s through publish → log → broker"), beside the publish rate
  reached and how far behind the forwarder ever was (`behind_max`, events).
- paced: 1,000 events/s (10 every 10 ms) for `--seconds`; a task polls the forwarder's acked
  seq every millisecond; lag = when an event's ack was seen − when it was published (p50, p99).

Afterwards the broker's subject is checked: seq 1..N, each once, in order.

    python bench/bench_forward.py [--runs N] [--quick] [--seconds S] [--events N] [--code DIR]
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, free_port, note, parse_args, percentile, result, rnd

BENCH = "b13_forward"
PAD = "x" * 40  # ~150-byte envelopes, as B1
HOST = "bench"


def start_nats(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("nats-server did not start") from None
            time.sleep(0.02)


def cpu_of(pid: int) -> float:
    """utime + stime of a process, in seconds (10 ms ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / 100


def sender_pid() -> int:
    """The sender process this process started (found in /proc by its command line)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        try:
            if b"frameos.forward.sender" not in (entry / "cmdline").read_bytes():
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[1] == me:
                return int(entry.name)
        except OSError:
            continue
    return 0


async def one_round(
    tmp: Path, url: str, events: int, seconds: float, broker: int
) -> dict[str, Any]:
    import trio

    from frameos.bus import Bus
    from frameos.config.models import ForwardConfig
    from frameos.eventlog import EventLog
    from frameos.events import Message
    from frameos.forward import Forwarder

    config = ForwardConfig.model_validate({"nats": {"url": url}, "host": HOST})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = before.ru_utime + before.ru_stime
    log = EventLog(tmp / "events.jsonl")  # the defaults: 64 MiB files, 5 kept (no rotation here)
    bus = Bus(log, last_seq=log.open().last_seq, fsync="batch")
    out: dict[str, Any] = {}

    # catch-up: log first, then forward
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(events):
            await bus.publish(Message(text=f"b13 {i:09d} {PAD}"))
            if i % 100 == 99:
                await trio.lowlevel.checkpoint()
        out["alone_publish_events_s"] = events / (time.perf_counter() - t0)
        out["alone_cpu_us"] = (time.process_time() - c0) / events * 1e6
        await bus.aclose()
    head = bus.last_seq
    bus = Bus(log, last_seq=head, fsync="batch")
    forwarder = Forwarder(bus, config, tmp)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        t0 = time.perf_counter()
        await nursery.start(forwarder.run)
        while not forwarder.connected:
            await trio.sleep(0.001)
        t1 = time.perf_counter()
        out["start_s"] = t1 - t0  # to connected (the sender process starting, where there is one)
        while forwarder.acked < head:
            await trio.sleep(0.001)
        out["catchup_events_s"] = head / (time.perf_counter() - t1)

        # flat out, forwarder attached
        t0, c0 = time.perf_counter(), time.process_time()
        first = bus.last_seq
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                await bus.publish(Message(text=f"b13 flat {PAD}"))
            await trio.lowlevel.checkpoint()
        out["flat_publish_events_s"] = (bus.last_seq - first) / (time.perf_counter() - t0)
        out["flat_cpu_us"] = (time.process_time() - c0) / (bus.last_seq - first) * 1e6
        out["flat_behind_at_end"] = bus.last_seq - forwarder.acked
        t1 = time.perf_counter()
        while forwarder.acked < bus.last_seq:
            await trio.sleep(0.001)
        out["flat_drain_s"] = time.perf_counter() - t1

        # sustained: 50,000 events/s (500 every 10 ms) for `seconds`, the forwarder attached;
        # what the broker took over the same window, and how far behind it ever was
        start, first = time.perf_counter(), bus.last_seq
        sender = sender_pid()
        cpu0 = (time.process_time(), cpu_of(sender), cpu_of(broker))
        behind_max = 0
        ticks = int(seconds * 100)
        for tick in range(ticks):
            await trio.sleep(max(0.0, start + tick / 100 - time.perf_counter()))
            for _ in range(5):
                for _ in range(100):
                    await bus.publish(Message(text=f"b13 sustained {PAD}"))
                await trio.lowlevel.checkpoint()
            behind_max = max(behind_max, bus.last_seq - forwarder.acked)
        elapsed = time.perf_counter() - start
        out["sustained_publish_events_s"] = (bus.last_seq - first) / elapsed
        out["sustained_behind_max"] = behind_max
        out["sustained_behind_at_end"] = bus.last_seq - forwarder.acked
        t1 = time.perf_counter()
        while forwarder.acked < bus.last_seq:
            await trio.sleep(0.001)
        out["sustained_drain_s"] = time.perf_counter() - t1
        # from the first publish until the broker acknowledged the last
        out["sustained_through_events_s"] = (bus.last_seq - first) / (time.perf_counter() - start)
        # CPU per event of each process over the phase (its drain included): what the pipeline
        # needs of the machine at 50,000 events/s is their sum × 50,000
        cpu1 = (time.process_time(), cpu_of(sender), cpu_of(broker))
        n = bus.last_seq - first
        for key, before, after in zip(("frameos", "sender", "broker"), cpu0, cpu1, strict=True):
            out[f"sustained_{key}_cpu_us"] = (after - before) / n * 1e6

        # paced: 1,000 events/s, lag = ack seen − published
        published: dict[int, float] = {}
        lags: list[float] = []
        done = trio.Event()

        async def watch() -> None:
            seen = forwarder.acked
            while not (done.is_set() and seen >= bus.last_seq):
                acked = forwarder.acked
                now = time.perf_counter()
                for seq in range(seen + 1, acked + 1):
                    if seq in published:
                        lags.append(now - published[seq])
                seen = max(seen, acked)
                await trio.sleep(0.001)

        nursery.start_soon(watch)
        start = time.perf_counter()
        ticks = int(seconds * 100)
        for tick in range(ticks):
            await trio.sleep(max(0.0, start + tick / 100 - time.perf_counter()))
            for _ in range(10):
                envelope = await bus.publish(Message(text=f"b13 paced {PAD}"))
                published[envelope.seq] = time.perf_counter()
        done.set()
        with trio.fail_after(30):
            while len(lags) < len(published):
                await trio.sleep(0.01)
        out["lag_p50_ms"] = percentile(lags, 0.5) * 1000
        out["lag_p99_ms"] = percentile(lags, 0.99) * 1000
        out["lag_max_ms"] = max(lags) * 1000
        await bus.aclose()
    log.close()
    out["total"] = bus.last_seq
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sender, reaped by now
    out["sender_cpu_us"] = (children.ru_utime + children.ru_stime - cpu_before) / out["total"] * 1e6
    return out


def check_broker(url: str, total: int) -> bool:
    from frameos.forward.follow import held

    async def read() -> bool:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream(timeout=10)
        subject = f"frameos.{HOST}.events"
        count = await held(js, subject)
        last = await js.get_last_msg("FRAMEOS", subject)
        await nc.close()
        return count == total and (last.headers or {}).get("Nats-Msg-Id") == f"{HOST}:{total}"

    return asyncio.run(read())


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--events", type=int, default=100_000)
        parser.add_argument(
            "--code",
            type=Path,
            default=REPO,
            help="the frameos tree to measure (a checkout of another commit: "
            "before/after in one run)",
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    sys.path.insert(0, str(args.code.resolve()))
    if shutil.which("nats-server") is None:
        raise SystemExit("nats-server is missing")
    if args.quick:
        args.seconds, args.events = min(args.seconds, 3.0), min(args.events, 20_000)
    import trio

    rounds = []
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="frameos-b13-") as name:
            tmp = Path(name)
            proc, url = start_nats(tmp / "nats")
            try:
                figures = trio.run(one_round, tmp, url, args.events, args.seconds, proc.pid)
                figures["broker_ok"] = check_broker(url, figures["total"])
            finally:
                proc.terminate()
                proc.wait(10)
        note(f"round {index + 1}: " + ", ".join(f"{k}={rnd(v)}" for k, v in figures.items()))
        rounds.append(figures)
    ok = all(r["broker_ok"] for r in rounds)
    result(
        BENCH,
        "catchup_throughput",
        [r["catchup_events_s"] for r in rounds],
        unit="events/s",
        broker_exactly_once=ok,
        start_s=[rnd(r["start_s"]) for r in rounds],
    )
    result(
        BENCH,
        "flat_out_publish_with_forwarder",
        [r["flat_publish_events_s"] for r in rounds],
        unit="events/s",
        bar=">= 50000",
        ok=lambda v: v >= 50_000,
        without_forwarder=[rnd(r["alone_publish_events_s"]) for r in rounds],
        cpu_us_per_event_alone=[rnd(r["alone_cpu_us"]) for r in rounds],
        cpu_us_per_event_with_forwarder=[rnd(r["flat_cpu_us"]) for r in rounds],
        sender_cpu_us_per_event=[rnd(r["sender_cpu_us"]) for r in rounds],
        behind_at_end=[r["flat_behind_at_end"] for r in rounds],
        drain_s=[rnd(r["flat_drain_s"]) for r in rounds],
    )
    result(
        BENCH,
        "sustained_50k_through_broker",
        [r["sustained_through_events_s"] for r in rounds],
        unit="events/s",
        bar=">= 50000 (B13: publish -> log -> broker)",
        ok=lambda v: v >= 50_000,
        published_events_s=[rnd(r["sustained_publish_events_s"]) for r in rounds],
        behind_max=[r["sustained_behind_max"] for r in rounds],
        behind_at_end=[r["sustained_behind_at_end"] for r in rounds],
        drain_s=[rnd(r["sustained_drain_s"]) for r in rounds],
        cpu_us_per_event={
            key: [rnd(r[f"sustained_{key}_cpu_us"]) for r in rounds]
            for key in ("frameos", "sender", "broker")
        },
        cores_at_50k=[
            rnd(sum(r[f"sustained_{k}_cpu_us"] for k in ("frameos", "sender", "broker")) * 0.05)
            for r in rounds
        ],
    )
    result(
        BENCH,
        "lag_p99_at_1000_per_s",
        [r["lag_p99_ms"] for r in rounds],
        unit="ms",
        p50_ms=[rnd(r["lag_p50_ms"]) for r in rounds],
        max_ms=[rnd(r["lag_max_ms"]) for r in rounds],
    )
    emit(bench=BENCH, metric="broker_exactly_once_in_order", value=ok)


if __name__ == "__main__":
    main()
