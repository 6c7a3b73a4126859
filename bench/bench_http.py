"""B3: /healthz throughput beside a bare quart-trio app, and /healthz p99 under websocket load.

(a) `wrk -t2 -c32 -d5s --latency` on GET /healthz of the real `frameos run` (a temp config:
    frame_port, state_dir, heartbeat_interval 1; stdout JSON read by the bench) and of a bare
    quart-trio app on hypercorn's trio worker answering a ~300-byte JSON /healthz, both started
    once, each warmed up for 1 s, measured alternately in every round. Bar: frameos req/s ≥ 0.9×
    the peer's (the ratio is taken per round, then the median).
(b) /healthz latency while B2's load runs: bench_ws's frameos server (Bus + log + WsHub +
    create_app + FrontDoor) publishing 200 events/s to 50 websocket clients (one client
    process); a probe opens a new connection every 20 ms and times GET /healthz to the last
    byte (the way a health checker asks). Bar: p99 ≤ 50 ms (median of the rounds' p99).

    python bench/bench_http.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
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
    emit,
    free_port,
    median,
    note,
    parse_args,
    result,
    rnd,
    write_config,
)

BENCH = "b3_http"
RATIO_BAR = 0.9
P99_BAR_MS = 50.0
PROBE_INTERVAL_S = 0.02


# --- the peer: a bare quart-trio app on hypercorn's trio worker --------------------------------


def serve_peer(port: int) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    app = QuartTrio("peer")
    started = time.time()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        now = time.time()
        return {
            "status": "ok",
            "server_time": now,
            "started_at": started,
            "uptime_seconds": round(now - started, 3),
            "version": "0.1.0",
            "apps_loaded": 0,
            "scenes_loaded": 0,
            "metrics_interval_seconds": 60.0,
            "heartbeats": 0,
            "metrics_ticks": 0,
            "event_stream": {"transport": "websocket", "connected_clients": 0},
            "workers": {"total": 0, "running": 0},
        }

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    trio.run(serve, app, config)  # type: ignore[arg-type]


# --- HTTP helpers ------------------------------------------------------------------------------


def get(port: int, path: str = "/healthz", timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a new connection (Connection: close); returns status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while True:  # to the end of the body (some servers keep the socket open a while)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if length is not None and len(body) >= int(length.group(1)):
                    break
                if b"chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, body


def dechunk(body: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def wait_http(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(port, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered /healthz on port {port} within {timeout} s")
        time.sleep(0.05)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(port: int, seconds: float) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    done = subprocess.run(
        [exe, "-t2", "-c32", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/healthz"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    figures: dict[str, Any] = {"rps": rps}
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        figures[f"p{pct}_ms"] = float(found.group(1)) * _UNITS[found.group(2)] if found else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    figures["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    return figures


# --- (a) req/s beside the peer -----------------------------------------------------------------


def throughput(runs: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="frameos-b3-") as tmp:
        port = free_port()
        config = write_config(
            Path(tmp), frame_port=port, state_dir=str(Path(tmp) / "state"), heartbeat_interval=1
        )
        frameos = FrameosRun(config)
        peer_port = free_port()
        peer = subprocess.Popen(
            [sys.executable, __file__, "--serve-peer", str(peer_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            frameos.wait_ready()
            wait_http(peer_port)
            sizes = {"frameos": len(get(port)[1]), "peer": len(get(peer_port)[1])}
            ports = {"frameos": port, "peer": peer_port}
            for name in ports:
                wrk(ports[name], 1)  # warm-up
            rounds: list[dict[str, dict[str, Any]]] = []
            for index in range(runs):
                order = ("frameos", "peer") if index % 2 == 0 else ("peer", "frameos")
                figures = {name: wrk(ports[name], seconds) for name in order}
                rounds.append(figures)
                note(
                    f"round {index + 1}: frameos {figures['frameos']['rps']:,.0f} req/s, "
                    f"peer {figures['peer']['rps']:,.0f} req/s"
                )
            alive = frameos.proc.poll() is None and peer.poll() is None
        finally:
            frameos.stop()
            peer.terminate()
            peer.wait(10)
    f_rps = [r["frameos"]["rps"] for r in rounds]
    p_rps = [r["peer"]["rps"] for r in rounds]
    common = {"wrk": f"-t2 -c32 -d{seconds:g}s", "path": "/healthz"}
    result(
        BENCH,
        "frameos_healthz_req_per_s",
        f_rps,
        unit="req/s",
        peer=rnd(median(p_rps)),
        peer_median_of=[rnd(v) for v in p_rps],
        peer_name="bare quart-trio app on hypercorn (trio worker)",
        p99_ms=rnd(median([r["frameos"]["p99_ms"] for r in rounds])),
        peer_p99_ms=rnd(median([r["peer"]["p99_ms"] for r in rounds])),
        non_2xx=sum(r["frameos"]["non_2xx"] for r in rounds),
        socket_errors=sum(r["frameos"]["socket_errors"] for r in rounds),
        body_bytes=sizes["frameos"],
        peer_body_bytes=sizes["peer"],
        server="the real `frameos run` (temp config, no VMs, heartbeat 1 s)",
        both_alive_after=alive,
        **common,
    )
    result(
        BENCH,
        "healthz_req_per_s_ratio",
        [f / p for f, p in zip(f_rps, p_rps, strict=True)],
        unit="ratio",
        bar=f">= {RATIO_BAR}",
        ok=lambda v: v >= RATIO_BAR,
        note="frameos / bare quart-trio, per round",
        **common,
    )


# --- (b) /healthz under the websocket load -----------------------------------------------------


class Probe(threading.Thread):
    """GET /healthz on a new connection every PROBE_INTERVAL_S; records latency to last byte."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[float] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        next_at = time.perf_counter()
        while not self.halt.is_set():
            start = time.perf_counter()
            try:
                status, _ = get(self.port)
                if status == 200:
                    self.samples.append((time.perf_counter() - start) * 1000)
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            next_at += PROBE_INTERVAL_S
            delay = next_at - time.perf_counter()
            if delay > 0:
                self.halt.wait(delay)
            else:
                next_at = time.perf_counter()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def under_ws_load(runs: int, seconds: float) -> None:
    import bench_ws

    server = bench_ws.start_server("frameos")
    rounds = []
    try:
        for index in range(runs):
            client = bench_ws.start_client(server.port, bench_ws.CLIENTS)
            try:
                bench_ws.wait_clients(server, bench_ws.CLIENTS)
                probe = Probe(server.port)
                probe.start()
                ws = bench_ws.rate_phase(server, client, seconds)
                probe.halt.set()
                probe.join(10)
            finally:
                client.close()
            bench_ws.wait_clients(server, 0)
            rounds.append(
                {
                    "p99_ms": p99(probe.samples),
                    "p50_ms": median(probe.samples),
                    "max_ms": max(probe.samples, default=float("nan")),
                    "n": len(probe.samples),
                    "failures": probe.failures,
                    "samples": probe.samples,
                    "ws_p99_ms": ws["p99_ms"],
                    "ws_complete": ws["complete"],
                }
            )
            note(
                f"round {index + 1}: /healthz p99 {rounds[-1]['p99_ms']:.1f} ms over "
                f"{len(probe.samples)} probes; websocket p99 {ws['p99_ms']:.2f} ms"
            )
    finally:
        server.close()
    pooled = [s for r in rounds for s in r["samples"]]
    result(
        BENCH,
        "healthz_p99_ms_under_ws_load",
        [r["p99_ms"] for r in rounds],
        unit="ms",
        bar=f"<= {P99_BAR_MS:g} ms",
        ok=lambda v: v <= P99_BAR_MS,
        p50_ms=rnd(median([r["p50_ms"] for r in rounds])),
        pooled_p99_ms=rnd(p99(pooled)),
        max_ms=rnd(max(r["max_ms"] for r in rounds)),
        probes=len(pooled),
        probe_failures=sum(r["failures"] for r in rounds),
        probe=f"new connection every {PROBE_INTERVAL_S * 1000:g} ms, GET /healthz",
        load="bench_ws frameos server, 50 websocket clients, 200 events/s",
        ws_p99_ms_meanwhile=[rnd(r["ws_p99_ms"]) for r in rounds],
        ws_every_event_delivered=all(r["ws_complete"] for r in rounds),
        seconds=seconds,
    )


def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seconds", type=float, default=None, help="wrk duration (5 s)")
        p.add_argument("--serve-peer", type=int, default=None, help=argparse.SUPPRESS)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.serve_peer is not None:
        serve_peer(args.serve_peer)
        return 0
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    if shutil.which("wrk") is None:
        emit(
            bench=BENCH,
            metric="healthz_req_per_s_ratio",
            value=None,
            runs=0,
            bar=f">= {RATIO_BAR}",
            met=None,
            skipped="wrk is not installed (apt-get install wrk)",
        )
    else:
        throughput(args.runs, seconds)
    under_ws_load(args.runs, 2.0 if args.quick else 3.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
