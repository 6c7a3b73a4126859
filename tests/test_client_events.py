"""`frameos events`: from the log file `run` writes (no server needed: EventLog.read_after pages,
across rotations), or from a running instance with --url (`/v1/events` pages, then
`/ws/events?since=` for --follow); --since, --vm and --json filter and shape the output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from frameos.client import history
from frameos.client.discover import discover
from frameos.envelope import Envelope, encode
from frameos.eventlog import EventLog
from tests.client_fake import READ_TOKEN, FakeFrameos, running_fake
from tests.conftest import run_main


def sample(count: int) -> list[ev.Event]:
    """alpha and beta events, alternating, with a debug heartbeat now and then."""
    out: list[ev.Event] = []
    for i in range(count):
        vm = "alpha" if i % 2 == 0 else "beta"
        out.append(ev.VmLaunched(vm=vm, pid=1000 + i, attempt=1))
        if i % 5 == 4:
            out.append(ev.RuntimeHeartbeat(uptime_seconds=float(i), server="x", loop_lag_ms=0.1))
    return out


def write_log(path: Path, events: list[ev.Event], *, max_bytes: int | None = None) -> list[bytes]:
    log = EventLog(path, max_bytes=max_bytes, keep=50)
    log.open()
    lines = []
    for seq, event in enumerate(events, 1):
        line = encode(event, seq, 1763763000.0 + seq).line
        log.append(line)
        lines.append(line)
    log.close()
    return lines


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, list[bytes]]:
    state = tmp_path / "state"
    path = tmp_path / "frame.json"
    path.write_text(json.dumps({"state_dir": str(state), "event_log": {"keep": 50}}))
    return path, write_log(state / "events.jsonl", sample(40), max_bytes=2000)


def test_the_log_file_of_the_config_is_read_across_rotations(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[bytes]]
) -> None:
    config, lines = logged
    assert len(list(config.parent.glob("state/events.jsonl.*"))) > 2  # rotated
    status, out, err = run_main(capsys, "events", "--config", str(config), "--json")
    assert (status, err) == (0, "")
    assert out.encode() == b"".join(lines)


def test_since_and_vm_filter(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[bytes]]
) -> None:
    config, lines = logged
    status, out, _ = run_main(
        capsys, "events", "--config", str(config), "--json", "--since", "30", "--vm", "beta"
    )
    assert status == 0
    got = [json.loads(line) for line in out.splitlines()]
    expected = [json.loads(line) for line in lines[30:]]
    assert got == [e for e in expected if e["fields"].get("vm") == "beta"]
    assert got


def test_human_lines_leave_out_debug_events(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[bytes]]
) -> None:
    config, lines = logged
    status, out, _ = run_main(capsys, "events", "--config", str(config), "--since", "45")
    assert status == 0
    shown = [json.loads(line) for line in lines[45:] if b'"severity":"debug"' not in line]
    assert len(out.splitlines()) == len(shown)
    assert "alpha: launched (pid" in out or "beta: launched (pid" in out
    assert ev.RuntimeHeartbeat.NAME not in out


def test_event_log_flag_reads_a_file_without_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lines = write_log(tmp_path / "x.jsonl", sample(3))
    status, out, _ = run_main(capsys, "events", "--event-log", "x.jsonl", "--json")
    assert (status, out.encode()) == (0, b"".join(lines))


def test_a_missing_log_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run_main(capsys, "events", "--event-log", str(tmp_path / "none.jsonl"))
    assert (status, out) == (2, "")
    assert err.startswith(f"frameos: no event log at {tmp_path / 'none.jsonl'}: ")


def test_a_since_older_than_the_log_keeps_says_so_and_reads_what_is_kept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "e.jsonl"
    lines = write_log(path, sample(40), max_bytes=2000)
    rotated = max(int(p.suffix[1:]) for p in path.parent.glob("e.jsonl.*"))
    (path.parent / f"e.jsonl.{rotated}").unlink()  # as if `keep` had dropped the oldest file
    oldest = EventLog(path, keep=50).oldest_seq()
    assert oldest is not None and oldest > 1
    status, out, err = run_main(capsys, "events", "--event-log", str(path), "--json")
    assert status == 0
    assert f"events after 0 are no longer in the log; from {oldest} on" in err
    assert out.encode() == b"".join(lines[oldest - 1 :])


async def test_follow_on_the_file_prints_what_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    write_log(path, sample(2))
    seen: list[Envelope] = []
    got_third = trio.Event()

    def show(envelope: Envelope) -> None:
        seen.append(envelope)
        if envelope.seq == 3:
            got_third.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: history.from_file(path, 5, 0, history.matcher(None, show), follow=True)
            )
            log = EventLog(path, keep=5)
            log.open()
            log.append(encode(ev.Message(text="late"), 3, time.time()).line)
            log.close()
            await got_third.wait()
            nursery.cancel_scope.cancel()
    assert [e.seq for e in seen] == [1, 2, 3]


# --- from a running instance ------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeFrameos]:
    with running_fake() as instance:
        for event in sample(1500):
            instance.publish(event)
        yield instance


def test_url_reads_every_page_of_v1_events(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos
) -> None:
    status, out, _ = run_main(capsys, "events", "--url", fake.url, "--json", "--since", "7")
    assert status == 0
    assert out.encode() == b"".join(e.line for e in fake.envelopes[7:])
    assert len(fake.envelopes) > 1000  # more than one page


async def test_url_follow_goes_live_over_the_websocket_after_the_pages(
    fake: FakeFrameos,
) -> None:
    target = discover(config=None, url=fake.url, token_file=None, env={})
    seen: list[Envelope] = []
    last = trio.Event()
    head = fake.head

    def show(envelope: Envelope) -> None:
        seen.append(envelope)
        if envelope.seq == head + 2:
            last.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: history.from_instance(
                    target, head - 3, history.matcher(None, show), follow=True
                )
            )
            # at once: what comes before the websocket is up is in its ?since= replay
            await trio.to_thread.run_sync(fake.call, fake.publish, ev.Message(text="live 1"))
            await trio.to_thread.run_sync(fake.call, fake.publish, ev.Message(text="live 2"))
            await last.wait()
            nursery.cancel_scope.cancel()
    assert [e.seq for e in seen] == list(range(head - 2, head + 3))


def test_reading_the_file_loads_no_http_client(tmp_path: Path) -> None:
    write_log(tmp_path / "e.jsonl", sample(2))
    code = (
        "import sys; from frameos.cli import main; "
        f"status = main(['events', '--event-log', {str(tmp_path / 'e.jsonl')!r}, '--json']); "
        "print(sorted(m for m in ('httpx', 'anyio', 'trio_websocket') if m in sys.modules)); "
        "sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


async def test_url_follow_from_a_since_past_the_head_starts_at_the_head(
    fake: FakeFrameos, capsys: pytest.CaptureFixture[str]
) -> None:
    target = discover(config=None, url=fake.url, token_file=None, env={})
    seen: list[Envelope] = []
    got = trio.Event()
    since = fake.head + 2

    def show(envelope: Envelope) -> None:
        seen.append(envelope)
        got.set()

    fake.ws_since_ahead = True  # refuse a since ahead of the head, as /ws/events does
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: history.from_instance(
                    target, since, history.matcher(None, show), follow=True
                )
            )
            assert await trio.to_thread.run_sync(fake.ws_admitted.wait, 10)
            for i in range(3):
                await trio.to_thread.run_sync(fake.call, fake.publish, ev.Message(text=f"{i}"))
            await got.wait()
            nursery.cancel_scope.cancel()
    assert [e.seq for e in seen] == [since + 1]
    assert capsys.readouterr().err == ""  # over the websocket, not the polling fallback


async def test_url_follow_sends_the_token_to_both_reads_when_they_are_closed(
    fake: FakeFrameos, tmp_path: Path
) -> None:
    fake.reads_closed = True  # as on a non-loopback bind
    token = tmp_path / "token"
    token.write_text(READ_TOKEN)
    target = discover(config=None, url=fake.url, token_file=str(token), env={})
    seen: list[Envelope] = []
    live = trio.Event()
    head = fake.head

    def show(envelope: Envelope) -> None:
        seen.append(envelope)
        if envelope.seq > head:
            live.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: history.from_instance(
                    target, head - 1, history.matcher(None, show), follow=True
                )
            )
            assert await trio.to_thread.run_sync(fake.ws_admitted.wait, 10)  # token accepted
            await trio.to_thread.run_sync(fake.call, fake.publish, ev.Message(text="live"))
            await live.wait()
            nursery.cancel_scope.cancel()
    assert [e.seq for e in seen] == [head, head + 1]


def test_a_closed_read_with_a_wrong_token_is_exit_2(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, tmp_path: Path
) -> None:
    fake.reads_closed = True
    token = tmp_path / "token"
    token.write_text("wrong")
    status, out, err = run_main(
        capsys, "events", "--url", fake.url, "--token-file", str(token), "--follow"
    )
    assert (status, out) == (2, "")
    assert f"refused the token from {token} (401 invalid_token)" in err
