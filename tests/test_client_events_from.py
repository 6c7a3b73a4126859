"""`frameos events --from` against what a user may point it at (FINDINGS D5), each answered with
one line that says what is there: a NATS server without JetStream, a port that is not NATS, a
--host the stream holds nothing of. Real nats-server processes on free loopback ports."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from frameos.client.discover import ClientError
from frameos.forward.follow import follow
from tests.conftest import require_tools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server(tmp_path: Path, *js: str) -> Iterator[str]:
    require_tools("nats-server")
    port = free_port()
    argv = ["nats-server", *js, "-a", "127.0.0.1", "-p", str(port), "-l", str(tmp_path / "log")]
    proc = subprocess.Popen([*argv, "-sd", str(tmp_path / "store")], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # ready: it accepts connections (polled, with a deadline)
            assert proc.poll() is None, (tmp_path / "log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def plain_nats(tmp_path: Path) -> Iterator[str]:
    yield from nats_server(tmp_path)


@pytest.fixture
def jetstream_nats(tmp_path: Path) -> Iterator[str]:
    yield from nats_server(tmp_path, "-js")


def events_from(url: str, host: str | None = None, *, follow_: bool = False) -> int:
    return asyncio.run(follow(url, lambda *_: None, host=host, since=0, follow=follow_))


def test_a_server_without_jetstream_is_told_to_enable_it(plain_nats: str) -> None:
    with pytest.raises(ClientError) as info:
        events_from(plain_nats)
    assert str(info.value) == (
        f"{plain_nats}: JetStream is not enabled on that NATS server; start it with "
        "`nats-server -js` (forward.nats needs a stream to write to)"
    )


def test_a_port_that_is_not_nats_is_said_so() -> None:
    # in a child: nats-py leaves the timed-out connection's transport open (the GC would warn
    # at a random later test here); the connect wait is cut from 3 s to 0.3 s
    code = (
        "import sys; from frameos.forward import jetstream; jetstream.CONNECT_S = 0.3; "
        "from frameos.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    with socket.socket() as quiet:  # accepts, never speaks (an HTTP server waits so too)
        quiet.bind(("127.0.0.1", 0))
        quiet.listen()
        url = f"nats://127.0.0.1:{quiet.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-c", code, "events", "--from", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert (done.returncode, done.stdout) == (2, "")
    assert f"{url} answered, but not as a NATS server (no INFO within" in done.stderr
    assert "TimeoutError" not in done.stderr and done.stderr.count("\n") == 1


def test_nothing_listening_is_still_cannot_reach() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError, match=f"cannot reach the NATS server {url}"):
        events_from(url)


def test_a_host_the_stream_does_not_hold_is_an_error_naming_the_hosts_it_holds(
    jetstream_nats: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def one_host() -> None:
        nc = await nats.connect(jetstream_nats, connect_timeout=3, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(name="frameos", subjects=["frameos.*.events"])
            await js.publish("frameos.h1.events", b"{}")
        finally:
            await nc.close()

    asyncio.run(one_host())
    with pytest.raises(ClientError) as info:
        events_from(jetstream_nats, "nosuch")
    assert str(info.value) == (
        f"{jetstream_nats}: no events from host 'nosuch' were found (the stream holds hosts: "
        "h1); pass --host with one of them"
    )
    assert info.value.exit_code == 2
