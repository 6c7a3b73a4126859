"""B4: start-up wall time of `frameos check`, `frameos contract` and `frameos run` to ready.

Each figure is the median of `--runs` subprocess runs, wall time measured around the whole
process (interpreter start included), with the `frameos` console script of this interpreter's
environment. Bytecode is cached as an installed package has it (a private
PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE dropped; one warm-up of each command first): an
editable install run with PYTHONDONTWRITEBYTECODE=1 recompiles frameos's sources on every start
(~20-35 ms more here). `run` is timed from spawn until its stdout carries the runtime:ready
line, then it gets SIGTERM. For context, the same interpreter's bare start (`python -c pass`)
is measured too.

When check or contract misses its bar, `python -X importtime` shows where the time goes: the
import time per top-level package (self time summed; -X importtime itself inflates it a
little), the heaviest packages and which module imported each, and whether the server stack
(trio, quart, hypercorn, ...) was imported at all.

    python bench/bench_startup.py [--runs N] [--quick]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FrameosRun,
    bytecode_env,
    emit,
    frameos_argv,
    free_port,
    median,
    note,
    parse_args,
    result,
    rnd,
    write_config,
)

BENCH = "b4_startup"
CLI_BAR_MS = 250.0
RUN_BAR_MS = 800.0
SERVER_STACK = (
    "trio",
    "quart",
    "quart_trio",
    "hypercorn",
    "wsproto",
    "h11",
    "h2",
    "prometheus_client",
    "rich",
    "werkzeug",
    "jinja2",
)


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
    )
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-1000:]}"
        )
    return elapsed


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `python -X importtime -m frameos ARGS`; summarize where import time goes."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "frameos", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    entries = []  # (self_us, cumulative_us, depth, module), in the order printed (post-order)
    for line in done.stderr.splitlines():
        found = _LINE.match(line)
        if found:
            entries.append(
                (int(found.group(1)), int(found.group(2)), len(found.group(3)) // 2, found.group(4))
            )
    by_package: dict[str, int] = defaultdict(int)
    for self_us, _cum, _depth, module in entries:
        by_package[module.split(".")[0]] += self_us
    # who imported each package first: the next entry printed with a smaller depth
    importer: dict[str, str] = {}
    cumulative: dict[str, int] = {}
    for index, (_self, cum, depth, module) in enumerate(entries):
        root = module.split(".")[0]
        if module == root and root not in importer:
            parent = next((m for _s, _c, d, m in entries[index + 1 :] if d < depth), "(main)")
            importer[root] = parent
            cumulative[root] = cum
    total = sum(cum for _self, cum, depth, _m in entries if depth == 0)
    heavy = sorted(cumulative.items(), key=lambda kv: -kv[1])
    return {
        "total_import_ms": rnd(total / 1000),
        "self_ms_by_package": {
            k: rnd(v / 1000) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]
        },
        "heaviest_packages": [
            {"package": k, "cumulative_ms": rnd(v / 1000), "imported_by": importer[k]}
            for k, v in heavy[:10]
        ],
        "server_stack_imported": sorted(p for p in SERVER_STACK if p in importer),
    }


_PROFILE = """
import cProfile, os, pstats, sys, time
args = sys.argv[1:]
sys.stdout = open(os.devnull, "w")
prof = cProfile.Profile()
start = time.perf_counter()
prof.enable()
from frameos.cli import main
try:
    main(args)
except SystemExit:
    pass
prof.disable()
total = time.perf_counter() - start
stats = pstats.Stats(prof).stats
imports = sum(v[3] for k, v in stats.items() if k[2] == "_find_and_load")
top = sorted(((v[3], f"{os.path.basename(k[0])}:{k[2]}") for k, v in stats.items()
              if "importlib" not in k[0] and k[2] not in ("<module>", "main")
              and not k[0].startswith("<") and k[0] != "~"
              and not k[2].startswith("cmd_")), reverse=True)[:6]
models = sum(v[3] for k, v in stats.items()
             if k[0].endswith("_model_construction.py") and k[2] == "__new__")
sys.__stdout__.write(repr({"total_ms": total * 1000, "import_ms": imports * 1000,
                           "models_ms": models * 1000,
                           "top": [(name, ct * 1000) for ct, name in top]}))
"""


def work_profile(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """cProfile one run: how much of it is imports, and the costliest calls that are not."""
    import ast

    done = subprocess.run(
        [sys.executable, "-c", _PROFILE, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    try:
        data = ast.literal_eval(done.stdout.strip())
    except (ValueError, SyntaxError):
        return {"error": done.stderr[-500:]}
    return {
        "profiled_ms": rnd(data["total_ms"]),
        "in_imports_ms": rnd(data["import_ms"]),
        "not_imports_ms": rnd(data["total_ms"] - data["import_ms"]),
        "building_pydantic_models_ms": rnd(data["models_ms"]),
        "top_calls_not_imports": [
            {"call": name, "cumulative_ms": rnd(ms)} for name, ms in data["top"]
        ],
    }


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="frameos-b4-") as tmp:
        config = write_config(
            Path(tmp),
            frame_port=free_port(),
            state_dir=str(Path(tmp) / "state"),
            heartbeat_interval=1,
        )
        env = bytecode_env(Path(tmp) / "pycache")
        cli = frameos_argv()
        commands = {
            "check": [*cli, "check", "--config", str(config)],
            "contract": [*cli, "contract"],
        }
        # warm-up: the page cache, and bytecode for every module the three commands import
        for argv in commands.values():
            wall_ms(argv, env)
        warm = FrameosRun(config, env=env)
        warm.wait_ready()
        warm.stop()
        times: dict[str, list[float]] = {"check": [], "contract": [], "bare": [], "run": []}
        for _ in range(args.runs):
            times["bare"].append(wall_ms([sys.executable, "-c", "pass"], env))
            for name, argv in commands.items():
                times[name].append(wall_ms(argv, env))
            run = FrameosRun(config, env=env)
            try:
                run.wait_ready()
            finally:
                status = run.stop()
            if status != 0:
                raise RuntimeError(f"frameos run exited {status} after SIGTERM")
            times["run"].append(run.ready_s * 1000)
        note("medians: " + ", ".join(f"{k} {median(v):.0f} ms" for k, v in times.items()))
        bare = rnd(median(times["bare"]))
        for name in ("check", "contract"):
            record = result(
                BENCH,
                f"{name}_wall_ms",
                times[name],
                unit="ms",
                bar=f"<= {CLI_BAR_MS:g} ms",
                ok=lambda v: v <= CLI_BAR_MS,
                command=" ".join(["frameos", *commands[name][len(cli) :]]),
                interpreter_start_ms=bare,
                bytecode="cached (as installed)",
            )
            profile_args = commands[name][len(cli) :]
            profile = import_profile(profile_args, env)
            profile["under_cprofile"] = work_profile(profile_args, env)
            emit(
                bench=BENCH,
                metric=f"{name}_import_profile",
                value=profile["total_import_ms"],
                unit="ms (under -X importtime)",
                bar_missed=not record["met"],
                **profile,
            )
        result(
            BENCH,
            "run_to_ready_ms",
            times["run"],
            unit="ms",
            bar=f"<= {RUN_BAR_MS:g} ms",
            ok=lambda v: v <= RUN_BAR_MS,
            command="frameos run --config X (until the runtime:ready line on stdout)",
            interpreter_start_ms=bare,
            bytecode="cached (as installed)",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
