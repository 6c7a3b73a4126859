"""B10: crash recovery at scale (issue 10): a start after SIGKILL with 300 orphans ÷ a clean start.

A config of `--vms` (300) VMs, each `sleep 600` (exits on SIGTERM; ladder: no cooperative rung,
sigterm 2 s, sigkill 1 s), frame_port 0, a fresh state_dir and event log per round. Each round:

    clean_s      exec of `frameos run` → its runtime:ready line on stdout (every VM launched)
    SIGKILL      of that frameos: its 300 children live on as orphans (found by an environment
                 tag every process of that instance inherits, wherever it was reparented)
    recover_s    exec of a second `frameos run` on the same config and state → runtime:ready
    survivors    processes of the killed instance still alive at that ready line, and how long
                 after it the last one was gone (bounded by 15 s; /proc)

Bar: recover_s ÷ clean_s ≤ 2.5 (the ratio per round, then the median) and no survivor.

    python bench/bench_recovery.py [--runs 3] [--quick] [--vms 300]
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    TAG_VAR,
    FrameosRun,
    emit,
    kill_tagged,
    median,
    note,
    parse_args,
    result,
    rnd,
    tagged,
    write_config,
)

BENCH = "b10_recovery"
RATIO_BAR = 2.5
GONE_BOUND_S = 15.0


def start(config: Path, tag: str) -> FrameosRun:
    env = dict(os.environ)
    env[TAG_VAR] = tag
    return FrameosRun(config, env=env)


def one_round(vms: int, timeout: float) -> dict[str, Any]:
    tag_a, tag_b = f"b10-{uuid.uuid4().hex}", f"b10-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="frameos-b10-") as tmp:
        base = Path(tmp)
        config = write_config(
            base,
            frame_port=0,
            state_dir=str(base / "state"),
            heartbeat_interval=1,
            event_log={"path": str(base / "log" / "events.jsonl")},
            vms=[
                {
                    "name": f"vm{i:03d}",
                    "command": ["sleep", "600"],
                    "cooperative": {"method": "none"},
                    "timeouts": {"cooperative_ms": 0, "sigterm_ms": 2000, "sigkill_ms": 1000},
                    "restart": {"policy": "temporary"},
                }
                for i in range(vms)
            ],
        )
        first = start(config, tag_a)
        second: FrameosRun | None = None
        try:
            first.wait_ready(timeout)
            clean_s = first.ready_s
            os.kill(first.pid, signal.SIGKILL)
            first.proc.wait(10)
            orphans = tagged(tag_a)
            note(f"clean start {clean_s:.2f} s; SIGKILL left {len(orphans)} processes")
            second = start(config, tag_b)
            second.wait_ready(timeout)
            recover_s = second.ready_s
            survivors_at_ready = len(tagged(tag_a))
            t0 = time.monotonic()
            left = survivors_at_ready
            while left and time.monotonic() - t0 < GONE_BOUND_S:
                time.sleep(0.05)
                left = len(tagged(tag_a))
            gone_after_s = time.monotonic() - t0 if survivors_at_ready else 0.0
            status = second.stop(60)
            after_stop = len(tagged(tag_b))
            note(
                f"recovery start {recover_s:.2f} s; old processes alive at ready "
                f"{survivors_at_ready}, {left} after {GONE_BOUND_S:g} s; exit {status}"
            )
            return {
                "clean_s": clean_s,
                "recover_s": recover_s,
                "orphans": len(orphans),
                "survivors_at_ready": survivors_at_ready,
                "survivors_after": left,
                "gone_after_s": gone_after_s,
                "second_exit": status,
                "left_after_stop": after_stop,
            }
        finally:
            for run in (first, second):
                if run is not None and run.proc.poll() is None:
                    run.proc.kill()
                    run.proc.wait()
            kill_tagged(tag_a)
            kill_tagged(tag_b)


def main() -> int:
    def extra(parser: Any) -> None:
        parser.add_argument("--vms", type=int, default=300)
        parser.add_argument("--timeout", type=float, default=120.0)

    args = parse_args(__doc__.splitlines()[0], extra)
    if not args.quick and "--runs" not in sys.argv:
        args.runs = 3
    rounds = [one_round(args.vms, args.timeout) for _ in range(args.runs)]
    ratios = [r["recover_s"] / r["clean_s"] for r in rounds]
    survivors = max(r["survivors_after"] for r in rounds)
    result(BENCH, "clean_start_s", [r["clean_s"] for r in rounds], unit="s", vms=args.vms)
    result(
        BENCH,
        "recover_start_s",
        [r["recover_s"] for r in rounds],
        unit="s",
        vms=args.vms,
        orphans=[r["orphans"] for r in rounds],
    )
    result(
        BENCH,
        "recover_ratio",
        ratios,
        unit="x",
        bar=f"<= {RATIO_BAR} and no survivor",
        ok=lambda v: v <= RATIO_BAR and survivors == 0,
        vms=args.vms,
        survivors_at_ready=[r["survivors_at_ready"] for r in rounds],
        survivors_after=[r["survivors_after"] for r in rounds],
        gone_after_s=[rnd(r["gone_after_s"]) for r in rounds],
        left_after_stop=[r["left_after_stop"] for r in rounds],
    )
    emit(
        bench=BENCH,
        metric="rounds",
        value=len(rounds),
        detail=[{k: rnd(v) if isinstance(v, float) else v for k, v in r.items()} for r in rounds],
        median_ratio=rnd(median(ratios)),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
