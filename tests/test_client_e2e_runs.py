"""End to end: every control command as a real process (`python -m frameos stop …`) against the
real `frameos run` supervising real child processes (pids checked in /proc): exit 0 when the
run succeeded, 1 when it failed, 2 when refused, and the token found from the same config as
`run` (the generated `state_dir/api-token`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from frameos import events as ev
from frameos.workers import procfs
from tests.conftest import Frameos, frameos_argv, running_frameos, write_config

pytestmark = pytest.mark.e2e
# prints a line a tenth of a second (for `logs`), exits at once on SIGTERM
TALKER = [
    sys.executable,
    "-c",
    "import itertools, sys, time\n"
    "for i in itertools.count():\n"
    "    print(f'tick {i}', flush=True); time.sleep(0.1)",
]
QUICK = {"cooperative_ms": 1000, "sigterm_ms": 1000, "sigkill_ms": 1000}


def vm(name: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": TALKER,
        "cooperative": {"method": "none"},
        "timeouts": QUICK,
        **more,
    }


def config(tmp_path: Path, *names: str) -> Path:
    return write_config(tmp_path, vms=[vm(n) for n in names])


async def client(fos: Frameos, path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = frameos_argv(*args, "--config", str(path), "--url", fos.url)
    with trio.fail_after(30):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def lines(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def pid_of(fos: Frameos, name: str, start: int = 0) -> int:
    launched = [
        e
        for e in fos.events[start:]
        if e["event"] == ev.VmLaunched.NAME and e["fields"]["vm"] == name
    ]
    return int(launched[-1]["fields"]["pid"])


async def test_stop_start_restart_clean_and_the_refusals(tmp_path: Path) -> None:
    path = config(tmp_path, "alpha", "beta")
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.VmLaunched, lambda e: e["fields"]["vm"] == "beta")
        first = pid_of(fos, "alpha")
        beta = pid_of(fos, "beta")

        stopped = await client(fos, path, "stop", "alpha", "--json")
        assert stopped.returncode == 0, stopped.stderr
        events = lines(stopped)
        run_id = events[0]["fields"]["run_id"]
        assert events[0]["event"] == ev.CommandAccepted.NAME
        assert events[-1]["event"] == ev.CommandCompleted.NAME
        assert {e["fields"]["run_id"] for e in events} == {run_id}
        assert ev.VmShutdownComplete.NAME in [e["event"] for e in events]
        assert not procfs.is_alive(first)
        assert procfs.is_alive(beta)  # the other VM untouched

        started = await client(fos, path, "start", "alpha")
        assert started.returncode == 0, started.stderr
        assert "completed in" in started.stdout.decode().splitlines()[-1]
        second = pid_of(fos, "alpha")
        assert second != first and procfs.is_alive(second)

        restarted = await client(fos, path, "restart", "alpha", "--json")
        assert restarted.returncode == 0, restarted.stderr
        third = pid_of(fos, "alpha")
        assert third != second and procfs.is_alive(third) and not procfs.is_alive(second)
        assert procfs.is_alive(beta)

        busy = await client(fos, path, "clean", "alpha", "--json")  # only a stopped VM
        assert busy.returncode == 1, busy.stderr
        assert lines(busy)[-1]["event"] == ev.CommandFailed.NAME
        assert procfs.is_alive(third)

        unknown = await client(fos, path, "start", "omega")
        assert unknown.returncode == 2
        assert unknown.stderr.decode() == (
            f"frameos: unknown VM 'omega': {fos.url} has these VMs: alpha, beta\n"
        )
        wrong = tmp_path / "wrong-token"
        wrong.write_text("not-the-token")
        refused = await client(fos, path, "stop", "alpha", "--token-file", str(wrong))
        assert refused.returncode == 2
        assert f"refused the token from {wrong} (401 invalid_token)" in refused.stderr.decode()
        assert procfs.is_alive(third)


async def test_bootstrap_runs_the_pipeline_again_and_prints_its_steps(tmp_path: Path) -> None:
    marker = tmp_path / "bootstrapped"
    step = {"name": "mark", "command": ["sh", "-c", f"echo x >> {marker}"]}
    path = write_config(tmp_path, vms=[vm("alpha", bootstrap={"steps": [step]})])
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.BootstrapCompleted)
        result = await client(fos, path, "bootstrap", "alpha", "--json")
        assert result.returncode == 0, result.stderr
        names = [e["event"] for e in lines(result)]
        assert names[0] == ev.CommandAccepted.NAME
        assert ev.BootstrapStep.NAME in names
        assert names[-1] == ev.CommandCompleted.NAME
        assert marker.read_text() == "x\nx\n"  # at launch, and again


async def test_a_stop_cancels_a_start_in_flight_which_exits_1(tmp_path: Path) -> None:
    slow = tmp_path / "slow"  # once it exists, the bootstrap step takes a minute
    step = {"name": "wait", "command": ["sh", "-c", f"[ -e {slow} ] && sleep 60; true"]}
    path = write_config(
        tmp_path, vms=[vm("alpha", bootstrap={"trigger": "always", "steps": [step]})]
    )
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.BootstrapCompleted)
        assert (await client(fos, path, "stop", "alpha")).returncode == 0
        slow.touch()
        mark = len(fos.events)
        argv = frameos_argv("start", "alpha", "--json", "--config", str(path), "--url", fos.url)
        starter = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        try:
            await fos.wait_for(ev.BootstrapStarted, start=mark)  # the start is in its bootstrap
            stopped = await client(fos, path, "stop", "alpha")
            assert stopped.returncode == 0, stopped.stderr
            with trio.fail_after(20):
                assert starter.stdout is not None
                out = b""
                while chunk := await starter.stdout.receive_some():
                    out += chunk
                assert await starter.wait() == 1
            ending = json.loads(out.splitlines()[-1])
            assert ending["event"] == ev.CommandCanceled.NAME
        finally:
            starter.kill()
            with trio.move_on_after(5, shield=True):
                await starter.wait()
        assert not procfs.is_alive(pid_of(fos, "alpha"))


async def test_reload_applies_the_edited_config(tmp_path: Path) -> None:
    path = config(tmp_path, "alpha")
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.VmLaunched)
        alpha = pid_of(fos, "alpha")
        data = json.loads(path.read_text())
        data["vms"].append(vm("gamma"))
        path.write_text(json.dumps(data))
        result = await client(fos, path, "reload", "--json")
        assert result.returncode == 0, result.stderr
        reload = next(e for e in lines(result) if e["event"] == ev.RuntimeReload.NAME)
        assert reload["fields"]["vms"]["added"] == ["gamma"]
        assert reload["fields"]["vms"]["unchanged"] == ["alpha"]
        assert procfs.is_alive(pid_of(fos, "gamma"))
        assert pid_of(fos, "alpha") == alpha


async def test_logs_prints_the_vms_output_and_follows_it(tmp_path: Path) -> None:
    path = config(tmp_path, "alpha")
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.VmLaunched)
        argv = frameos_argv(
            "logs", "alpha", "--lines", "2", "--follow", "--config", str(path), "--url", fos.url
        )
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            out = b""
            with trio.fail_after(20):
                while out.count(b"\n") < 6:  # the tail, then live lines
                    chunk = await proc.stdout.receive_some()
                    assert chunk, "logs exited"
                    out += chunk
            ticks = [int(line.split()[1]) for line in out.splitlines()[:6]]
            assert ticks == list(range(ticks[0], ticks[0] + 6))  # in order, none lost or twice
        finally:
            proc.kill()
            with trio.move_on_after(5, shield=True):
                await proc.wait()


async def test_on_a_non_loopback_bind_the_token_of_the_config_opens_it(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("e2e-secret-token\n")
    path = write_config(
        tmp_path, frame_host="0.0.0.0", auth={"token_file": str(secret)}, vms=[vm("alpha")]
    )
    async with running_frameos(tmp_path, "run", "--config", str(path)) as fos:
        await fos.wait_for(ev.VmLaunched)
        port = fos.url.rsplit(":", 1)[1].rstrip("/")
        url = f"http://127.0.0.1:{port}"
        argv = ("--config", str(path), "--url", url)
        with trio.fail_after(30):
            stopped = await trio.run_process(
                frameos_argv("stop", "alpha", *argv), capture_stdout=True, capture_stderr=True
            )
            assert stopped.returncode == 0, stopped.stderr
            assert not procfs.is_alive(pid_of(fos, "alpha"))
            events = await trio.run_process(
                frameos_argv("events", "--vm", "alpha", "--json", *argv),
                capture_stdout=True,
                capture_stderr=True,
            )
            assert events.returncode == 0, events.stderr
            assert ev.VmShutdownComplete.NAME in [e["event"] for e in lines(events)]
            anonymous = await trio.run_process(
                frameos_argv("events", "--url", url), capture_stderr=True, check=False
            )
        assert anonymous.returncode == 2
        assert "wants an API token (401 missing_authorization)" in anonymous.stderr.decode()
