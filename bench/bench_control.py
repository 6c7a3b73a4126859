"""B11 control: a stop run's latency, and the receipt of a 10k-event run.

`stop`: a RunService on a real bus and event log (fsync=batch) with the real VmPool running one
VM whose process exits at once on SIGTERM (`sleep`, cooperative method none). Each round submits
a `stop` run and times submit → its `command.completed` written to the log (seen by a bus
subscription: what a client following /ws/events would get), then starts the VM again (a
`start` run, not timed). In-process: no HTTP hop.

`post` (when this checkout has the /v1 API): the real `frameos run` with the same VM; each round
POSTs a `stop` run (keep-alive HTTP, the instance token from state_dir/api-token, a new
Idempotency-Key) and times the POST → its `command.completed` line on frameos's stdout (the JSON
sink, after the log), then a `start` run (not timed). Skipped, with a note, without the API.

`receipt`: a run whose op publishes 10,000 events carrying its run_id (10,002 with its
command.accepted and command.completed), then `RunService.receipt` timed: the cursor reads of
the log from its first seq (in a worker thread), the canonical JSON and the sha256.

    python bench/bench_control.py [--runs N] [--quick] [--events N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import note, parse_args, result

BENCH = "b11_control"
STOP_BAR_MS = 50.0
ENDS = ("command.completed", "command.failed", "command.canceled")
RECEIPT_BAR_MS = 100.0


async def measure_stop(directory: Path, rounds: int) -> list[float]:
    import trio

    from frameos import events as ev
    from frameos.bus import Bus
    from frameos.config import resolve, validate_config
    from frameos.eventlog import EventLog
    from frameos.runs import Op, RunRequest, RunService
    from frameos.workers.pool import VmPool

    config = resolve(
        validate_config(
            {
                "state_dir": str(directory / "state"),
                "vms": [
                    {
                        "name": "quick",
                        "command": ["sleep", "600"],
                        "cooperative": {"method": "none"},
                        "restart": {"policy": "temporary"},
                    }
                ],
            },
            "bench",
        ),
        "bench",
        {},
    )
    log = EventLog(directory / "events.jsonl")
    log.open()
    bus = Bus(log)
    pool = VmPool(config, bus)

    async def reload(run_id: str) -> str | None:
        return None

    service = RunService(pool, bus, reload=reload)
    times: list[float] = []
    try:
        async with trio.open_nursery() as outer:
            await outer.start(bus.run)
            async with trio.open_nursery() as work:
                await work.start(pool.run)
                await work.start(service.run)
                watch = bus.subscribe("bench", 1024)
                completed: dict[str, float] = {}
                arrived = trio.Event()

                async def follow() -> None:
                    nonlocal arrived
                    async for batch in watch:
                        for envelope in batch:
                            if isinstance(envelope.event, ev.CommandCompleted | ev.CommandFailed):
                                completed[envelope.event.run_id] = time.perf_counter()
                                arrived.set()

                work.start_soon(follow)
                for _ in range(rounds):
                    begin = time.perf_counter()
                    stop, _ = service.submit(RunRequest(op=Op.STOP, target="quick"))
                    with trio.fail_after(10):
                        while stop.run_id not in completed:
                            await arrived.wait()
                            arrived = trio.Event()
                    if stop.state.value != "succeeded":
                        raise SystemExit(
                            f"stop run {stop.run_id} ended {stop.state}: {stop.reason}"
                        )
                    times.append((completed[stop.run_id] - begin) * 1000)
                    start, _ = service.submit(RunRequest(op=Op.START, target="quick"))
                    with trio.fail_after(10):
                        await service.wait(start.run_id)
                bus.unsubscribe(watch)
                work.cancel_scope.cancel()
            await bus.aclose()
    finally:
        log.close()
    return times


def measure_http(directory: Path, rounds: int) -> list[float] | None:
    """POST /v1/runs (stop) → its command.completed on the real `frameos run`'s stdout (the
    JSON sink: after the log), keep-alive HTTP with the instance token. None when this
    checkout has no /v1/runs route."""
    import http.client
    import json
    import threading
    import uuid

    from _common import REPO, FrameosRun, write_config

    state = directory / "state"
    config = write_config(
        directory,
        frame_port=0,
        state_dir=str(state),
        vms=[
            {
                "name": "quick",
                "command": ["sleep", "600"],
                "cooperative": {"method": "none"},
                "restart": {"policy": "temporary"},
            }
        ],
    )
    ended: dict[str, tuple[str, float]] = {}
    changed = threading.Condition()

    def on_line(raw: bytes) -> None:
        if b'"run_id"' not in raw:
            return
        record = json.loads(raw)
        if record["event"] in ENDS:
            with changed:
                ended[record["fields"]["run_id"]] = (record["event"], time.perf_counter())
                changed.notify_all()

    run = FrameosRun(config, on_line=on_line, cwd=REPO)
    times: list[float] = []
    try:
        run.wait_ready()
        token_file = state / "api-token"
        if not token_file.exists():
            note("no state_dir/api-token (no /v1 API in this checkout): HTTP figure skipped")
            return None
        token = token_file.read_text().strip()
        connection = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)

        def post(op: str) -> tuple[str, float]:
            begin = time.perf_counter()
            body = json.dumps({"op": op, "target": "quick"})
            headers = {
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": str(uuid.uuid4()),
                "Content-Type": "application/json",
            }
            connection.request("POST", "/v1/runs", body, headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 201:
                raise LookupError(f"POST /v1/runs answered {response.status}: {data[:200]!r}")
            return json.loads(data)["run_id"], begin

        def wait(run_id: str) -> tuple[str, float]:
            with changed:
                if not changed.wait_for(lambda: run_id in ended, timeout=10):
                    raise SystemExit(f"run {run_id} did not end within 10 s")
                return ended[run_id]

        for _ in range(rounds):
            try:
                stop, begin = post("stop")
            except LookupError as exc:
                note(f"no /v1 API in this checkout ({exc}): the HTTP figure is skipped")
                return None
            outcome, at = wait(stop)
            if outcome != "command.completed":
                raise SystemExit(f"stop run {stop} ended with {outcome}")
            times.append((at - begin) * 1000)
            start, _ = post("start")
            wait(start)
        connection.close()
    finally:
        run.stop()
    return times


async def measure_receipt(
    directory: Path, events: int, rounds: int
) -> tuple[list[float], list[float], int]:
    import trio

    from frameos import events as ev
    from frameos.bus import Bus
    from frameos.eventlog import EventLog
    from frameos.runs import Op, RunRequest, RunService

    log = EventLog(directory / "events.jsonl")
    log.open()
    bus = Bus(log)

    class Busy:
        names: ClassVar[list[str]] = ["big"]

        async def bootstrap_vm(self, name: str, *, run_id: str | None = None) -> None:
            for i in range(events):
                bus.publish_nowait(
                    ev.BootstrapStep(
                        vm=name,
                        step=f"step-{i}",
                        status="success",
                        duration_ms=i % 97,
                        attempt=1,
                        run_id=run_id,
                    )
                )
                if i % 500 == 0:
                    await trio.lowlevel.checkpoint()

    async def reload(run_id: str) -> str | None:
        return None

    service = RunService(Busy(), bus, reload=reload)  # type: ignore[arg-type]
    times: list[float] = []
    cpus: list[float] = []  # the process's CPU time: what the call costs on an idle machine
    count = 0
    try:
        async with trio.open_nursery() as outer:
            await outer.start(bus.run)
            async with trio.open_nursery() as work:
                await work.start(service.run)
                run, _ = service.submit(RunRequest(op=Op.BOOTSTRAP, target="big"))
                await service.wait(run.run_id)
                first = await service.receipt(run.run_id)  # waits until all is written
                count = first.event_count
                for _ in range(rounds):
                    begin, cpu = time.perf_counter(), time.process_time()
                    receipt = await service.receipt(run.run_id)
                    times.append((time.perf_counter() - begin) * 1000)
                    cpus.append((time.process_time() - cpu) * 1000)
                    assert receipt == first
                work.cancel_scope.cancel()
            await bus.aclose()
    finally:
        log.close()
    return times, cpus, count


def main() -> None:
    import trio

    def extra(parser: Any) -> None:
        parser.add_argument("--events", type=int, default=10_000, help="events of the run (10k)")

    args = parse_args(__doc__ or "", extra)
    rounds = 5 if args.quick else max(args.runs, 20)
    with tempfile.TemporaryDirectory() as directory:
        stops = trio.run(measure_stop, Path(directory), rounds)
    note(f"stop run → command.completed, {rounds} rounds: {[round(t, 2) for t in stops]}")
    result(
        BENCH,
        "stop_run_to_completed_ms",
        stops,
        unit="ms",
        bar=f"<= {STOP_BAR_MS:g} ms",
        ok=lambda v: v <= STOP_BAR_MS,
        path="RunService.submit (in-process, no HTTP)",
        max=round(max(stops), 2),
    )
    with tempfile.TemporaryDirectory() as directory:
        posts = measure_http(Path(directory), rounds)
    if posts is not None:
        note(f"POST /v1/runs → command.completed, {rounds} rounds: {[round(t, 2) for t in posts]}")
        result(
            BENCH,
            "post_run_to_completed_ms",
            posts,
            unit="ms",
            bar=f"<= {STOP_BAR_MS:g} ms",
            ok=lambda v: v <= STOP_BAR_MS,
            path="POST /v1/runs on the real frameos run, command.completed on its stdout",
            max=round(max(posts), 2),
        )
    with tempfile.TemporaryDirectory() as directory:
        receipts, cpus, count = trio.run(
            measure_receipt, Path(directory), args.events, max(args.runs, 11)
        )
    result(
        BENCH,
        "receipt_ms",
        receipts,
        unit="ms",
        bar=f"<= {RECEIPT_BAR_MS:g} ms",
        ok=lambda v: v <= RECEIPT_BAR_MS,
        run_events=count,
        cpu_ms=round(sorted(cpus)[len(cpus) // 2], 2),
    )


if __name__ == "__main__":
    main()
