"""A command exec would refuse fails the launch itself, through the real spawner (the check
before the pidfile gate, frameos/workers/child.py), with the one-line reason: a program not on
PATH, a script whose `#!` interpreter is missing or names none. Nothing is left running."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from frameos import events as ev
from frameos.workers import OperationFailed
from frameos.workers.pool import VmPool
from frameos.workers.testing import RecordingPublisher
from tests.conftest import until
from tests.test_pool_ops import frame, vm


async def failed_start(tmp_path: Path, command: list[str], path: str) -> tuple[str, list[ev.Event]]:
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", command=command, restart={"policy": "temporary"})])
    pool = VmPool(config, pub, base_env={"PATH": path})
    async with trio.open_nursery() as work:
        await work.start(pool.run)
        with pytest.raises(OperationFailed) as info:
            await pool.start_vm("a")
        await pool.stop("test")
    return str(info.value), [e for e, _ in pub.events]


def script(tmp_path: Path, first_line: str) -> Path:
    path = tmp_path / "run.sh"
    path.write_text(f"{first_line}\necho hello\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    "first_line", ["#!/nonexistent/bin/interp -e", "#!", "#!   "], ids=["missing", "empty", "blank"]
)
async def test_a_script_whose_interpreter_cannot_run_fails_the_launch(
    tmp_path: Path, first_line: str
) -> None:
    path = script(tmp_path, first_line)
    said, events = await failed_start(tmp_path, [str(path)], "/usr/bin:/bin")
    assert (
        said == f"vm a: launch failed: command '{path}' not found; check the VM's command (argv[0])"
    )
    assert not [e for e in events if isinstance(e, ev.VmLaunched)]  # never ran


async def test_a_program_not_on_the_vms_path_fails_the_launch(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    said, events = await failed_start(tmp_path, ["frameos-no-such-tool"], str(tmp_path / "bin"))
    assert said == (
        "vm a: launch failed: command 'frameos-no-such-tool' not found; check the VM's command "
        "(argv[0])"
    )
    assert not [e for e in events if isinstance(e, ev.VmLaunched)]


async def test_a_script_with_a_runnable_interpreter_launches(tmp_path: Path) -> None:
    path = tmp_path / "serve.sh"
    path.write_text("#!/bin/sh -e\necho hello from the script\nexec sleep 600\n")
    path.chmod(0o755)
    pub = RecordingPublisher()
    config = frame(tmp_path, [vm("a", command=[str(path)], restart={"policy": "temporary"})])
    pool = VmPool(config, pub, base_env={"PATH": "/usr/bin:/bin"})
    async with trio.open_nursery() as work:
        await work.start(pool.run)
        await pool.start_vm("a")
        log = Path(pool.snapshot("a").output_log)
        await until(lambda: b"hello from the script" in log.read_bytes())
        await pool.stop("test")
    assert [type(e) for e, _ in pub.events if isinstance(e, ev.VmLaunched)] == [ev.VmLaunched]
