"""Run every bench in its own process and forward their JSON lines to stdout.

Bars are reported, not asserted: the exit status is 0 when every bench ran (bars met or not),
1 when a bench itself broke (non-zero exit, or no result line). A short table of the bars goes
to stderr at the end. `--runs` and `--quick` are passed through.

    python bench/run_all.py [--runs N] [--quick] [--only pipeline,ws,...,forward,sender,probes]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ORDER = (
    "pipeline",
    "ws",
    "http",
    "startup",
    "idle",
    "supervise",
    "depth",
    "recovery",
    "control",
    "watch",
    "forward",
    "sender",
    "probes",
)
NEEDS = {"forward": "nats-server", "sender": "nats-server"}  # skipped (said so) without them


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated names, e.g. ws,http")
    args = parser.parse_args()
    names = [n for n in ORDER if args.only is None or n in args.only.split(",")]
    passthrough = (["--runs", str(args.runs)] if args.runs is not None else []) + (
        ["--quick"] if args.quick else []
    )
    broken: list[str] = []
    bars: list[dict[str, object]] = []
    started = time.perf_counter()
    for name in names:
        script = BENCH_DIR / f"bench_{name}.py"
        if not script.exists():
            print(f"[run_all] {script.name} not present; skipped", file=sys.stderr, flush=True)
            continue
        if name in NEEDS and shutil.which(NEEDS[name]) is None:
            why = f"[run_all] {script.name}: no {NEEDS[name]} on PATH; skipped"
            print(why, file=sys.stderr, flush=True)
            continue
        print(f"[run_all] {script.name} {' '.join(passthrough)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(script), *passthrough],
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        lines = 0
        for line in proc.stdout:
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                print(f"[run_all] {script.name}: not JSON: {text[:200]}", file=sys.stderr)
                continue
            lines += 1
            print(json.dumps(record), flush=True)
            if "met" in record:
                bars.append(record)
        status = proc.wait()
        took = time.perf_counter() - t0
        print(
            f"[run_all] {script.name}: exit {status}, {lines} results, {took:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if status != 0 or lines == 0:
            broken.append(script.name)
    print(
        f"[run_all] {len(bars)} bars, {sum(1 for b in bars if b['met'])} met, "
        f"{time.perf_counter() - started:.0f} s in all",
        file=sys.stderr,
    )
    for bar in bars:
        mark = {True: "met    ", False: "MISSED ", None: "SKIPPED"}[bar["met"]]  # type: ignore[index]
        print(
            f"  {mark} {bar['bench']}.{bar['metric']} = {bar.get('value')} "
            f"{bar.get('unit', '')} (bar {bar['bar']})",
            file=sys.stderr,
        )
    if broken:
        print(f"[run_all] broken: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
