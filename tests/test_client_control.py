"""`frameos start|stop|restart|bootstrap|clean VM` and `frameos reload` against a stand-in that
speaks SPEC §7.3 (tests/client_fake.py): the run is created with a fresh Idempotency-Key, its
events (and only its) are printed to its end, and the exit status says how it ended; every
refusal is one line on stderr and exit 2 (or 1 for a conflict), never a traceback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from frameos.client import control
from tests.client_fake import READ_TOKEN, TOKEN, FakeFrameos, cancels, fails, running_fake
from tests.conftest import frameos_argv, run_main


@pytest.fixture
def fake() -> Iterator[FakeFrameos]:
    with running_fake() as instance:
        yield instance


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def client(fake: FakeFrameos, token: Path | None, *more: str) -> tuple[str, ...]:
    return ("--url", fake.url, *(("--token-file", str(token)) if token else ()), *more)


@pytest.mark.parametrize("op", ["start", "stop", "restart", "bootstrap", "clean"])
def test_each_op_creates_a_run_and_follows_it_to_success(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path, op: str
) -> None:
    fake.call(fake.publish, ev.Message(text="before the run: not printed"))
    status, out, err = run_main(capsys, op, "alpha", *client(fake, token))
    assert (status, err) == (0, "")
    (run,) = fake.runs.values()
    assert (run["op"], run["target"], run["state"]) == (op, "alpha", "succeeded")
    lines = out.splitlines()
    assert len(lines) == 3
    assert f"run {run['run_id']}: {op} alpha accepted" in lines[0]
    assert "working on alpha" in lines[1]
    assert f"run {run['run_id']} completed in 3 ms" in lines[2]
    assert "before the run" not in out


def test_the_head_is_found_when_the_log_no_longer_starts_at_1(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    def rotate_away() -> None:
        for i in range(10):
            fake.publish(ev.Message(text=f"old {i}"))
        del fake.envelopes[:5]  # GET /v1/events?after=0 is now 410 stale_cursor

    fake.call(rotate_away)
    status, out, _ = run_main(capsys, "stop", "alpha", *client(fake, token), "--json")
    assert status == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [11, 12, 13]


def test_reload_targets_no_vm(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    status, _, err = run_main(capsys, "reload", *client(fake, token))
    assert (status, err) == (0, "")
    (run,) = fake.runs.values()
    assert (run["op"], run["target"]) == ("reload", None)


def test_the_run_is_created_with_a_fresh_uuid4_idempotency_key_and_the_token(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    assert run_main(capsys, "stop", "alpha", *client(fake, token))[0] == 0
    assert run_main(capsys, "stop", "alpha", *client(fake, token))[0] == 0
    posts = [headers for method, path, headers in fake.requests if method == "POST"]
    keys = [uuid.UUID(h["idempotency-key"]) for h in posts]
    assert [k.version for k in keys] == [4, 4]
    assert keys[0] != keys[1]
    assert all(h["authorization"] == f"Bearer {TOKEN}" for h in posts)


def test_json_prints_the_runs_envelopes_only(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    fake.call(fake.publish, ev.Message(text="another run's", run_id="other"))
    status, out, _ = run_main(capsys, "stop", "beta", *client(fake, token), "--json")
    assert status == 0
    envelopes = [json.loads(line) for line in out.splitlines()]
    (run,) = fake.runs.values()
    assert [e["event"] for e in envelopes] == [
        ev.CommandAccepted.NAME,
        ev.Message.NAME,
        ev.CommandCompleted.NAME,
    ]
    assert {e["fields"]["run_id"] for e in envelopes} == {run["run_id"]}
    # the very bytes the instance serves
    assert out.encode() == b"".join(e.line for e in fake.envelopes[-3:])


@pytest.mark.parametrize(("script", "ending"), [(fails, "failed: "), (cancels, "canceled: ")])
def test_a_failed_or_canceled_run_exits_1_and_says_why(
    capsys: pytest.CaptureFixture[str],
    fake: FakeFrameos,
    token: Path,
    script: object,
    ending: str,
) -> None:
    fake.scripts[("start", "gamma")] = script  # type: ignore[assignment]
    status, out, err = run_main(capsys, "start", "gamma", *client(fake, token))
    assert (status, err) == (1, "")
    assert ending in out.splitlines()[-1]


def test_a_websocket_that_drops_mid_run_is_resumed_without_loss_or_repeat(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    fake.ws_drop_after = 1  # every connection closes after one frame
    fake.hold_runs = fake.release_per_connection = True  # and the run goes on meanwhile
    status, out, _ = run_main(capsys, "stop", "alpha", *client(fake, token), "--json")
    assert status == 0
    seqs = [json.loads(line)["seq"] for line in out.splitlines()]
    assert seqs == [e.seq for e in fake.envelopes[-3:]]
    assert fake.ws_connections >= 2  # it reconnected with ?since=


def test_a_run_that_ends_while_the_stream_says_nothing_is_found_by_asking_for_it(
    capsys: pytest.CaptureFixture[str],
    fake: FakeFrameos,
    token: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control, "IDLE_S", 0.05)
    fake.ws_silent = True
    status, out, _ = run_main(capsys, "restart", "beta", *client(fake, token), "--json")
    assert status == 0
    assert [json.loads(line)["event"] for line in out.splitlines()] == [
        ev.CommandAccepted.NAME,
        ev.Message.NAME,
        ev.CommandCompleted.NAME,
    ]
    assert ("GET", f"/v1/runs/{next(iter(fake.runs))}") in {(m, p) for m, p, _ in fake.requests}


def test_a_refused_websocket_falls_back_to_polling(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    fake.ws_reject = 503
    status, out, err = run_main(capsys, "stop", "alpha", *client(fake, token), "--json")
    assert status == 0
    assert err == "frameos: /ws/events refused (HTTP 503): polling /v1/events instead\n"
    assert out.encode() == b"".join(e.line for e in fake.envelopes[-3:])


async def test_ctrl_c_leaves_the_run_going_and_says_so(fake: FakeFrameos, token: Path) -> None:
    fake.hold_runs = True
    argv = frameos_argv("stop", "alpha", *client(fake, token))
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        accepted = b""
        while b"accepted" not in accepted:  # the run is created and being followed
            chunk = await proc.stdout.receive_some()
            assert chunk, "the client exited"
            accepted += chunk
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 130
        err = (await proc.stderr.receive_some()).decode()
    (run,) = fake.runs.values()
    assert run["state"] == "running"
    assert err == (
        f"frameos: run {run['run_id']} goes on in frameos; follow it with `frameos events "
        "--follow`, or stop the VM to end it\n"
    )


# --- refusals: one line, what and what to do ------------------------------------------------


def test_no_token_is_401_missing_and_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos
) -> None:
    status, out, err = run_main(capsys, "stop", "alpha", *client(fake, None))
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert "wants an API token (401 missing_authorization)" in err
    assert "--token-file (not given)" in err
    assert "Pass --token-file PATH" in err


def test_a_wrong_token_is_401_invalid_and_names_the_file(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    status, _, err = run_main(capsys, "stop", "alpha", *client(fake, wrong))
    assert status == 2
    assert f"refused the token from {wrong} (401 invalid_token)" in err


def test_a_read_only_token_is_403_naming_the_scope(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, tmp_path: Path
) -> None:
    reader = tmp_path / "reader"
    reader.write_text(READ_TOKEN)
    status, _, err = run_main(capsys, "restart", "alpha", *client(fake, reader))
    assert status == 2
    assert "lacks the 'control' scope" in err
    assert "403 insufficient_scope" in err


def test_an_unknown_vm_is_404_and_lists_the_known_ones(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    status, _, err = run_main(capsys, "start", "omega", *client(fake, token))
    assert status == 2
    assert err == f"frameos: unknown VM 'omega': {fake.url} has these VMs: alpha, beta, gamma\n"


def test_a_conflict_names_the_run_in_the_way_and_exits_1(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    fake.busy["alpha"] = {"run_id": "r-1", "op": "bootstrap", "target": "alpha", "state": "running"}
    status, _, err = run_main(capsys, "restart", "alpha", *client(fake, token))
    assert status == 1
    assert "run r-1 (bootstrap alpha, running) is in the way" in err


def test_an_instance_that_is_stopping_is_exit_2(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    fake.not_accepting = True
    status, out, err = run_main(capsys, "start", "alpha", *client(fake, token))
    assert (status, out) == (2, "")
    assert err == (
        f"frameos: {fake.url} could not take POST /v1/runs (HTTP 503 not_accepting): frameos is "
        "stopping: no new runs\n"
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port held bound but not listening: a connect is refused, and no one else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_nothing_listening_is_exit_2_asking_whether_frameos_runs(
    capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    status, out, err = run_main(capsys, "stop", "alpha", "--url", url)
    assert (status, out) == (2, "")
    assert "cannot reach frameos at" in err
    assert "(connection refused): is frameos running? start it with `frameos run" in err
    assert err.count("\n") == 1


def test_a_server_that_is_not_frameos_is_said_so(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: Path
) -> None:
    status, _, err = run_main(
        capsys, "stop", "alpha", "--url", fake.url + "/nowhere", "--token-file", str(token)
    )
    assert status == 2
    assert "is that address a frameos instance?" in err or "no /v1/" in err
