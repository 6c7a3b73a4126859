"""The floors of B6 (bench_supervise.py): the least a trio supervisor can do to start and stop N.

    python bench/supervise_floor.py CONFIG [--pydantic]

CONFIG is the frameos config bench_supervise.py writes (its `vms`, each a `name` and `command`).
Imports trio, starts every command with trio.lowlevel.open_process in its own session (one after
the other, as shared/notes/peer-supervisors.md's ~45-line trio supervisor does), then prints
`all running`. On SIGTERM: each child's group SIGTERMed, the children waited for (SIGKILL after
2 s), exit. With --pydantic, the config is first validated by a minimal two-model pydantic
schema (what any pydantic-validated config costs before the first launch).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import trio

GRACE_S = 2.0


def commands(path: str, validate: bool) -> list[list[str]]:
    with open(path, "rb") as handle:
        raw = json.load(handle)
    if not validate:
        return [vm["command"] for vm in raw["vms"]]
    from pydantic import BaseModel

    class Vm(BaseModel):
        name: str
        command: list[str]

    class Config(BaseModel):
        vms: list[Vm]

    return [vm.command for vm in Config.model_validate(raw).vms]


def killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


async def main(argv: list[list[str]]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        procs = [await trio.lowlevel.open_process(cmd, start_new_session=True) for cmd in argv]
        sys.stdout.write("all running\n")
        sys.stdout.flush()
        async for _ in signals:
            break
    for proc in procs:
        killpg(proc.pid, signal.SIGTERM)
    with trio.move_on_after(GRACE_S):
        for proc in procs:
            await proc.wait()
    for proc in procs:
        killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


if __name__ == "__main__":
    trio.run(main, commands(sys.argv[1], "--pydantic" in sys.argv[2:]))
