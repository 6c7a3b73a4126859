"""`frameos logs VM [--follow] [--lines N]`: the tail of a VM's output file through
`GET /v1/vms/{name}/log?offset=&limit=`, read backwards in windows for --lines, then followed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from frameos.client import logs as logs_module
from frameos.client.discover import discover
from tests.client_fake import TOKEN, FakeFrameos, running_fake
from tests.conftest import run_main

OUTPUT = b"".join(b"line %05d of the VM's output\n" % i for i in range(20_000))


@pytest.fixture
def fake() -> Iterator[FakeFrameos]:
    with running_fake() as instance:
        instance.vms["alpha"] = OUTPUT
        yield instance


@pytest.fixture
def token(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return str(path)


def test_lines_prints_the_last_n_lines(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: str
) -> None:
    status, out, err = run_main(
        capsys, "logs", "alpha", "--url", fake.url, "--token-file", token, "--lines", "3"
    )
    assert (status, err) == (0, "")
    assert out.splitlines() == [f"line {i} of the VM's output" for i in (19997, 19998, 19999)]


def test_more_lines_than_one_window_holds(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: str
) -> None:
    # 64 KiB hold ~2200 of these lines: 5000 need a wider window, read in several requests
    status, out, _ = run_main(
        capsys, "logs", "alpha", "--url", fake.url, "--token-file", token, "--lines", "5000"
    )
    assert status == 0
    assert out.encode() == b"".join(OUTPUT.splitlines(keepends=True)[-5000:])


def test_a_short_file_is_printed_whole(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: str
) -> None:
    fake.vms["beta"] = b"one\ntwo\n"
    status, out, _ = run_main(capsys, "logs", "beta", "--url", fake.url, "--token-file", token)
    assert (status, out) == (0, "one\ntwo\n")


def test_an_unknown_vm_lists_the_known_ones(
    capsys: pytest.CaptureFixture[str], fake: FakeFrameos, token: str
) -> None:
    status, out, err = run_main(capsys, "logs", "zeta", "--url", fake.url, "--token-file", token)
    assert (status, out) == (2, "")
    assert err == f"frameos: unknown VM 'zeta': {fake.url} has these VMs: alpha, beta, gamma\n"


async def test_follow_prints_what_the_vm_writes_next(
    fake: FakeFrameos,
    token: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs_module, "POLL_S", 0.01)
    target = discover(config=None, url=fake.url, token_file=token, env={})
    fake.vms["gamma"] = b"first\n"
    out = ""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: logs_module.logs(target, "gamma", lines=10, follow=True))

            def grow() -> None:
                fake.vms["gamma"] += b"second\n"

            await trio.to_thread.run_sync(fake.call, grow)
            while "second" not in out:
                await trio.sleep(0.01)  # stdout has no event to wait on: poll it
                out += capsys.readouterr().out
            nursery.cancel_scope.cancel()
    assert out == "first\nsecond\n"
