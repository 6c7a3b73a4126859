"""B2 + R3: websocket fan-out to 50 clients, frameos beside the `websockets` library, same run.

Processes (as in shared/notes/ws-fanout.md: the 50 clients live in ONE separate process):

- server `frameos`: frameos's Bus (durable log, fsync=batch) + WsHub + create_app + FrontDoor on
  127.0.0.1:0 with the config defaults (queue_depth 64), assembled in-process as
  tests/test_server.py does (no stdout sink, no tickers); it publishes `Message` events whose
  envelopes are ~150 bytes.
- server `websockets`: the `websockets` library's asyncio server; each event is serialized once
  (orjson, the same envelope shape and size) and sent with `broadcast()`; no log.
- server `frameos-deep` (diagnostic, flat out only): `frameos` with websocket.queue_depth=100000.
- client: stdlib only. Plain sockets, one epoll loop, a minimal frame parser that reads each
  frame's seq (every reader must see seq+1 after seq) and, in the latency phase, the envelope
  timestamp (publish time, `time.time()`); it answers pings. Flat out it sleeps 2 ms between
  polls so one recv takes several frames (the client stays cheaper than the servers). A "stuck"
  client handshakes, sets SO_RCVBUF to 4 KiB and never reads again.

Each server is started once (and restarted if it dies, which is counted); every round connects a
fresh client process to each server in turn (the order alternates between rounds) and runs:
  (a) 200 events/s for `--seconds` (5): p50/p99 publish-to-receive latency over all deliveries,
      and server CPU (getrusage utime+stime of the server process, from the first publish until
      everything is written to the sockets) per delivery;
  (b) flat out: `--events` events (4000) published as fast as the server's loop goes (yielding
      after each one): deliveries/s = deliveries / (first publish → the last client got the
      last event); valid only when every client got every event, in order.

R3 (frameos only), after those rounds: `--r3-pairs` (12) pairs of bursts on the frameos server,
one with 50 readers, one with 49 readers + 1 stuck client, back to back, the order alternating
between pairs. The 49 must get every event and the stuck one alone must be dropped
(WsHub.dropped_slow). The figure is the median over pairs of the signed throughput move
(stuck ÷ readers-only − 1), with its quartiles: each pair's two bursts share the machine's load
of that moment, so the median of their ratios measures what the stuck client costs, where the
median of |move| over a few rounds measures this machine's noise (with no effect at all, ±25 %
per round gives a median |move| near 0.15). Beside it, two figures that load moves much less:
server CPU per delivery (getrusage) and write syscalls per delivery (/proc/self/io), each as
the median of the pairs' ratios.

    python bench/bench_ws.py [--runs N] [--quick] [--seconds S] [--events N] [--r3-pairs P]
    python bench/bench_ws.py --r3-only [--r3-pairs P]      # only the R3 pairs
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, note, parse_args, result, rnd, self_cpu_s, thread_split_s

BENCH = "b2_ws"
CLIENTS = 50
RATE = 200
TEXT = "b2 event " + "x" * 44  # the envelope comes to ~150 bytes
CPU_RATIO_BAR = 1.5
THROUGHPUT_BAR = 70_000
LATENCY_P99_BAR_MS = 10.0
R3_MOVE_BAR = 0.10
R3_PAIRS = 12
READ_GATHER_S = 0.002


def reply(**record: Any) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


# --- server: frameos ---------------------------------------------------------------------------


async def serve_frameos(queue_depth: int | None = None, fsync: str | None = None) -> None:
    import gc
    import tempfile

    import trio

    from frameos.bus import Bus
    from frameos.config import validate_config
    from frameos.eventlog import EventLog
    from frameos.events import Message
    from frameos.server.app import create_app
    from frameos.server.frontdoor import FrontDoor
    from frameos.server.metrics import Metrics
    from frameos.server.wsfast import WsHub
    from frameos.state import Phase, RuntimeState

    tmp = Path(tempfile.mkdtemp(prefix="frameos-b2-"))
    raw: dict[str, Any] = {"frame_port": 0, "state_dir": str(tmp)}
    if queue_depth is not None:
        raw["websocket"] = {"queue_depth": queue_depth}
    if fsync is not None:
        raw["event_log"] = {"fsync": fsync}
    config = validate_config(raw, "bench")
    log = EventLog(
        tmp / "events.jsonl", max_bytes=config.event_log.max_bytes, keep=config.event_log.keep
    )
    bus = Bus(log, last_seq=log.open().last_seq, fsync=config.event_log.fsync)
    state = RuntimeState(config=config, config_source="bench")
    hub = WsHub(bus, config.websocket)
    door = FrontDoor(create_app(state, bus, hub, Metrics(state, bus, hub)), hub)
    stop = trio.Event()

    async def flushed(last: int) -> None:
        while bus.written_seq < last or any(c.backlog for c in hub.clients):
            await trio.sleep(0.0005)

    async def rate(per_s: float, seconds: float) -> dict[str, Any]:
        count = int(per_s * seconds)
        split0 = thread_split_s(os.getpid())
        cpu0, wall0, start = self_cpu_s(), time.time(), trio.current_time()
        first = last = 0
        for index in range(count):
            await trio.sleep_until(start + index / per_s)
            last = (await bus.publish(Message(text=TEXT))).seq
            first = first or last
        await flushed(last)
        cpu = self_cpu_s() - cpu0
        split1 = thread_split_s(os.getpid())
        return {
            "first": first,
            "last": last,
            "published": count,
            "cpu_s": cpu,
            "cpu_main_s": split1[0] - split0[0],
            "cpu_threads_s": split1[1] - split0[1],
            "t0": wall0,
            "clients": len(hub.clients),
        }

    async def burst(count: int) -> dict[str, Any]:
        checkpoint = trio.lowlevel.checkpoint
        ru0, wall0, writes0 = resource.getrusage(resource.RUSAGE_SELF), time.time(), syscw()
        first = last = 0
        for _ in range(count):
            last = (await bus.publish(Message(text=TEXT))).seq
            first = first or last
            await checkpoint()
        t_pub = time.time()
        await flushed(last)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "first": first,
            "last": last,
            "published": count,
            "cpu_s": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
            "utime_s": ru1.ru_utime - ru0.ru_utime,
            "stime_s": ru1.ru_stime - ru0.ru_stime,
            "write_syscalls": syscw() - writes0,
            "t0": wall0,
            "publish_s": t_pub - wall0,
            "flushed_s": time.time() - t_pub,
            "clients": len(hub.clients),
        }

    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        _host, port = await start_front_door(nursery, door, stop)
        state.set_phase(Phase.READY)
        gc.freeze()  # as `frameos run` does once started (supervisor.py)
        reply(port=port, pid=os.getpid())
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            cmd = json.loads(line) if line.strip() else {"cmd": "quit"}
            if cmd["cmd"] == "rate":
                reply(**await rate(cmd["rate"], cmd["seconds"]))
            elif cmd["cmd"] == "burst":
                reply(**await burst(cmd["count"]))
            elif cmd["cmd"] == "stats":
                reply(
                    clients=len(hub.clients),
                    dropped_slow=hub.dropped_slow,
                    frames_sent=hub.frames_sent,
                    pid=os.getpid(),
                )
            else:
                break
        stop.set()
        await bus.aclose()
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)


def syscw() -> int:
    """This process's write syscalls so far (/proc/self/io; -1 where there is none)."""
    try:
        with open("/proc/self/io", "rb") as handle:
            for line in handle:
                if line.startswith(b"syscw:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


async def start_front_door(nursery: Any, door: Any, stop: Any) -> tuple[str, int]:
    """Start FrontDoor on 127.0.0.1:0, with either of its signatures (bind inside or before)."""
    try:
        from frameos.server.listen import bind
    except ImportError:  # FrontDoor.run(host, port, stop) binds itself
        started: tuple[str, int] = await nursery.start(door.run, "127.0.0.1", 0, stop)
        return started
    listeners = await bind("127.0.0.1", 0)
    started = await nursery.start(door.run, listeners, stop)
    return started


# --- server: the websockets library ------------------------------------------------------------


async def serve_websockets() -> None:
    import asyncio

    import orjson
    from websockets.asyncio.server import broadcast, serve

    clients: set[Any] = set()
    seq = 0

    async def handler(ws: Any) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    def event() -> bytes:
        nonlocal seq
        seq += 1
        return orjson.dumps(
            {
                "v": 1,
                "seq": seq,
                "timestamp": time.time(),
                "event": "message",
                "severity": "info",
                "fields": {"text": TEXT},
            }
        )

    async def flushed() -> None:
        while any(ws.transport.get_write_buffer_size() for ws in clients):
            await asyncio.sleep(0.0005)

    async def rate(per_s: float, seconds: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        count = int(per_s * seconds)
        split0 = thread_split_s(os.getpid())
        cpu0, wall0, start = self_cpu_s(), time.time(), loop.time()
        first = seq + 1
        for index in range(count):
            delay = start + index / per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            broadcast(clients, event(), text=True)
        await flushed()
        cpu = self_cpu_s() - cpu0
        split1 = thread_split_s(os.getpid())
        return {
            "first": first,
            "last": seq,
            "published": count,
            "cpu_s": cpu,
            "cpu_main_s": split1[0] - split0[0],
            "cpu_threads_s": split1[1] - split0[1],
            "t0": wall0,
            "clients": len(clients),
        }

    async def burst(count: int) -> dict[str, Any]:
        cpu0, wall0 = self_cpu_s(), time.time()
        first = seq + 1
        for _ in range(count):
            broadcast(clients, event(), text=True)
            await asyncio.sleep(0)
        t_pub = time.time()
        await flushed()
        return {
            "first": first,
            "last": seq,
            "published": count,
            "cpu_s": self_cpu_s() - cpu0,
            "t0": wall0,
            "publish_s": t_pub - wall0,
            "clients": len(clients),
        }

    loop = asyncio.get_running_loop()
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        reply(port=port, pid=os.getpid())
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            cmd = json.loads(line) if line.strip() else {"cmd": "quit"}
            if cmd["cmd"] == "rate":
                reply(**await rate(cmd["rate"], cmd["seconds"]))
            elif cmd["cmd"] == "burst":
                reply(**await burst(cmd["count"]))
            elif cmd["cmd"] == "stats":
                reply(clients=len(clients), dropped_slow=0, pid=os.getpid())
            else:
                break


# --- client: 50 websocket readers in one process -----------------------------------------------


class Conn:
    __slots__ = ("buf", "closed", "count", "last_seq", "order_errors", "sock", "t_last")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(rest)
        self.count = 0
        self.last_seq = 0
        self.t_last = 0.0
        self.closed = False
        self.order_errors = 0


def handshake(port: int, path: str, rcvbuf: int | None = None) -> Conn:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"handshake refused: {head[:200]!r}")
    sock.setblocking(False)
    return Conn(sock, rest)


def client_main(port: int, readers: int, stuck: int, path: str) -> None:
    stuck_conns = [handshake(port, path, rcvbuf=4096) for _ in range(stuck)]
    conns = [handshake(port, path) for _ in range(readers)]
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    sel.register(stdin, selectors.EVENT_READ, None)
    reply(connected=len(conns), stuck=len(stuck_conns))
    latencies: list[float] = []
    track = False
    waiting: dict[str, Any] | None = None
    deadline = 0.0
    cpu0 = self_cpu_s()
    pending = b""
    running = True
    while running:
        ready = sel.select(0.05)
        if ready and not track:
            # flat out: let a few frames gather per socket, so one recv takes many (the
            # client's cost per delivery drops ~4x; latency phases never sleep here)
            time.sleep(READ_GATHER_S)
            ready = sel.select(0)
        for key, _ in ready:
            conn = key.data
            if conn is None:
                data = os.read(stdin.fileno(), 65536)
                if not data:
                    running = False
                    break
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    cmd = json.loads(line)
                    if cmd["cmd"] == "reset":
                        for c in conns:
                            c.count = 0
                        latencies = []
                        track = bool(cmd.get("latency"))
                        cpu0 = self_cpu_s()
                    elif cmd["cmd"] == "wait":
                        waiting = cmd
                        deadline = time.monotonic() + cmd["within"]
                    else:
                        running = False
                continue
            try:
                data = conn.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                conn.closed = True
                sel.unregister(conn.sock)
                continue
            now = time.time()
            buf = conn.buf
            buf += data
            size = len(buf)
            pos = 0
            last_seq = conn.last_seq
            count = 0
            while size - pos >= 2:
                b1 = buf[pos + 1] & 0x7F
                if b1 < 126:
                    start = pos + 2
                elif b1 == 126:
                    if size - pos < 4:
                        break
                    b1 = (buf[pos + 2] << 8) | buf[pos + 3]
                    start = pos + 4
                else:
                    if size - pos < 10:
                        break
                    b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    start = pos + 10
                end = start + b1
                if end > size:
                    break
                opcode = buf[pos] & 0x0F
                if opcode == 1:
                    comma = buf.find(b",", start + 13, start + 40)
                    seq = int(buf[start + 13 : comma])
                    if last_seq and seq != last_seq + 1:
                        conn.order_errors += 1
                    last_seq = seq
                    count += 1
                    if track:
                        t_start = comma + 13
                        latencies.append(now - float(buf[t_start : buf.find(b",", t_start)]))
                elif opcode == 9:  # ping: answer with a masked pong (mask key 0)
                    payload = bytes(buf[start:end])
                    with contextlib.suppress(OSError):
                        conn.sock.send(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                elif opcode == 8:
                    conn.closed = True
                pos = end
            if pos:
                del buf[:pos]
            if count:
                conn.count += count
                conn.last_seq = last_seq
                conn.t_last = now
        if waiting is not None:
            target = waiting["last_seq"]
            done = all(c.closed or c.last_seq >= target for c in conns)
            if done or time.monotonic() > deadline:
                lat = sorted(latencies)
                reply(
                    complete=done
                    and all(c.count == waiting["count"] and not c.closed for c in conns),
                    counts=sorted({c.count for c in conns}),
                    deliveries=sum(c.count for c in conns),
                    closed=sum(c.closed for c in conns),
                    order_errors=sum(c.order_errors for c in conns),
                    t_last=max(c.t_last for c in conns),
                    client_cpu_s=self_cpu_s() - cpu0,
                    latency_n=len(lat),
                    p50_ms=lat[len(lat) // 2] * 1000 if lat else None,
                    p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else None,
                    max_ms=lat[-1] * 1000 if lat else None,
                )
                waiting = None
    for conn in conns + stuck_conns:
        conn.sock.close()


# --- the driver --------------------------------------------------------------------------------


class ChildExited(RuntimeError):
    """The child process died (for a server under test: a finding, not a bench failure)."""


class Child:
    """A child process spoken to with JSON lines on stdin/stdout."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)
            del self.errors[:-60]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.proc.wait(5)
            raise ChildExited(
                f"{self.name} exited ({self.proc.returncode}): {self.last_error()}"
            ) from None

    def last_error(self) -> str:
        """The last line of the child's stderr that says what went wrong."""
        lines = [ln.strip().strip("|").strip() for ln in self.errors if ln.strip()]
        for line in reversed(lines):
            if "Error" in line or "Exception" in line:
                return line[:300]
        return lines[-1][:300] if lines else ""

    def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(
                f"{self.name}: no answer within {timeout} s; stderr: {''.join(self.errors)[-2000:]}"
            ) from None
        if line is None:
            self.proc.wait(5)
            raise ChildExited(f"{self.name} exited ({self.proc.returncode}): {self.last_error()}")
        record: dict[str, Any] = json.loads(line)
        return record

    def call(self, timeout: float = 60.0, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.recv(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ChildExited):
                self.send(cmd="quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Server:
    """A server under test; restarted when it dies, and the deaths counted."""

    def __init__(self, design: str, *extra: str) -> None:
        self.design = design
        self.extra = list(extra)
        self.crashes: list[str] = []
        self.child, self.port = self._start()

    def _start(self) -> tuple[Child, int]:
        design = "frameos" if self.design.startswith("frameos") else self.design
        if self.design.startswith("frameos-fsync-"):
            self.extra = ["--fsync", self.design.rsplit("-", 1)[1]]
        child = Child(
            [sys.executable, __file__, "--serve", design, *self.extra], f"{self.design} server"
        )
        return child, int(child.recv(30)["port"])

    def ensure(self) -> None:
        if not self.child.alive:
            self.crashes.append(self.child.last_error())
            self.child.close()
            self.child, self.port = self._start()

    def call(self, timeout: float = 60.0, **cmd: Any) -> dict[str, Any]:
        return self.child.call(timeout, **cmd)

    def close(self) -> None:
        self.child.close()


def start_server(design: str, *extra: str) -> Server:
    return Server(design, *extra)


def start_client(port: int, readers: int, stuck: int = 0) -> Child:
    client = Child(
        [
            sys.executable,
            __file__,
            "--client",
            "--port",
            str(port),
            "--readers",
            str(readers),
            "--stuck",
            str(stuck),
        ],
        "client",
    )
    client.recv(30)
    return client


def wait_clients(server: Server, expected: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stats = server.call(cmd="stats")
        if stats["clients"] == expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.design}: {stats['clients']} clients connected, expected {expected}"
            )
        time.sleep(0.05)


def rate_phase(server: Server, client: Child, seconds: float) -> dict[str, Any]:
    client.send(cmd="reset", latency=True)
    pub = server.call(cmd="rate", rate=RATE, seconds=seconds, timeout=seconds + 30)
    got = client.call(
        cmd="wait", last_seq=pub["last"], count=pub["published"], within=10, timeout=20
    )
    return {
        "p50_ms": got["p50_ms"],
        "p99_ms": got["p99_ms"],
        "max_ms": got["max_ms"],
        "complete": got["complete"] and got["order_errors"] == 0,
        "deliveries": got["deliveries"],
        "closed": got["closed"],
        "cpu_us_per_delivery": pub["cpu_s"] / max(1, got["deliveries"]) * 1e6,
        "main_thread_us_per_delivery": pub["cpu_main_s"] / max(1, got["deliveries"]) * 1e6,
        "other_threads_us_per_delivery": pub["cpu_threads_s"] / max(1, got["deliveries"]) * 1e6,
    }


def burst_phase(server: Server, client: Child, count: int) -> dict[str, Any]:
    client.send(cmd="reset", latency=False)
    time.sleep(0.05)
    before = server.call(cmd="stats")["dropped_slow"]
    pub = server.call(cmd="burst", count=count, timeout=120)
    got = client.call(
        cmd="wait", last_seq=pub["last"], count=pub["published"], within=30, timeout=40
    )
    elapsed = got["t_last"] - pub["t0"]
    stats = server.call(cmd="stats")
    return {
        "deliveries_per_s": got["deliveries"] / elapsed if elapsed > 0 else 0.0,
        "complete": got["complete"] and got["order_errors"] == 0,
        "deliveries": got["deliveries"],
        "closed": got["closed"],
        "dropped_slow": stats["dropped_slow"] - before,
        "clients_left": stats["clients"],
        "cpu_us_per_delivery": pub["cpu_s"] / max(1, got["deliveries"]) * 1e6,
        "client_cpu_share": got["client_cpu_s"] / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
        "utime_s": pub["utime_s"],
        "stime_s": pub["stime_s"],
        "writes_per_delivery": pub.get("write_syscalls", -1) / max(1, got["deliveries"]),
    }


CRASHED = {"complete": False, "crashed": True}


def phase(
    server: Server, readers: int, stuck: int, steps: list[tuple[str, Any]], out: dict[str, Any]
) -> None:
    """Connect a client process, run the phases; a server death is recorded, not raised."""
    server.ensure()
    client = start_client(server.port, readers, stuck)
    name = "connect"
    try:
        wait_clients(server, readers + stuck)
        for name, run in steps:
            out[name] = run(server, client)
    except ChildExited as exc:
        if not str(exc).startswith(server.child.name):
            raise  # the client died: the bench is broken
        for step, _run in steps:
            out.setdefault(step, {**CRASHED, "error": str(exc)})
        note(f"{server.design} server died during {name}: {exc}")
    finally:
        client.close()
    if server.child.alive:
        wait_clients(server, 0)
    server.ensure()


def run_design(server: Server, seconds: float, events: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    steps: list[tuple[str, Any]] = []
    if server.design != "frameos-deep":
        steps.append(("rate", lambda s, c: rate_phase(s, c, seconds)))
    if server.design.startswith("frameos-fsync-"):
        phase(server, CLIENTS, 0, steps, out)
        return out
    # the diagnostic design is ~5x faster: a longer burst keeps its window near a second
    count = events * DEEP_BURST_FACTOR if server.design == "frameos-deep" else events
    steps.append(("burst", lambda s, c: burst_phase(s, c, count)))
    phase(server, CLIENTS, 0, steps, out)
    return out


def r3_pairs(server: Server, pairs: int, events: int) -> list[dict[str, dict[str, Any]]]:
    """`pairs` back-to-back bursts without and with a stuck client, the order alternating."""
    out: list[dict[str, dict[str, Any]]] = []
    for index in range(pairs):
        pair: dict[str, dict[str, Any]] = {}
        for stuck in (0, 1) if index % 2 == 0 else (1, 0):
            name = "stuck" if stuck else "base"
            phase(
                server,
                CLIENTS - stuck,
                stuck,
                [(name, lambda s, c: burst_phase(s, c, events))],
                pair,
            )
        out.append(pair)
        note(f"R3 pair {index + 1}: " + summary({"frameos": pair}))
    return out


DESIGNS = ("frameos", "websockets", "frameos-deep")
DIAGNOSE = ("frameos-fsync-never", "frameos-fsync-always")
DEEP_QUEUE = 100_000
DEEP_BURST_FACTOR = 3


def main() -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seconds", type=float, default=None, help="200 events/s phase (5 s)")
        p.add_argument("--events", type=int, default=None, help="flat-out burst (4000)")
        p.add_argument(
            "--r3-pairs",
            type=int,
            default=None,
            help=f"R3: burst pairs without/with a stuck client ({R3_PAIRS}; 3 quick)",
        )
        p.add_argument("--r3-only", action="store_true", help="run only the R3 pairs")
        p.add_argument(
            "--diagnose",
            action="store_true",
            help="also run the 200 events/s phase with fsync=never and =always",
        )
        p.add_argument("--serve", choices=("frameos", "websockets"), help=argparse.SUPPRESS)
        p.add_argument("--queue-depth", type=int, default=None, help=argparse.SUPPRESS)
        p.add_argument("--fsync", default=None, help=argparse.SUPPRESS)
        p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--port", type=int, help=argparse.SUPPRESS)
        p.add_argument("--readers", type=int, default=CLIENTS, help=argparse.SUPPRESS)
        p.add_argument("--stuck", type=int, default=0, help=argparse.SUPPRESS)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.serve == "frameos":
        import trio

        trio.run(serve_frameos, args.queue_depth, args.fsync)
        return 0
    if args.serve == "websockets":
        import asyncio

        asyncio.run(serve_websockets())
        return 0
    if args.client:
        client_main(args.port, args.readers, args.stuck, "/ws/events")
        return 0

    seconds = args.seconds or (2.0 if args.quick else 5.0)
    events = args.events or (2000 if args.quick else 4000)
    pairs = args.r3_pairs or (3 if args.quick else R3_PAIRS)
    designs = DESIGNS + (DIAGNOSE if args.diagnose else ())
    if args.r3_only:
        designs = ()
    servers = {"frameos": start_server("frameos")}
    if designs:
        servers.update(
            {
                "websockets": start_server("websockets"),
                "frameos-deep": start_server("frameos-deep", "--queue-depth", str(DEEP_QUEUE)),
            }
        )
        servers.update({d: start_server(d) for d in designs if d not in servers})
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for index in range(args.runs if designs else 0):
            order = designs if index % 2 == 0 else designs[::-1]
            figures = {d: run_design(servers[d], seconds, events) for d in order}
            rounds.append(figures)
            note(f"round {index + 1}: " + summary(figures))
        r3 = r3_pairs(servers["frameos"], pairs, events)
    finally:
        for server in servers.values():
            server.close()
    if rounds:
        report(rounds, seconds, events, {d: s.crashes for d, s in servers.items()})
    report_r3(r3, events)
    return 0


def summary(figures: dict[str, dict[str, Any]]) -> str:
    parts = []
    for design, phases in figures.items():
        for name, fig in phases.items():
            if fig.get("crashed"):
                parts.append(f"{design}/{name} SERVER DIED")
                continue
            text = f"{design}/{name} "
            if name == "rate":
                text += (
                    f"p50 {fig['p50_ms']:.2f} p99 {fig['p99_ms']:.2f} ms, "
                    f"{fig['cpu_us_per_delivery']:.1f} µs/delivery"
                )
            else:
                text += (
                    f"{fig['deliveries_per_s']:,.0f}/s, {fig['dropped_slow']} dropped, "
                    f"{fig['cpu_us_per_delivery']:.2f} µs/delivery"
                )
            parts.append(text + ("" if fig["complete"] else " INCOMPLETE"))
    return "; ".join(parts)


def report(
    rounds: list[dict[str, dict[str, Any]]],
    seconds: float,
    events: int,
    crashes: dict[str, list[str]],
) -> None:
    def col(design: str, phase: str, key: str, only_complete: bool = False) -> list[float]:
        values = []
        for r in rounds:
            fig = r[design].get(phase, CRASHED)
            if key in fig and (fig["complete"] or not only_complete):
                values.append(fig[key])
        return values

    def ok_rounds(design: str, phase: str) -> int:
        return sum(1 for r in rounds if r[design].get(phase, CRASHED)["complete"])

    peer = "websockets broadcast()"
    common = {"clients": CLIENTS, "rate": RATE, "seconds": seconds}
    n = len(rounds)
    rate_complete = ok_rounds("frameos", "rate") == n and ok_rounds("websockets", "rate") == n
    w50, w99 = col("websockets", "rate", "p50_ms"), col("websockets", "rate", "p99_ms")
    result(
        BENCH,
        "frameos_p50_ms_at_200_per_s",
        col("frameos", "rate", "p50_ms"),
        unit="ms",
        peer=rnd(median(w50)),
        peer_median_of=[rnd(v) for v in w50],
        peer_name=peer,
        every_event_delivered=rate_complete,
        **common,
    )
    result(
        BENCH,
        "frameos_p99_ms_at_200_per_s",
        col("frameos", "rate", "p99_ms"),
        unit="ms",
        bar=f"<= {LATENCY_P99_BAR_MS:g} ms",
        ok=lambda v: v <= LATENCY_P99_BAR_MS,
        peer=rnd(median(w99)),
        peer_median_of=[rnd(v) for v in w99],
        peer_name=peer,
        **common,
    )
    fcpu, wcpu = (
        col("frameos", "rate", "cpu_us_per_delivery"),
        col("websockets", "rate", "cpu_us_per_delivery"),
    )
    result(
        BENCH,
        "frameos_cpu_us_per_delivery_at_200_per_s",
        fcpu,
        unit="µs",
        peer=rnd(median(wcpu)),
        peer_median_of=[rnd(v) for v in wcpu],
        peer_name=peer,
        **common,
    )
    ratios = [
        r["frameos"]["rate"]["cpu_us_per_delivery"] / r["websockets"]["rate"]["cpu_us_per_delivery"]
        for r in rounds
        if "cpu_us_per_delivery" in r["frameos"].get("rate", {})
        and "cpu_us_per_delivery" in r["websockets"].get("rate", {})
    ]
    result(
        BENCH,
        "cpu_per_delivery_ratio_at_200_per_s",
        ratios,
        unit="ratio",
        bar=f"<= {CPU_RATIO_BAR}",
        ok=lambda v: v <= CPU_RATIO_BAR,
        note="frameos / websockets per round; frameos also appends every event to its log "
        "(fsync=batch), the peer keeps no log",
        **common,
    )

    result(
        BENCH,
        "frameos_cpu_us_per_delivery_split_at_200_per_s",
        col("frameos", "rate", "main_thread_us_per_delivery"),
        unit="µs",
        other_threads=rnd(median(col("frameos", "rate", "other_threads_us_per_delivery"))),
        peer_main_thread=rnd(median(col("websockets", "rate", "main_thread_us_per_delivery"))),
        note="value: frameos's main (trio) thread; other_threads: its worker threads "
        "(the log's write and fsync); schedstat, live threads",
        **common,
    )
    for design in DIAGNOSE:
        if design in rounds[0]:
            cpu = col(design, "rate", "cpu_us_per_delivery")
            result(
                BENCH,
                f"diagnostic_{design.replace('-', '_')}_cpu_us_per_delivery",
                cpu,
                unit="µs",
                p99_ms=rnd(median(col(design, "rate", "p99_ms"))),
                ratio_to_peer=rnd(median(cpu) / median(wcpu)) if cpu and wcpu else None,
                other_threads=rnd(median(col(design, "rate", "other_threads_us_per_delivery"))),
                note="the 200 events/s phase with event_log.fsync changed; no bar",
                **common,
            )
    flat = {"clients": CLIENTS, "events": events}
    complete_rounds = ok_rounds("frameos", "burst")
    ftp_all = col("frameos", "burst", "deliveries_per_s")
    ftp = col("frameos", "burst", "deliveries_per_s", only_complete=True)
    wtp = col("websockets", "burst", "deliveries_per_s", only_complete=True)
    dtp = col("frameos-deep", "burst", "deliveries_per_s", only_complete=True)
    result(
        BENCH,
        "frameos_flat_out_deliveries_per_s",
        ftp,
        unit="deliveries/s",
        bar=f">= {THROUGHPUT_BAR} with every event delivered",
        ok=lambda v: complete_rounds == n and v >= THROUGHPUT_BAR,
        rounds_with_every_event_delivered=f"{complete_rounds}/{n}",
        rate_of_incomplete_rounds=[rnd(v) for v in ftp_all] if complete_rounds < n else None,
        clients_dropped_per_round=[
            r["frameos"].get("burst", {}).get("dropped_slow") for r in rounds
        ],
        server_crashes=len(crashes.get("frameos", [])),
        crash_errors=sorted(set(crashes.get("frameos", [])))[:3],
        peer=rnd(median(wtp)),
        peer_median_of=[rnd(v) for v in wtp],
        peer_name=peer,
        peer_rounds_with_every_event_delivered=f"{ok_rounds('websockets', 'burst')}/{n}",
        client_cpu_share=rnd(median(col("frameos", "burst", "client_cpu_share"))),
        **flat,
    )
    pairs = [
        (r["frameos"]["burst"]["deliveries_per_s"], r["websockets"]["burst"]["deliveries_per_s"])
        for r in rounds
        if r["frameos"].get("burst", CRASHED)["complete"]
        and r["websockets"].get("burst", CRASHED)["complete"]
    ]
    result(
        BENCH,
        "flat_out_throughput_ratio",
        [f / w for f, w in pairs],
        unit="ratio",
        note="frameos / websockets deliveries/s, rounds where both delivered everything",
        **flat,
    )
    result(
        BENCH,
        "frameos_flat_out_cpu_us_per_delivery",
        col("frameos", "burst", "cpu_us_per_delivery", only_complete=True),
        unit="µs",
        peer=rnd(median(col("websockets", "burst", "cpu_us_per_delivery"))),
        peer_name=peer,
        **flat,
    )
    result(
        BENCH,
        "diagnostic_flat_out_deliveries_per_s_queue_depth_100000",
        dtp,
        unit="deliveries/s",
        rounds_with_every_event_delivered=f"{ok_rounds('frameos-deep', 'burst')}/{n}",
        ratio_to_peer=rnd(median(dtp) / median(wtp)) if dtp and wtp else None,
        cpu_us_per_delivery=rnd(
            median(col("frameos-deep", "burst", "cpu_us_per_delivery", only_complete=True))
        ),
        client_cpu_share=rnd(median(col("frameos-deep", "burst", "client_cpu_share"))),
        note="frameos with websocket.queue_depth=100000: the fan-out path without the "
        "frame-count drop; not the product default, no bar",
        clients=CLIENTS,
        events=events * DEEP_BURST_FACTOR,
    )


def quartiles(values: list[float]) -> list[float | None]:
    """[min, lower quartile, median, upper quartile, max], rounded (empty: [])."""
    if not values:
        return []
    ordered = sorted(values)
    last = len(ordered) - 1
    return [rnd(ordered[round(last * q)]) for q in (0.0, 0.25, 0.5, 0.75, 1.0)]


def report_r3(pairs: list[dict[str, dict[str, Any]]], events: int) -> None:
    n = len(pairs)
    whole = [
        p
        for p in pairs
        if p.get("base", CRASHED)["complete"] and p.get("stuck", CRASHED)["complete"]
    ]

    def paired(key: str) -> list[float]:
        return [p["stuck"][key] / p["base"][key] for p in whole if p["base"][key] > 0]

    moves = [ratio - 1 for ratio in paired("deliveries_per_s")]
    readers_whole = sum(p.get("stuck", CRASHED)["complete"] for p in pairs)
    dropped = all(
        p.get("stuck", {}).get("dropped_slow") == 1
        and p.get("stuck", {}).get("clients_left") == CLIENTS - 1
        for p in pairs
    )
    result(
        "r3_slow_consumer",
        "throughput_move",
        moves,
        unit="fraction",
        bar="|median| < 0.10; the 49 get every event; the stuck one is dropped",
        ok=lambda v: abs(v) < R3_MOVE_BAR and readers_whole == n and dropped and len(moves) == n,
        move_quartiles=quartiles(moves),
        median_abs_move=rnd(median([abs(m) for m in moves])),
        readers_got_every_event=f"{readers_whole}/{n}",
        stuck_client_dropped_alone=dropped,
        clients_dropped_per_pair=[p.get("stuck", {}).get("dropped_slow") for p in pairs],
        base_deliveries_per_s=quartiles([p["base"]["deliveries_per_s"] for p in whole]),
        note="per pair: stuck / readers-only deliveries/s - 1, the two bursts back to back, "
        "the order alternating; median_abs_move is the old method's statistic",
        pairs=n,
        readers=CLIENTS - 1,
        stuck=1,
        events=events,
    )
    cpu = paired("cpu_us_per_delivery")
    result(
        "r3_slow_consumer",
        "cpu_per_delivery_ratio",
        cpu,
        unit="ratio",
        ratio_quartiles=quartiles(cpu),
        base_cpu_us_per_delivery=quartiles([p["base"]["cpu_us_per_delivery"] for p in whole]),
        note="server CPU (getrusage utime+stime) per delivery, stuck / readers-only, per pair",
        pairs=n,
        events=events,
    )
    writes = paired("writes_per_delivery")
    result(
        "r3_slow_consumer",
        "write_syscalls_per_delivery_ratio",
        writes,
        unit="ratio",
        ratio_quartiles=quartiles(writes),
        base_writes_per_delivery=quartiles([p["base"]["writes_per_delivery"] for p in whole]),
        note="the server's write syscalls (/proc/self/io syscw) per delivery, stuck / "
        "readers-only, per pair",
        pairs=n,
        events=events,
    )


if __name__ == "__main__":
    raise SystemExit(main())
