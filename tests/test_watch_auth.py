"""`frameos watch` at a terminal with a token the instance refuses (FINDINGS D7): a 401/403 is not
transient, so the view gives up at once with the one line it prints off a terminal (exit 2),
instead of retrying for ever on an empty screen. The real view (`App.run`, the stream, the
snapshots) against the real HTTP surface; then the real `frameos watch` in tmux."""

from __future__ import annotations

import io
import shlex
import subprocess
from pathlib import Path

import pytest
import trio
from rich.console import Console

from frameos.client.api import Api, TokenRefused
from frameos.client.discover import Target
from frameos.watch.app import App, stream
from tests.api_helpers import serving_api
from tests.conftest import frameos_argv, require_tools
from tests.test_watch_e2e import ROOT, Tmux
from tests.test_watch_reconnect import keys_until

WRONG = "not-a-token-of-this-instance"


async def test_a_refused_token_ends_the_view_with_the_one_line(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as served:
        target = Target(served.url, WRONG, "/tmp/tok", (), None, None)
        async with Api(target, timeout=5) as api:
            app = App(api, Console(width=100, height=30, force_terminal=True, file=io.StringIO()))
            with trio.fail_after(10), pytest.raises(TokenRefused) as info:
                await app.run(keys_until(app.quit))
    assert "refused the token from /tmp/tok (401 invalid_token)" in str(info.value)
    assert info.value.exit_code == 2


async def test_the_stream_gives_up_when_a_reconnect_is_refused_the_token(tmp_path: Path) -> None:
    """The refusal met at a (re)connect, by the snapshots, is not retried either."""
    said: list[str] = []
    async with serving_api(tmp_path) as served:
        target = Target(served.url, WRONG, "/tmp/tok", (), None, None)
        async with Api(target, timeout=5) as api:
            app = App(api, Console(file=io.StringIO()))
            with trio.fail_after(10), pytest.raises(TokenRefused):
                await stream(api, lambda: 0, app.model.apply, said.append, app.connect, app.jump)
    assert not any(text.startswith("disconnected") for text in said)


async def test_watch_in_a_terminal_with_a_wrong_token_exits_2_with_the_line(
    tmp_path: Path,
) -> None:
    require_tools("tmux")
    token, out = tmp_path / "tok", tmp_path / "out"
    token.write_text("garbage\n")
    tmux = Tmux(tmp_path)
    try:
        async with serving_api(tmp_path) as served:
            argv = frameos_argv("watch", "--url", served.url, "--token-file", str(token))
            command = (
                f"cd {ROOT} && {shlex.join(argv)} 2>{out}.err; echo rc=$? >{out}.rc; "
                f"stty -a >{out}; sleep 600"
            )
            tmux("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40", command)
            with trio.move_on_after(20):  # before the fix: retrying for ever, on a blank screen
                while not (out.exists() and "icanon" in out.read_text()):
                    await trio.sleep(0.05)  # polled, with a deadline (another process writes it)
            assert out.exists(), f"watch did not exit; the pane:\n{tmux.pane()}"
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)
    assert Path(f"{out}.rc").read_text() == "rc=2\n"
    assert "-icanon" not in out.read_text()  # the terminal given back (canonical mode again)
    err = Path(f"{out}.err").read_text()
    assert f"refused the token from {token} (401 invalid_token)" in err
    assert err.count("\n") == 1 and "Traceback" not in err
