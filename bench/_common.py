"""Helpers shared by the bench/ scripts (stdlib only, so client processes start fast).

Every script prints one JSON line per result on stdout (`emit`), human notes on stderr (`note`).
CPU figures are utime+stime: /proc/PID/stat for another process (10 ms ticks), getrusage for
the process itself (µs), or the precise per-thread runtime from /proc/PID/task/*/schedstat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def emit(**record: Any) -> None:
    """One result: a single JSON line on stdout, flushed at once (NaN becomes null)."""
    print(json.dumps(_finite(record), allow_nan=False), flush=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def note(text: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {text}", file=sys.stderr, flush=True)


def parse_args(
    description: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=5, help="rounds to take the median of (5)")
    parser.add_argument("--quick", action="store_true", help="1 round, shorter phases")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    args.runs = max(1, args.runs)
    return args


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def rnd(value: float | None, digits: int = 3) -> float | None:
    """Round to `digits` significant figures; NaN and None become None (JSON null)."""
    if value is None or value != value:
        return None
    if value == 0 or value in (float("inf"), float("-inf")):
        return value
    from math import floor, log10

    return round(value, max(0, digits - 1 - floor(log10(abs(value)))))


def result(
    bench: str,
    metric: str,
    values: Sequence[float],
    *,
    unit: str,
    bar: str | None = None,
    ok: Callable[[float], bool] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build and emit one result line: the median of `values`, the bar and whether it is met."""
    values = [v for v in values if v is not None and v == v]
    value = median(values)
    record: dict[str, Any] = {
        "bench": bench,
        "metric": metric,
        "value": rnd(value, 4),
        "unit": unit,
        "runs": len(values),
        "median_of": [rnd(v, 4) for v in values],
    }
    if bar is not None:
        record["bar"] = bar
        record["met"] = bool(values) and ok is not None and bool(ok(value))
    record.update(extra)
    emit(**record)
    return record


# --- processes --------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process in seconds, from /proc/PID/stat (includes exited threads)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_runtime_s(pid: int) -> float:
    """Sum of the live threads' on-CPU time (ns precision) from /proc/PID/task/*/schedstat."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return float("nan")
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as handle:
                total += int(handle.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / 1e9


def thread_split_s(pid: int) -> tuple[float, float]:
    """(main thread, every other live thread) on-CPU seconds, from schedstat (ns)."""
    main = other = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return float("nan"), float("nan")
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as handle:
                ns = int(handle.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if int(tid) == pid:
            main += ns
        else:
            other += ns
    return main / 1e9, other / 1e9


def proc_status_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def frameos_argv() -> list[str]:
    """The `frameos` console script beside this interpreter, else `python -m frameos`."""
    script = Path(sys.executable).parent / "frameos"
    if script.exists():
        return [str(script)]
    found = shutil.which("frameos")
    return [found] if found else [sys.executable, "-m", "frameos"]


def write_config(directory: Path, **config: Any) -> Path:
    path = directory / "frame.json"
    path.write_text(json.dumps(config))
    return path


class FrameosRun:
    """A real `frameos run` whose stdout (JSON lines) is read by a thread until it exits.

    `ready_s` is the wall time from spawning until the runtime:ready line was read.
    """

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        on_line: Callable[[bytes], None] | None = None,
        argv: Sequence[str] = (),
        stderr: int | None = subprocess.PIPE,
        cwd: Path | None = None,
    ) -> None:
        env = {
            k: v
            for k, v in (env if env is not None else os.environ).items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        self.ready = threading.Event()
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=50)  # the last lines of stdout
        self.ready_line: dict[str, Any] | None = None
        self.on_line = on_line
        self.started = time.perf_counter()
        self.ready_s = float("nan")
        self.proc = subprocess.Popen(
            [*argv, *frameos_argv(), "run", "--config", str(config), "--output", "json"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines += 1
            if not self.ready.is_set() and b'"event":"runtime:ready"' in raw:
                self.ready_s = time.perf_counter() - self.started
                self.ready_line = json.loads(raw)
                self.ready.set()
            if self.on_line is not None:
                self.on_line(raw)
            self.tail.append(raw.decode(errors="replace").rstrip())

    @property
    def port(self) -> int:
        """The bound HTTP port, from runtime:ready's `server` (after `wait_ready`)."""
        assert self.ready_line is not None, "not ready yet"
        server: str = self.ready_line["fields"]["server"]
        return int(server.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not self.ready.wait(timeout):
            self.stop()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(
                f"frameos run was not ready within {timeout} s; "
                f"stdout: {list(self.tail)[-5:]}; stderr: {err[-2000:]}"
            )

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode


def bytecode_env(cache_dir: Path) -> dict[str, str]:
    """The environment with bytecode cached in `cache_dir`, as an installed package has it
    (PYTHONDONTWRITEBYTECODE dropped; PYTHONPYCACHEPREFIX keeps the .pyc out of the tree)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    return env


def fs_type(path: Path) -> str:
    """The filesystem type holding `path` (longest mount-point prefix in /proc/mounts)."""
    best, kind = "", "?"
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                parts = line.split()
                mount, fstype = parts[1], parts[2]
                if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(
                    mount
                ) >= len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


# --- loopback HTTP and websocket clients (stdlib, for the depth and chaos benches) -------------


def http_get(
    port: int, path: str = "/healthz", timeout: float = 10.0, headers: str = "Connection: close\r\n"
) -> tuple[int, bytes]:
    """One GET on a new connection; reads to the end of the body (Content-Length or chunked),
    so a server that keeps the socket open does not stall it. Returns status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lower = head.lower()
                at = lower.find(b"content-length:")
                if at >= 0:
                    length = int(lower[at + 15 :].split(b"\r\n", 1)[0])
                    if len(body) >= length:
                        break
                elif b"chunked" in lower and body.endswith(b"0\r\n\r\n"):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        out, pos = b"", 0
        while True:
            end = body.index(b"\r\n", pos)
            size = int(body[pos:end].split(b";")[0], 16)
            if size == 0:
                break
            out += body[end + 2 : end + 2 + size]
            pos = end + 2 + size + 2
        body = out
    return status, body


class WsReader:
    """A blocking websocket client of /ws/events: handshake, then unmasked server frames."""

    def __init__(self, port: int, path: str, timeout: float = 60.0) -> None:
        import base64

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            self.sock.close()
            raise ConnectionError(f"handshake refused: {head[:200]!r}")
        self.buf = bytearray(rest)
        self.closed: int | None = None  # the close code once a close frame came

    def frames(self, deadline: float) -> Any:
        """Yield text payloads until the deadline (monotonic), EOF or a close frame."""
        buf = self.buf
        pos = 0
        while True:
            while True:  # parse every complete frame in the buffer
                if len(buf) - pos < 2:
                    break
                opcode, size = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
                start = pos + 2
                if size == 126:
                    if len(buf) - pos < 4:
                        break
                    size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                    start = pos + 4
                elif size == 127:
                    if len(buf) - pos < 10:
                        break
                    size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    start = pos + 10
                if len(buf) < start + size:
                    break
                payload = bytes(buf[start : start + size])
                pos = start + size
                if opcode == 0x8:
                    self.closed = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    return
                if opcode == 0x1:
                    yield payload
            del buf[:pos]
            pos = 0
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            buf += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def seq_of(line: bytes) -> int:
    """The seq of an envelope from its fixed prefix `{"v":1,"seq":N,` (no JSON decode)."""
    start = line.index(b'"seq":') + 6
    return int(line[start : line.index(b",", start)])


# --- processes of one instance, found by an environment tag -----------------------------------

TAG_VAR = "FRAMEOS_PROOF_TAG"


def tagged(tag: str) -> set[int]:
    """Live pids (zombies excluded) whose environment carries TAG_VAR=tag: a frameos started with
    that tag and everything it spawned, wherever they were reparented."""
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = handle.read() + b"\0"
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        if needle in environ and state not in (b"Z", b"X"):
            found.add(int(name))
    return found


def kill_tagged(tag: str) -> int:
    """SIGKILL what is left of a tagged instance (cleanup after a bench); returns the count."""
    pids = tagged(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
