"""End to end: the real `frameos` process, real sockets, real signals, real output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from frameos import events as ev
from tests.conftest import frameos_argv, running_frameos, stubborn_vm, write_config

pytestmark = pytest.mark.e2e
PYTHONPATH = os.environ.get("PYTHONPATH", "")


async def http_get(url: str) -> tuple[int, bytes]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, port = host_port.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"GET /{path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
        )
        data = b""
        # read by content-length: hypercorn 0.18 does not close after `connection: close`
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0]:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_serves_health_metrics_and_a_live_event_stream(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        status, body = await http_get(fos.url + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = await http_get(fos.url + "/readyz")
        assert status == 200
        status, body = await http_get(fos.url + "/metrics")
        assert status == 200 and b"frameos_events_published_total" in body
        ws_url = fos.url.replace("http://", "ws://") + "/ws/events"
        async with open_websocket_url(ws_url) as ws:
            beats = []
            while len(beats) < 3:
                event = json.loads(await ws.get_message())
                if event["event"] == ev.RuntimeHeartbeat.NAME:
                    beats.append(event["seq"])
        assert beats == sorted(beats) and len(set(beats)) == 3
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    names = fos.names()
    assert names[:2] == [ev.RuntimeStart.NAME, ev.RuntimeReady.NAME]
    assert names[-3:] == [ev.RuntimeStopping.NAME, ev.RuntimeStop.NAME, ev.Summary.NAME]
    stopping = fos.events[-3]["fields"]
    assert stopping == {"reason": "received SIGTERM", "signal": "SIGTERM"}
    assert fos.events[-1]["fields"]["exit_status"] == 0


async def test_stdout_and_event_log_hold_the_same_bytes(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        await fos.wait_for(ev.RuntimeHeartbeat)
        fos.send(signal.SIGINT)
        assert await fos.wait_exit() == 0
    log = (tmp_path / "state" / "events.jsonl").read_bytes()
    assert fos.stdout == log
    seqs = [json.loads(line)["seq"] for line in log.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_seq_continues_across_restarts_and_a_torn_tail_is_recovered(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    log = tmp_path / "state" / "events.jsonl"
    async with running_frameos(tmp_path, "run", "--config", str(config)) as first:
        first.send(signal.SIGTERM)
        assert await first.wait_exit() == 0
    last = first.events[-1]["seq"]
    with log.open("ab") as handle:
        handle.write(b'{"v":1,"seq":99999,"timest')  # a write cut short by a crash
    async with running_frameos(tmp_path, "run", "--config", str(config)) as second:
        second.send(signal.SIGTERM)
        assert await second.wait_exit() == 0
    torn = second.events[0]
    assert torn["event"] == ev.Message.NAME and torn["severity"] == "warn"
    assert "torn tail of 26 bytes truncated" in torn["fields"]["text"]
    assert torn["seq"] == last + 1
    seqs = [json.loads(line)["seq"] for line in log.read_bytes().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate, nothing renumbered


async def test_sighup_reports_changes_and_keeps_the_old_config_on_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "metrics_interval": 30, "frame_port": 1}))
        fos.send(signal.SIGHUP)
        reload = await fos.wait_for(ev.RuntimeReload)
        assert reload["fields"]["changed"] == ["frame_port", "metrics_interval"]
        assert reload["fields"]["error"] is None
        later = await fos.wait_for(ev.Message, lambda e: "after a restart" in e["fields"]["text"])
        assert "frame_port" in later["fields"]["text"]
        config.write_text('{"metrics_interval": "soon"}')
        index = len(fos.events)
        fos.send(signal.SIGHUP)
        failed = await fos.wait_for(ev.RuntimeReload, start=index)
        assert failed["severity"] == "error"
        assert "metrics_interval: expected a number" in failed["fields"]["error"]
        assert "the running config stays" in failed["fields"]["error"]
        status, _ = await http_get(fos.url + "/healthz")  # still serving on the old port
        assert status == 200
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0


async def test_second_sigint_forces_the_stop(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    config = write_config(
        tmp_path, shutdown_timeout_s=30, vms=[stubborn_vm(armed, sigterm_ms=20000)]
    )
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        launched = await fos.wait_for(ev.VmLaunched)
        with trio.fail_after(10):
            while not armed.exists():  # the child ignores SIGTERM from here on
                await trio.sleep(0.01)
        fos.send(signal.SIGINT)
        await fos.wait_for(ev.VmShutdownEscalated)
        fos.send(signal.SIGINT)
        assert await fos.wait_exit() == 1
    assert any("forcing the stop" in e["fields"].get("text", "") for e in fos.events), fos.names()
    assert fos.events[-1]["event"] == ev.Summary.NAME
    assert fos.events[-1]["fields"]["exit_status"] == 1
    assert not Path(f"/proc/{launched['fields']['pid']}").exists()


ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # frameos runs from the checkout (it is not installed): keep it importable from any cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), PYTHONPATH]))}
    return subprocess.run(
        frameos_argv(*args),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        cwd=cwd,
        env=env,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1 column 2"),
        ('{"frame_port": "x"}', 'frame_port: expected an integer, found "x"'),
        ('{"frame_port": 99999}', "frame_port: expected a value ≤ 65535, found 99999"),
        ('{"assets_path": "relative"}', "assets_path: expected an absolute path"),
        ('{"framePrt": 1}', "framePrt: unknown key; did you mean 'frame_port'?"),
    ],
)
def test_bad_config_refuses_to_start_with_a_clear_message(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "frame.json"
    path.write_text(content)
    for command in ("run", "check"):
        result = run_cli(command, "--config", str(path), "--output", "json")
        assert result.returncode == 1, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    check = run_cli("check", "--config", str(path), "--output", "json")
    event = json.loads(check.stdout)
    assert event["event"] == ev.RuntimeCheckFailed.NAME and message in event["fields"]["error"]


def test_missing_config_points_at_the_demo(tmp_path: Path) -> None:
    result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "no config found" in result.stderr and "frameos run --demo" in result.stderr
    result = run_cli("run", "--config", str(tmp_path / "nope.json"))
    assert result.returncode == 1 and "nope.json: file not found" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--output", "xml"),
        ("bogus",),
        ("run", "--no-such-flag"),
        ("check", "--config"),
        ("parity", "--probe-timeout", "soon"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, frame_port=port)
        result = run_cli("run", "--config", str(config), "--output", "json")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "choose another frame_port" in result.stderr and "Traceback" not in result.stderr


def test_check_ok_and_human_output(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("check", "--config", str(config), "--output", "json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["event"] == ev.RuntimeCheckOk.NAME
    human = run_cli("check", "--config", str(config), "--output", "human")
    assert human.returncode == 0 and ev.RuntimeCheckOk.NAME in human.stdout
    assert "is valid (0 VMs" in " ".join(human.stdout.split())


def test_bad_manifests_are_reported_together(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    scenes = tmp_path / "scenes.json"
    scenes.write_text(
        '{"scenes": [{"id": "a", "name": "A", "version": "1.0", '
        '"source": {"type": "remote", "remote_url": "ftp://x"}}]}'
    )
    apps = tmp_path / "apps.json"
    apps.write_text("[{]")
    result = run_cli(
        "check",
        "--config",
        str(config),
        "--scenes",
        str(scenes),
        "--apps",
        str(apps),
        "--output",
        "json",
    )
    assert result.returncode == 1
    event = json.loads(result.stdout)
    assert event["event"] == ev.RuntimeCheckFailed.NAME
    problems = " | ".join(event["fields"]["problems"])
    assert "apps.json: invalid JSON at line 1 column 3" in problems
    assert "scenes.json: scenes[0].version: expected a semver-like version" in problems
    assert "scenes[0].source.remote.remote_url: expected an http:// or https:// URL" in problems
    run = run_cli("run", "--config", str(config), "--scenes", str(scenes))
    assert run.returncode == 1 and "scenes[0].version" in run.stderr
    assert "Traceback" not in run.stderr + result.stderr


def test_unusable_event_log_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "not-a-dir").write_text("x")
    result = run_cli(
        "run", "--config", str(config), "--event-log", str(tmp_path / "not-a-dir" / "events.jsonl")
    )
    assert result.returncode == 1
    assert "cannot open" in result.stderr and "--event-log" in result.stderr
    assert "Traceback" not in result.stderr
