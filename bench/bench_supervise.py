"""B6-B8: supervising 50 children that take 0.2 s to stop, frameos beside supervisord and circus.

Measured as in shared/notes/peer-supervisors.md, every supervisor in the same run:

    start_all_s    launching the supervisor until it reports all children running
                   (frameos: its n-th vm.launched line on stdout, as the trio floor's line;
                   runtime:ready follows once the HTTP stack is up; supervisord:
                   XML-RPC getAllProcessInfo every 20 ms, startsecs=0; circus: its `list`)
    start_all_cpu_s  the supervisor's CPU time (utime+stime, 10 ms ticks) at that moment: on a
                   busy machine the wall time mostly measures the wait for a core (every
                   figure moves several-fold with the load), the CPU time much less
    stop_s         SIGTERM to the supervisor until it exited and no child (or grandchild) is left
    restart_s      `kill -9` of one child until /proc shows its replacement (scanned every ~2 ms)
    orphans_after_kill  that child's own children still alive 0.5 s after (then killed)
    rss_mib        peak RSS (VmHWM) of the supervisor process alone
    idle_cpu_s     utime+stime of the supervisor per 10 s with every child running, no clients
                   (frameos: from 0.5 s after its runtime:ready)

frameos runs with its bytecode cached, as an installed package has it (the peers run from
site-packages with theirs): a private PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE dropped, and
one unmeasured start first (`_common.bytecode_env`, as bench_startup.py does). From a checkout
with PYTHONDONTWRITEBYTECODE=1, frameos would otherwise compile its own sources on every start.

The floors (bench/supervise_floor.py, run like the others, interleaved in every round):
`trio-floor` is shared/notes/peer-supervisors.md's ~45-line trio supervisor (import trio, the
children started one by one with trio.lowlevel.open_process in their own sessions, a line on
stdout once all are started; on SIGTERM each child's group SIGTERMed and waited for);
`trio+pydantic-floor` first validates the same config with a minimal two-model pydantic schema.
They are measured for start_all_s, start_all_cpu_s, rss_mib and stop_s only (no restart, no
idle window): what any trio supervisor, and any whose config pydantic validates before the
first launch, pays on this machine. Ratios frameos/floor and floor/supervisord are reported
like the others, and whether the B6 target (0.8x supervisord's start-all) is below each floor.

Children: `sh` (traps SIGTERM, sleeps 0.2 s, exits; has a `sleep` grandchild) and `py`
(the same in Python). Every supervisor signals the whole process group (supervisord
stopasgroup/killasgroup, circus stop_children), grace 2 s. Medians of `--runs` runs (5; `--quick`
means 2 runs and a 2 s idle window). One JSON line per result on stdout, then the frameos/peer
ratios and the bars. supervisord and circus are import-checked: absent ones are reported as such
(`nox -s bench` installs them; by hand: `pip install supervisor circus`).

    python bench/bench_supervise.py [--runs N] [--quick] [--children 50] [--child sh,py]
        [--supervisors frameos,supervisord,circus,trio-floor,trio+pydantic-floor]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "frameos-bench-child"
GRACE_S = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHILDREN = {
    "sh": ["sh", "-c", "trap 'sleep 0.2; exit 0' TERM; sleep 1000 & wait", MARKER],
    "py": [
        sys.executable,
        "-c",
        "import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.2), sys.exit(0))); "
        "[signal.pause() for _ in iter(int, 1)]",
        MARKER,
    ],
}
PHASE_TIMEOUT_S = 30.0

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bytecode_env  # noqa: E402


def emit(**record: Any) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- /proc ------------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """Every live process below `root` (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := stat_fields(int(name))) and fields[0] not in "ZX":
            parents[int(name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def marked_children(root: int) -> set[int]:
    """The supervised children themselves (their argv carries MARKER), not grandchildren."""
    out = set()
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if MARKER.encode() in cmdline:
            out.add(pid)
    return out


def cpu_seconds(pid: int) -> float:
    fields = stat_fields(pid)
    assert fields is not None, f"pid {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until(check: Callable[[], bool], what: str, interval: float = 0.002) -> float:
    start = time.perf_counter()
    deadline = start + PHASE_TIMEOUT_S
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not within {PHASE_TIMEOUT_S:g} s")
        time.sleep(interval)
    return time.perf_counter() - start


# --- the supervisors --------------------------------------------------------------------------


@dataclass
class Supervisor:
    """How to start one supervisor with n children and ask whether all are running."""

    name: str
    workdir: Path
    n: int
    child: list[str]
    proc: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def all_running(self) -> bool:
        raise NotImplementedError

    def settled(self) -> bool:
        """Done starting (what follows "all running" is idle time)."""
        return True

    def env(self) -> dict[str, str] | None:
        return None

    def start(self) -> subprocess.Popen[bytes]:
        out = open(self.workdir / f"{self.name}.out", "wb")  # noqa: SIM115  # the child owns it
        self.proc = subprocess.Popen(
            self.argv(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            env=self.env(),
        )
        out.close()
        return self.proc


def write_config(workdir: Path, n: int, child: list[str]) -> Path:
    """The frameos config of n children (the floors read the same file)."""
    vms = [
        {
            "name": f"child-{i:02d}",
            "command": child,
            "cooperative": {"method": "none"},
            "timeouts": {"cooperative_ms": 0, "sigterm_ms": GRACE_S * 1000, "sigkill_ms": 1000},
            "restart": {"backoff_initial_ms": 0, "max_restarts": 10_000},
        }
        for i in range(n)
    ]
    config = {
        "frame_port": 0,
        "state_dir": str(workdir / "state"),
        "shutdown_timeout_s": 15,
        "vms": vms,
    }
    path = workdir / "frame.json"
    path.write_text(json.dumps(config))
    return path


class Frameos(Supervisor):
    pycache: Path | None = None  # the bytecode cache every run shares (see the module docstring)

    def env(self) -> dict[str, str]:
        # `python -m frameos` from the temp dir: the checkout's frameos when it is not installed
        root = str(Path(__file__).resolve().parent.parent)
        base = bytecode_env(self.pycache) if self.pycache is not None else dict(os.environ)
        path = base.get("PYTHONPATH")
        return {**base, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}

    def argv(self) -> list[str]:
        path = write_config(self.workdir, self.n, self.child)
        return [sys.executable, "-m", "frameos", "run", "--config", str(path), "--output", "json"]

    def all_running(self) -> bool:
        with open(self.workdir / f"{self.name}.out", "rb") as handle:
            handle.seek(self.state.get("offset", 0))
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.state["offset"] = self.state.get("offset", 0) + len(complete)
        self.state["launched"] = self.state.get("launched", 0) + complete.count(
            b'"event":"vm.launched"'
        )
        return int(self.state["launched"]) >= self.n

    def settled(self) -> bool:
        # the HTTP stack is imported after the launches: under load that spills into the idle
        # window unless it starts after runtime:ready
        return b'"event":"runtime:ready"' in (self.workdir / f"{self.name}.out").read_bytes()


class Floor(Supervisor):
    """bench/supervise_floor.py: trio alone (`trio-floor`), or trio after a minimal pydantic
    validation of the same config (`trio+pydantic-floor`). Measured for start-all, its CPU,
    RSS and stop only (FLOORS: no restart, no idle window)."""

    def argv(self) -> list[str]:
        path = write_config(self.workdir, self.n, self.child)
        script = Path(__file__).resolve().parent / "supervise_floor.py"
        extra = ["--pydantic"] if "pydantic" in self.name else []
        return [sys.executable, str(script), str(path), *extra]

    def all_running(self) -> bool:
        return b"all running\n" in (self.workdir / f"{self.name}.out").read_bytes()


class Supervisord(Supervisor):
    def argv(self) -> list[str]:
        self.state["port"] = port = free_port()
        command = " ".join(_ini_quote(arg) for arg in self.child)
        conf = f"""[supervisord]
nodaemon=true
logfile={self.workdir}/supervisord.log
pidfile={self.workdir}/supervisord.pid
childlogdir={self.workdir}
loglevel=warn
[inet_http_server]
port=127.0.0.1:{port}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:w]
command={command}
numprocs={self.n}
process_name=%(program_name)s_%(process_num)02d
startsecs=0
autorestart=true
stopasgroup=true
killasgroup=true
stopwaitsecs={GRACE_S}
stdout_logfile=/dev/null
stderr_logfile=/dev/null
"""
        path = self.workdir / "supervisord.conf"
        path.write_text(conf)
        return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(path)]

    def all_running(self) -> bool:
        server = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.state['port']}/RPC2")
        try:
            info: list[dict[str, Any]] = server.supervisor.getAllProcessInfo()  # type: ignore[assignment]  # XML-RPC answers are untyped
        except OSError:
            return False
        return sum(1 for p in info if p["statename"] == "RUNNING") == self.n


class Circus(Supervisor):
    def argv(self) -> list[str]:
        self.state["endpoint"] = endpoint = f"tcp://127.0.0.1:{free_port()}"
        command = " ".join(_ini_quote(arg) for arg in self.child).replace("%", "%%")
        conf = f"""[circus]
endpoint = {endpoint}
pubsub_endpoint = tcp://127.0.0.1:{free_port()}
statsd = False
check_delay = 1
[watcher:w]
cmd = {command}
numprocesses = {self.n}
warmup_delay = 0
graceful_timeout = {GRACE_S}
stop_children = True
copy_env = True
"""
        path = self.workdir / "circus.ini"
        path.write_text(conf)
        return [sys.executable, "-m", "circus.circusd", "--log-level", "warning", str(path)]

    def all_running(self) -> bool:
        from circus.client import CircusClient  # type: ignore[import-not-found]  # optional peer

        client = self.state.get("client")
        if client is None:
            client = self.state["client"] = CircusClient(endpoint=self.state["endpoint"], timeout=1)
        try:
            answer = client.call({"command": "list", "properties": {"name": "w"}})
        except Exception:  # not up yet (CallError, timeouts)
            return False
        return len(answer.get("pids", [])) == self.n


def _ini_quote(arg: str) -> str:
    return (
        arg
        if arg and all(c.isalnum() or c in "-_./=:" for c in arg)
        else ("'" + arg.replace("'", "'\"'\"'") + "'")
    )


SUPERVISORS: dict[str, tuple[type[Supervisor], str | None]] = {
    "frameos": (Frameos, None),
    "supervisord": (Supervisord, "supervisor"),
    "circus": (Circus, "circus"),
    "trio-floor": (Floor, None),
    "trio+pydantic-floor": (Floor, "pydantic"),
}
FLOORS = ("trio-floor", "trio+pydantic-floor")


# --- one run ----------------------------------------------------------------------------------


def measure(sup: Supervisor, idle_s: float) -> dict[str, float]:
    started = time.perf_counter()
    proc = sup.start()
    try:
        wait_until(
            sup.all_running,
            f"{sup.name}: all running",
            interval=0.02 if sup.name != "frameos" else 0.005,
        )
        result = {
            "start_all_s": time.perf_counter() - started,
            "start_all_cpu_s": cpu_seconds(proc.pid),
        }
        wait_until(lambda: len(marked_children(proc.pid)) == sup.n, "children visible", 0.01)
        if sup.name in FLOORS:
            result["rss_mib"] = peak_rss_mib(proc.pid)
            result["stop_s"] = _stop(proc)
            return result
        wait_until(sup.settled, f"{sup.name}: settled", 0.01)
        time.sleep(0.5)
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(idle_s)
        result["idle_cpu_s"] = (cpu_seconds(proc.pid) - cpu0) * 10 / idle_s
        result["restart_s"], result["orphans_after_kill"] = _restart_latency(proc.pid)
        wait_until(lambda: len(marked_children(proc.pid)) == sup.n, "replacement", 0.01)
        time.sleep(0.3)
        result["rss_mib"] = peak_rss_mib(proc.pid)
        result["stop_s"] = _stop(proc)
        return result
    finally:
        _kill_everything(proc)


def _restart_latency(root: int) -> tuple[float, float]:
    """SIGKILL one child; time until a new child of `root` runs the child program. Also counts
    the killed child's own children still alive 0.5 s later (a supervisor that does not clean
    up the group leaves them orphaned), then kills them so the runs stay independent.

    A fresh fork shows its parent's cmdline until it execs: new children of `root` are
    re-read every scan until the marker appears; other new processes are ignored.
    """
    victim = min(marked_children(root))
    victim_tree = descendants(victim)
    ignored = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    os.kill(victim, signal.SIGKILL)
    start = time.perf_counter()

    def replaced() -> bool:
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in ignored:
                continue
            pid = int(name)
            fields = stat_fields(pid)
            if fields is None or int(fields[1]) != root:
                ignored.add(pid)
                continue
            try:
                if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                ignored.add(pid)
        return False

    wait_until(replaced, "replacement after SIGKILL")
    latency = time.perf_counter() - start
    time.sleep(0.5)
    orphans = [pid for pid in victim_tree if alive(pid)]
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return latency, float(len(orphans))


def _stop(proc: subprocess.Popen[bytes]) -> float:
    everything = descendants(proc.pid)
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: proc.poll() is not None and not any(alive(p) for p in everything),
        "all gone after SIGTERM",
    )
    return time.perf_counter() - start


def _kill_everything(proc: subprocess.Popen[bytes]) -> None:
    leftovers = descendants(proc.pid) if proc.poll() is None else set()
    for pid in leftovers | ({proc.pid} if proc.poll() is None else set()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


# --- the whole bench --------------------------------------------------------------------------


def available(names: list[str]) -> list[str]:
    out = []
    for name in names:
        module = SUPERVISORS[name][1]
        if module is None or importlib.util.find_spec(module) is not None:
            out.append(name)
            continue
        emit(
            bench="supervise",
            supervisor=name,
            status="absent",
            detail=f"python module {module!r} is not installed in {sys.executable}; "
            f"`pip install {'supervisor' if name == 'supervisord' else name}` "
            f"(nox -s bench does) to compare against it",
        )
        print(f"bench_supervise: {name} is ABSENT: no ratio against it", file=sys.stderr)
    return out


def warm_up(n: int, child: list[str]) -> None:
    """One unmeasured frameos start and stop: its bytecode cache filled, the page cache warm."""
    with tempfile.TemporaryDirectory(prefix="bench-frameos-warm-") as tmp:
        sup = Frameos("frameos", Path(tmp), n, child)
        proc = sup.start()
        try:
            wait_until(sup.all_running, "frameos warm-up: all running")
            _stop(proc)
        finally:
            _kill_everything(proc)


def run(
    names: list[str], kinds: list[str], runs: int, n: int, idle_s: float
) -> dict[tuple[str, str], dict[str, float]]:
    medians: dict[tuple[str, str], dict[str, float]] = {}
    if "frameos" in names:
        warm_up(n, CHILDREN[kinds[0]])
    for kind in kinds:
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
        for index in range(runs):
            for name in names:  # interleaved, so drift in the machine's load hits all alike
                with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                    sup = SUPERVISORS[name][0](name, Path(tmp), n, CHILDREN[kind])
                    try:
                        result = measure(sup, idle_s)
                    except TimeoutError as exc:
                        emit(
                            bench="supervise",
                            supervisor=name,
                            child=kind,
                            run=index,
                            error=str(exc),
                        )
                        continue
                for metric, value in result.items():
                    samples[name].setdefault(metric, []).append(value)
        for name in names:
            medians[(name, kind)] = {}
            for metric, values in samples[name].items():
                median = statistics.median(values)
                medians[(name, kind)][metric] = median
                emit(
                    bench="supervise",
                    supervisor=name,
                    child=kind,
                    metric=metric,
                    median=round(median, 4),
                    runs=[round(v, 4) for v in values],
                    n=n,
                )
    return medians


def report(medians: dict[tuple[str, str], dict[str, float]], kinds: list[str]) -> None:
    pairs = [("frameos", peer) for peer in ("supervisord", "circus", *FLOORS)]
    pairs += [(floor, "supervisord") for floor in FLOORS]
    for kind in kinds:
        ours = medians.get(("frameos", kind), {})
        for mine, peer in pairs:
            values, theirs = medians.get((mine, kind)), medians.get((peer, kind))
            if not values or not theirs:
                continue
            for metric, value in values.items():
                if metric not in theirs:
                    continue
                ratio = round(value / theirs[metric], 3) if theirs[metric] else None
                emit(
                    bench="supervise",
                    ratio=f"{mine}/{peer}",
                    child=kind,
                    metric=metric,
                    value=ratio,
                    ours=round(value, 4),
                    theirs=round(theirs[metric], 4),
                )
        peer_start = medians.get(("supervisord", kind), {}).get("start_all_s")
        bars = [
            ("B6-start", "start_all_s", None if peer_start is None else 0.8 * peer_start),
            ("B6-stop", "stop_s", 0.35),
            ("B7-restart", "restart_s", 0.05),
            ("B8-rss", "rss_mib", 64.0),
            ("B8-idle-cpu", "idle_cpu_s", 0.02),
        ]
        for bar, metric, target in bars:
            found = ours.get(metric)
            emit(
                bench="supervise",
                bar=bar,
                child=kind,
                metric=metric,
                value=None if found is None else round(found, 4),
                target=None if target is None else round(target, 4),
                passed=None if found is None or target is None else found <= target + 1e-9,
            )
        for floor in FLOORS:  # is the B6 bar reachable at all by a trio supervisor?
            floor_start = medians.get((floor, kind), {}).get("start_all_s")
            if floor_start is None or peer_start is None:
                continue
            emit(
                bench="supervise",
                floor=floor,
                child=kind,
                metric="start_all_s",
                value=round(floor_start, 4),
                b6_target=round(0.8 * peer_start, 4),
                b6_target_below_floor=0.8 * peer_start < floor_start,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per supervisor (median)")
    parser.add_argument("--quick", action="store_true", help="2 runs, 2 s idle window")
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--child", default="sh,py", help="child kinds: sh, py or both")
    parser.add_argument("--supervisors", default=",".join(SUPERVISORS))
    args = parser.parse_args()
    runs, idle_s = (2, 2.0) if args.quick else (args.runs, 10.0)
    kinds = [k for k in args.child.split(",") if k]
    names = available([s for s in args.supervisors.split(",") if s])
    with tempfile.TemporaryDirectory(prefix="bench-frameos-pycache-") as cache:
        Frameos.pycache = Path(cache)
        medians = run(names, kinds, runs, args.children, idle_s)
    report(medians, kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
