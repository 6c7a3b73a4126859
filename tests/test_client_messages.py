"""The client's messages a new user met (FINDINGS D4, D8): each says what is wrong and the fix
that applies to how the command was called, never a false "looked at: nowhere", an "upgrade it"
for a mistyped --url, or `frameos run --config the demo config`."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from frameos.client.api import Api, ClientError
from frameos.client.discover import discover
from frameos.errors import ConfigError
from frameos.workers.demo import demo_config
from tests.conftest import run_main

URL = "http://127.0.0.1:9"


async def refusal(api: Api, answer: httpx.Response) -> ClientError:
    api._client = httpx.AsyncClient(
        base_url=api.target.url, transport=httpx.MockTransport(lambda _: answer)
    )
    async with api:
        with pytest.raises(ClientError) as info:
            await api.get("/v1/status")
    return info.value


async def test_a_refused_token_file_is_named_without_a_looked_at_nowhere(tmp_path: Path) -> None:
    token = tmp_path / "tok"
    token.write_text("garbage\n")
    target = discover(config=None, url=URL, token_file=str(token), env={})
    answer = httpx.Response(401, json={"error": "invalid_token", "message": "bad token"})
    exc = await refusal(Api(target), answer)
    assert "nowhere" not in str(exc) and "looked at" not in str(exc)
    assert f"refused the token from {token} (401 invalid_token)" in str(exc)
    assert "Pass --token-file with the right one" in str(exc)


async def test_a_url_with_a_path_is_told_to_be_the_base_address() -> None:
    target = discover(config=None, url=f"{URL}/healthz/", token_file=None, env={})
    answer = httpx.Response(404, json={"error": "not_found", "message": "no such route"})
    exc = await refusal(Api(target), answer)
    assert "upgrade" not in str(exc)
    assert "--url is the instance's base address (http://HOST:PORT), found the path /healthz" in (
        str(exc)
    )


@pytest.mark.parametrize("port", ["99999", "65536", "1234567"])
def test_a_demo_port_out_of_range_names_the_variable_and_the_range(port: str) -> None:
    with pytest.raises(ConfigError) as info:
        demo_config({"FRAMEOS_DEMO_PORT": port})
    assert f"$FRAMEOS_DEMO_PORT is {port!r}" in str(info.value)
    assert "from 0 to 65535" in str(info.value)


@pytest.fixture
def demo_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The demo's port held bound but not listening (a connect is refused), its state in tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("FRAMEOS_DEMO_PORT", str(sock.getsockname()[1]))
        yield sock.getsockname()[1]


@pytest.mark.usefixtures("demo_not_running")
@pytest.mark.parametrize(
    "args", [("status", "--demo"), ("watch", "--demo"), ("stop", "demo-polite", "--demo")]
)
def test_the_demo_not_running_is_told_to_start_with_run_demo(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    status, out, err = run_main(capsys, *args)
    assert (status, out) == (2, "")
    assert "is frameos running? start it with `frameos run --demo`" in err
    assert "the demo config" not in err
