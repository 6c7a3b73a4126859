"""Forwarding to NATS JetStream (SPEC §12), against a real nats-server on a free loopback port.

Each test starts its own `nats-server -js` with a temporary store; the broker's contents are
read back with nats-py (and with `frameos events --from`), and compared with the event logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
import trio

from frameos import events as ev
from frameos.forward.follow import held
from tests.conftest import (
    Frameos,
    frameos_argv,
    require_tools,
    running_frameos,
    until,
    write_config,
)
from tests.test_e2e_run import http_get

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A real `nats-server -js`; `stop` and `start` again keep its port and store."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.store = tmp_path / "nats-store"
        self.log = tmp_path / "nats.log"
        self.proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        argv = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        argv += ["-sd", str(self.store), "-l", str(self.log)]
        self.proc = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL)
        with trio.fail_after(10):  # ready: it accepts connections (polled, with a deadline)
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    assert self.proc.returncode is None, self.log.read_text()
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await self.proc.wait()


@asynccontextmanager
async def nats_server(
    tmp_path: Path, server: NatsServer | None = None
) -> AsyncIterator[NatsServer]:
    require_tools("nats-server")
    server = server or NatsServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.returncode is None:
            server.proc.kill()
            with trio.move_on_after(5, shield=True):
                await server.proc.wait()


def read_subject(url: str, subject: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Every message on `subject` in stream order: (headers, envelope)."""

    async def read() -> list[tuple[dict[str, str], dict[str, Any]]]:
        nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            pending = await held(js, subject)
            sub = await js.subscribe(subject, ordered_consumer=True)
            out = []
            while pending:
                msg = await sub.next_msg(timeout=5)
                pending = msg.metadata.num_pending
                out.append((dict(msg.headers or {}), json.loads(msg.data)))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def log_seqs(state: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in (state / "events.jsonl").read_bytes().splitlines()]


def host_config(tmp_path: Path, url: str, host: str, **more: Any) -> Path:
    home = tmp_path / host
    home.mkdir(exist_ok=True)
    return write_config(
        home,
        heartbeat_interval=0.05,
        forward={"nats": {"url": url}, "host": host},
        **more,
    )


async def metric(
    instance: Frameos, name: str, ok: Callable[[float], bool], timeout: float = 20
) -> None:
    """Poll /metrics until the value of `name` is `ok`, with a deadline."""
    body = b""
    with trio.move_on_after(timeout):
        while True:
            status, body = await http_get(instance.url + "/metrics")
            assert status == 200
            values = [
                float(line.split()[1])
                for line in body.splitlines()
                if line.split()[:1] == [name.encode()]
            ]
            if values and ok(values[0]):
                return
            await trio.sleep(0.02)
    raise AssertionError(f"{name} never as expected in {timeout} s:\n{body.decode()}")


def senders() -> dict[int, int]:
    """The sender processes on this machine: pid → parent pid (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"frameos.forward.sender" in cmdline:
            found[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return found


def sender_of(instance: Frameos) -> int:
    mine = [pid for pid, parent in senders().items() if parent == instance.proc.pid]
    assert len(mine) == 1, senders()
    return mine[0]


def message(instance: Frameos, fragment: str, start: int = 0) -> Any:
    return instance.wait_for(ev.Message, lambda e: fragment in e["fields"]["text"], start=start)


async def test_every_event_reaches_the_subject_in_order_with_its_msg_id(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as broker:
        config = host_config(tmp_path, broker.url, "h1")
        async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
            await fos.wait_for(ev.RuntimeHeartbeat)
            await metric(fos, "frameos_forward_connected", lambda v: v == 1)  # the sender is up
            await metric(fos, "frameos_forward_events_total", lambda v: v >= 3)
            await metric(fos, "frameos_forward_acked_seq", lambda v: v >= 3)
            pid = sender_of(fos)
            assert os.getpgid(pid) == pid  # its own group: a terminal's ^C reaches frameos only
            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
            assert pid not in senders()  # it drained and exited before frameos did
        held = await trio.to_thread.run_sync(read_subject, broker.url, "frameos.h1.events")
        human = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                frameos_argv("events", "--from", broker.url),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines and all(line.startswith("h1 ") for line in lines), lines
    assert any("runtime:stop" in line for line in lines), lines
    seqs = log_seqs(tmp_path / "h1" / "state")
    assert [envelope["seq"] for _, envelope in held] == seqs
    assert seqs[-1] > 3 and ev.RuntimeStop.NAME in [envelope["event"] for _, envelope in held]
    assert [headers["Nats-Msg-Id"] for headers, _ in held] == [f"h1:{seq}" for seq in seqs]
    cursor = tmp_path / "h1" / "state" / "forward" / "nats-h1.cursor"
    assert int(cursor.read_text()) == seqs[-1]


async def test_a_broker_down_at_start_is_reported_once_and_caught_up(tmp_path: Path) -> None:
    require_tools("nats-server")
    broker = NatsServer(tmp_path)  # not started yet
    config = host_config(tmp_path, broker.url, "h1")
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        await message(fos, "unreachable")
        beats = len(fos.events)
        await fos.wait_for(ev.RuntimeHeartbeat, start=beats)
        async with nats_server(tmp_path, broker):  # the server comes up now
            await message(fos, "reachable again")
            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
            held = await trio.to_thread.run_sync(read_subject, broker.url, "frameos.h1.events")
    texts = [e["fields"]["text"] for e in fos.events if e["event"] == ev.Message.NAME]
    assert sum("unreachable" in t for t in texts) == 1, texts
    assert [envelope["seq"] for _, envelope in held] == log_seqs(tmp_path / "h1" / "state")


def test_a_bad_forward_config_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, forward={"nats": {"url": "http://x"}})
    done = subprocess.run(
        frameos_argv("check", "--config", str(config)), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "forward.nats.url" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def events_from(url: str, *more: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        frameos_argv("events", "--from", url, "--json", *more),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_two_hosts_a_broker_restart_and_a_sigkill_leave_every_seq_once(
    tmp_path: Path,
) -> None:
    async with nats_server(tmp_path) as broker:
        configs = {h: str(host_config(tmp_path, broker.url, h)) for h in ("h1", "h2")}
        async with (
            running_frameos(tmp_path / "h1", "run", "--config", configs["h1"]) as one,
            running_frameos(tmp_path / "h2", "run", "--config", configs["h2"]) as two,
        ):
            for fos in (one, two):
                await fos.wait_for(ev.RuntimeHeartbeat)
            await broker.stop()  # while heartbeats flow
            for fos in (one, two):
                await message(fos, "unreachable")
                await fos.wait_for(ev.RuntimeHeartbeat, start=len(fos.events))
            await broker.start()
            for fos in (one, two):
                await message(fos, "reachable again")
            orphan = sender_of(one)
            one.send(signal.SIGKILL)  # mid-forward: a heartbeat every 50 ms
            assert await one.wait_exit() == -signal.SIGKILL
            await until(lambda: orphan not in senders())  # its stdin ended: it left at once
            async with running_frameos(tmp_path / "h1", "run", "--config", configs["h1"]) as again:
                await again.wait_for(ev.RuntimeHeartbeat)
                for fos in (again, two):
                    fos.send(signal.SIGTERM)
                    assert await fos.wait_exit() == 0
        for host in ("h1", "h2"):
            held = await trio.to_thread.run_sync(read_subject, broker.url, f"frameos.{host}.events")
            seqs = log_seqs(tmp_path / host / "state")
            assert [envelope["seq"] for _, envelope in held] == seqs, host
            assert [headers["Nats-Msg-Id"] for headers, _ in held] == [f"{host}:{s}" for s in seqs]
        shown = await trio.to_thread.run_sync(events_from, broker.url)
        for host in ("h1", "h2"):
            mine = [e["seq"] for e in shown if e["host"] == host]
            assert mine == log_seqs(tmp_path / host / "state"), host
        only = await trio.to_thread.run_sync(
            events_from, broker.url, "--host", "h2", "--since", "3"
        )
        assert {e["host"] for e in only} == {"h2"} and min(e["seq"] for e in only) == 4


async def test_a_killed_sender_is_restarted_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as broker:
        config = host_config(tmp_path, broker.url, "h1")
        async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
            await metric(fos, "frameos_forward_acked_seq", lambda v: v >= 3)
            first = sender_of(fos)
            os.kill(first, signal.SIGKILL)  # mid-forward: a heartbeat every 50 ms
            await message(fos, "restarting it")
            await message(fos, "runs again")
            assert sender_of(fos) != first
            beats = len(fos.events)
            await fos.wait_for(ev.RuntimeHeartbeat, start=beats)
            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
        held = await trio.to_thread.run_sync(read_subject, broker.url, "frameos.h1.events")
    seqs = log_seqs(tmp_path / "h1" / "state")
    assert [envelope["seq"] for _, envelope in held] == seqs
    texts = [e["fields"]["text"] for e in fos.events if e["event"] == ev.Message.NAME]
    assert sum("restarting it" in t for t in texts) == 1, texts
