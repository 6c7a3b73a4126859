"""Bootstrap pipelines with real step processes: plans and stamps, retries, timeouts, bounded
output, ssh variables; and `frameos check --plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from frameos import events as ev
from frameos.config import BootstrapConfig, VmConfig
from frameos.workers import bootstrap as boot
from frameos.workers.bootstrap import BootstrapContext, run_bootstrap
from frameos.workers.paths import VmPaths
from frameos.workers.plan import decide, digest, planned, read_stamp
from frameos.workers.procfs import is_alive
from frameos.workers.testing import RecordingPublisher

PY = sys.executable


def py(code: str, **step: object) -> dict[str, object]:
    return {"name": step.pop("name", "s"), "command": [PY, "-c", code], **step}


def vm_with(steps: list[dict[str, object]], trigger: str = "auto", **extra: object) -> VmConfig:
    return VmConfig.model_validate(
        {
            "name": "b",
            "command": ["true"],
            **extra,
            "bootstrap": {
                "trigger": trigger,
                "steps": steps,
                "ssh": {
                    "user": "root",
                    "host": "10.0.0.2",
                    "port": 2222,
                    "identity": "/keys/id",
                    "options": ["-o", "BatchMode=yes"],
                },
            },
        }
    )


async def bootstrap(
    vm: VmConfig, tmp_path: Path, pub: RecordingPublisher | None = None
) -> tuple[bool, RecordingPublisher]:
    pub = pub or RecordingPublisher()
    ctx = BootstrapContext(vm, VmPaths.of(vm, tmp_path), {"PATH": os.environ["PATH"]}, pub, 4321)
    return await run_bootstrap(ctx), pub


async def gone(*pids: int) -> None:
    """SIGKILL lands asynchronously: allow the kernel a moment."""
    with trio.fail_after(2):
        while any(is_alive(pid) for pid in pids):
            await trio.sleep(0.01)


def steps_of(pub: RecordingPublisher) -> list[ev.BootstrapStep]:
    return [e for e in pub.of("bootstrap.step") if isinstance(e, ev.BootstrapStep)]


async def test_success_writes_stamp_then_noop(tmp_path: Path) -> None:
    vm = vm_with([py("print('one')", name="first"), py("print('two')", name="second")])
    ok, pub = await bootstrap(vm, tmp_path)
    assert ok
    assert pub.names() == [
        "bootstrap.started",
        "message",
        "bootstrap.step",
        "message",
        "bootstrap.step",
        "bootstrap.completed",
    ]
    assert [getattr(e, "text", "") for e in pub.of("message")] == ["b/first: one", "b/second: two"]
    assert read_stamp(tmp_path / "bootstrap" / "b.stamp") == digest(vm)
    ok, pub = await bootstrap(vm, tmp_path)
    (done,) = pub.of("bootstrap.completed")
    assert isinstance(done, ev.BootstrapCompleted)
    assert (ok, done.status) == (True, "noop")
    assert pub.names() == ["bootstrap.started", "bootstrap.completed"]


async def test_always_runs_again(tmp_path: Path) -> None:
    vm = vm_with([py("pass")], trigger="always")
    await bootstrap(vm, tmp_path)
    _, pub = await bootstrap(vm, tmp_path)
    assert "bootstrap.step" in pub.names()


async def test_retries_then_failure_keeps_the_tail(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(30): print('line', i)\nsys.exit(4)"
    vm = vm_with([py(code, name="flaky", retries=2, retry_delay_ms=10)])
    ok, pub = await bootstrap(vm, tmp_path)
    assert not ok
    steps = steps_of(pub)
    assert [(s.status, s.attempt) for s in steps] == [("failed", 1), ("failed", 2), ("failed", 3)]
    detail = steps[-1].detail or ""
    assert detail.startswith("exited with status 4; last output:\nline 10\n")
    assert detail.endswith("line 29")
    (failed,) = pub.of("bootstrap.failed")
    assert isinstance(failed, ev.BootstrapFailed)
    assert failed.error == "step 'flaky' failed after 3 attempt(s): exited with status 4"
    assert not (tmp_path / "bootstrap" / "b.stamp").exists()


async def test_hanging_step_times_out_and_its_group_dies(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    code = (
        f"import subprocess, time\n"
        f"p = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        f"print('hanging', flush=True)\ntime.sleep(60)"
    )
    vm = vm_with([py(code, name="hang", timeout_ms=1500), py("print('never')", name="after")])
    with trio.fail_after(10):
        ok, pub = await bootstrap(vm, tmp_path)
    assert not ok
    (step,) = steps_of(pub)
    assert step.status == "failed"
    assert (step.detail or "").startswith("timed out after 1500 ms; last output:\nhanging")
    await gone(int(pidfile.read_text()))


async def test_missing_command_and_placeholder(tmp_path: Path) -> None:
    vm = vm_with([{"name": "nope", "command": [str(tmp_path / "missing")]}])
    ok, pub = await bootstrap(vm, tmp_path)
    assert not ok
    assert (steps_of(pub)[0].detail or "").startswith("cannot start")
    vm = vm_with([{"name": "ov", "command": ["echo", "{overlay}"]}])
    ok, pub = await bootstrap(vm, tmp_path)
    assert "no base_image" in (steps_of(pub)[0].detail or "")


async def test_output_is_bounded(tmp_path: Path) -> None:
    vm = vm_with([py("for i in range(1000): print('x' * 10, i)")])
    ok, pub = await bootstrap(vm, tmp_path)
    assert ok
    messages = [getattr(e, "text", "") for e in pub.of("message")]
    assert len(messages) == boot.MAX_LINES + 1
    assert messages[-1].startswith(f"b/s: {1000 - boot.MAX_LINES} more output lines not shown")


async def test_ssh_metadata_reaches_steps(tmp_path: Path) -> None:
    code = (
        "import os\nfor k in sorted(os.environ):\n"
        "    if k.startswith('FRAMEOS_'): print(k + '=' + os.environ[k])"
    )
    vm = vm_with([py(code)], base_image=str(tmp_path / "base.qcow2"))
    ok, pub = await bootstrap(vm, tmp_path)
    assert ok
    lines = {getattr(e, "text", "").removeprefix("b/s: ") for e in pub.of("message")}
    assert lines == {
        "FRAMEOS_SSH_USER=root",
        "FRAMEOS_SSH_HOST=10.0.0.2",
        "FRAMEOS_SSH_PORT=2222",
        "FRAMEOS_SSH_IDENTITY=/keys/id",
        "FRAMEOS_SSH_OPTIONS=-o BatchMode=yes",
        "FRAMEOS_VM=b",
        "FRAMEOS_VM_PID=4321",
        f"FRAMEOS_QMP_SOCKET={tmp_path}/vms/b.qmp",
        f"FRAMEOS_OVERLAY={tmp_path}/overlays/b.qcow2",
    }


async def test_cancelled_bootstrap_reports_failure(tmp_path: Path) -> None:
    vm = vm_with([py("import time; time.sleep(30)")])
    pub = RecordingPublisher()
    with trio.move_on_after(0.5):
        await bootstrap(vm, tmp_path, pub)
    (failed,) = pub.of("bootstrap.failed")
    assert "interrupted" in getattr(failed, "error", "")


# --- plans and stamps (no trio) ---------------------------------------------------------------


def test_digest_covers_inputs(tmp_path: Path) -> None:
    script = tmp_path / "provision.sh"
    script.write_text("echo 1\n")
    steps = BootstrapConfig.model_validate(
        {"steps": [{"name": "p", "command": ["sh", "provision.sh"]}]}
    )
    vm = VmConfig(name="c", command=["true"], cwd=tmp_path, bootstrap=steps)
    before = digest(vm)
    assert digest(vm) == before
    script.write_text("echo 2\n")
    assert digest(vm) != before


def test_decide_and_planned(tmp_path: Path) -> None:
    vm = vm_with([py("pass")])
    assert decide(vm, None)[:2] == (True, "no stamp of a successful run yet")
    assert decide(vm, "sha256:other")[0] is True
    assert decide(vm, digest(vm))[0] is False
    plan = planned(vm, tmp_path)
    assert (plan.action, plan.trigger, plan.steps, plan.ssh.port) == (
        "would_run",
        "auto",
        ["s"],
        2222,
    )
    bare = planned(VmConfig(name="d", command=["true"]), tmp_path)
    assert (bare.action, bare.steps, bare.reason) == (
        "would_skip",
        [],
        "no bootstrap steps configured",
    )


def test_check_plan_prints_plans_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = {
        "state_dir": str(state),
        "vms": [
            {
                "name": "a",
                "command": ["true"],
                "bootstrap": {"steps": [{"name": "x", "command": ["true"]}]},
            },
            {"name": "b", "command": ["true"]},
        ],
    }
    path = tmp_path / "frame.json"
    path.write_text(json.dumps(config))
    out = subprocess.run(
        [PY, "-m", "frameos", "check", "--plan", "--config", str(path), "--output", "json"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    events = [e for e in events if e["event"] != "message"]  # the start order (test_check*)
    assert [e["event"] for e in events] == [
        "runtime:check_ok",
        "bootstrap.planned",
        "bootstrap.planned",
    ]
    assert [(e["fields"]["vm"], e["fields"]["action"]) for e in events[1:]] == [
        ("a", "would_run"),
        ("b", "would_skip"),
    ]
    assert not state.exists()
