"""B14: probe overhead: 100 VMs each probed every second, against the same 100 VMs unprobed.

The real `frameos run` with `--vms` (100) children (`sleep 600`), each with a readiness probe of
one kind, `period_ms` 1000 (so ~100 attempts a second), against a threaded HTTP server in this
process (http: GET /, tcp: a connect to the same port; exec: `true`). Modes run one after the
other within a round, rounds interleave them (`--runs`, 3). After every VM said `vm.ready` and a
2 s settle, a `--window` (10 s; --quick: 5 s) is measured: frameos's CPU (utime+stime from
/proc/PID/stat, and the live threads' schedstat) scaled to 10 s, and the event loop's lag from
`runtime:heartbeat` (`loop_lag_ms`, heartbeat every 0.2 s: ~50 samples a window). Probe
processes (exec) are frameos's children: their CPU is not frameos's and is reported apart from
the children's own figures (cutime+cstime).

    python bench/bench_probes.py [--runs N] [--quick] [--window S] [--vms N]
                                 [--kinds none,tcp,http,exec]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CLK_TCK,
    FrameosRun,
    free_port,
    median,
    note,
    parse_args,
    proc_cpu_s,
    proc_runtime_s,
    result,
    rnd,
    write_config,
)

BENCH = "b14_probes"
SETTLE_S = 2.0
LAG_BAR_MS = 5.0  # the loop's lag with 100 probes a second stays in the same few ms as without


class Quiet(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def children_cpu_s(pid: int) -> float:
    """cutime+cstime: the CPU of frameos's reaped children (exec probes, gate shells)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def probe_for(kind: str, port: int) -> dict[str, Any] | None:
    timing = {"period_ms": 1000, "timeout_ms": 1000}
    if kind == "http":
        return {"http": {"url": f"http://127.0.0.1:{port}/"}, **timing}
    if kind == "tcp":
        return {"tcp": {"port": port}, **timing}
    if kind == "exec":
        return {"exec": {"command": ["true"]}, **timing}
    return None


def one(home: Path, kind: str, vms: int, port: int, window: float) -> dict[str, float]:
    probe = probe_for(kind, port)
    config = write_config(
        home,
        frame_port=free_port(),
        state_dir=str(home / "state"),
        heartbeat_interval=0.2,
        metrics_interval=60,
        shutdown_timeout_s=60,
        vms=[
            {
                "name": f"vm{i}",
                "command": ["sleep", "600"],
                "cooperative": {"method": "signal", "signal": "SIGTERM"},
                **({"health": {"readiness": probe}} if probe else {}),
            }
            for i in range(vms)
        ],
    )
    lags: list[float] = []
    ready = threading.Semaphore(0)
    measuring = threading.Event()

    def on_line(raw: bytes) -> None:
        if b'"event":"vm.ready"' in raw:
            ready.release()
        elif measuring.is_set() and b'"event":"runtime:heartbeat"' in raw:
            lags.append(float(json.loads(raw)["fields"]["loop_lag_ms"]))

    run = FrameosRun(config, on_line=on_line)
    try:
        run.wait_ready(60)
        deadline = time.monotonic() + 60
        for _ in range(vms):
            if not ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{kind}: not every VM said vm.ready within 60 s")
        time.sleep(SETTLE_S)
        cpu0, sched0, kids0 = proc_cpu_s(run.pid), proc_runtime_s(run.pid), children_cpu_s(run.pid)
        measuring.set()
        t0 = time.perf_counter()
        time.sleep(window)
        measuring.clear()
        elapsed = time.perf_counter() - t0
        cpu, sched = proc_cpu_s(run.pid) - cpu0, proc_runtime_s(run.pid) - sched0
        kids = children_cpu_s(run.pid) - kids0
    finally:
        status = run.stop(60)
    scale = 10.0 / elapsed
    lags.sort()
    return {
        "cpu": cpu * scale,
        "sched": sched * scale,
        "children": kids * scale,
        "lag_median": median(lags),
        "lag_max": lags[-1] if lags else float("nan"),
        "lag_p90": lags[int(len(lags) * 0.9)] if lags else float("nan"),
        "samples": len(lags),
        "status": status,
    }


def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--window", type=float, default=None, help="seconds measured (10)")
        p.add_argument("--vms", type=int, default=100, help="VMs, each probed every second")
        p.add_argument("--kinds", default="none,tcp,http,exec", help="modes, comma-separated")

    args = parse_args(__doc__.splitlines()[0], extra)
    if not args.quick and args.runs == 5:
        args.runs = 3
    window = args.window or (5.0 if args.quick else 10.0)
    kinds = args.kinds.split(",")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    figures: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    try:
        with tempfile.TemporaryDirectory(prefix="frameos-b14-") as tmp:
            for round_ in range(args.runs):
                for kind in kinds:
                    home = Path(tmp) / f"{kind}{round_}"
                    home.mkdir()
                    figures[kind].append(one(home, kind, args.vms, port, window))
                    f = figures[kind][-1]
                    note(
                        f"round {round_ + 1} {kind}: cpu {rnd(f['cpu'])} s/10 s, lag median "
                        f"{rnd(f['lag_median'])} ms, p90 {rnd(f['lag_p90'])}, max "
                        f"{rnd(f['lag_max'])}, children {rnd(f['children'])} s"
                    )
    finally:
        server.shutdown()
    base = median([f["cpu"] for f in figures.get("none", [])]) if "none" in figures else None
    for kind, runs in figures.items():
        cpu = [f["cpu"] for f in runs]
        extra_fields: dict[str, Any] = {}
        if base is not None and kind != "none":
            extra_fields["cpu_over_none_s_per_10s"] = rnd(median(cpu) - base)
        result(
            BENCH,
            f"{kind}_cpu_s_per_10s",
            cpu,
            unit="s",
            vms=args.vms,
            window_s=window,
            schedstat=[rnd(f["sched"]) for f in runs],
            children_cpu_s_per_10s=[rnd(f["children"]) for f in runs],
            **extra_fields,
        )
        result(
            BENCH,
            f"{kind}_loop_lag_ms",
            [f["lag_median"] for f in runs],
            unit="ms",
            bar=f"median <= {LAG_BAR_MS:g} ms",
            ok=lambda v: v <= LAG_BAR_MS,
            p90=[rnd(f["lag_p90"]) for f in runs],
            max=[rnd(f["lag_max"]) for f in runs],
            samples=[int(f["samples"]) for f in runs],
            clean_exit=all(f["status"] == 0 for f in runs),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
