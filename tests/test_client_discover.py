"""The client finds the instance and its token from the same config as `run` (SPEC §10):
frame_host:frame_port, then the token from --token-file, auth.token_file, the systemd
credential, or state_dir/api-token, in that order; and says where it looked when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frameos.client.discover import ClientError, discover
from frameos.errors import UsageError


def config(tmp_path: Path, **keys: object) -> Path:
    data = {"frame_port": 8123, "state_dir": str(tmp_path / "state"), **keys}
    path = tmp_path / "frame.json"
    path.write_text(json.dumps(data))
    return path


def token_at(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"  {value}\n")
    return path


def test_the_url_is_the_configs_bind_and_a_wildcard_is_reached_on_loopback(
    tmp_path: Path,
) -> None:
    target = discover(config=str(config(tmp_path)), url=None, token_file=None, env={})
    assert (target.url, target.ws_url) == ("http://127.0.0.1:8123", "ws://127.0.0.1:8123")
    wild = config(tmp_path, frame_host="0.0.0.0", auth={"token_file": str(tmp_path / "t")})
    token_at(tmp_path / "t", "x")
    assert discover(config=str(wild), url=None, token_file=None, env={}).url == (
        "http://127.0.0.1:8123"
    )
    six = config(tmp_path, frame_host="::1")
    assert discover(config=str(six), url=None, token_file=None, env={}).url == "http://[::1]:8123"


def test_the_config_comes_from_frameos_config_as_for_run(tmp_path: Path) -> None:
    path = config(tmp_path, frame_port=9999)
    target = discover(config=None, url=None, token_file=None, env={"FRAMEOS_CONFIG": str(path)})
    assert target.url == "http://127.0.0.1:9999"
    assert target.config_path == path


def test_the_config_is_frame_json_in_the_current_directory_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config(tmp_path, frame_port=9191)
    monkeypatch.chdir(tmp_path)
    assert discover(config=None, url=None, token_file=None, env={}).url == "http://127.0.0.1:9191"
    other = tmp_path / "other"
    other.mkdir()
    config(other, frame_port=9292)
    env = {"FRAMEOS_CONFIG": str(other / "frame.json")}
    assert discover(config=None, url=None, token_file=None, env=env).url.endswith(":9292")


def test_the_generated_token_in_the_state_dir_is_used_when_nothing_else_is_set(
    tmp_path: Path,
) -> None:
    path = config(tmp_path)
    generated = token_at(tmp_path / "state" / "api-token", "generated")
    target = discover(config=str(path), url=None, token_file=None, env={})
    assert (target.token, target.token_from) == ("generated", str(generated))
    assert target.headers == {"Authorization": "Bearer generated"}


def test_token_order_flag_then_token_file_then_credential_then_generated(
    tmp_path: Path,
) -> None:
    token_at(tmp_path / "state" / "api-token", "generated")
    creds = tmp_path / "creds"
    token_at(creds / "frameos-token", "credential")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    path = config(tmp_path)
    assert discover(config=str(path), url=None, token_file=None, env=env).token == "credential"
    configured = token_at(tmp_path / "configured", "configured")
    path = config(tmp_path, auth={"token_file": str(configured)})
    assert discover(config=str(path), url=None, token_file=None, env=env).token == "configured"
    flag = token_at(tmp_path / "flag", "flag")
    target = discover(config=str(path), url=None, token_file=str(flag), env=env)
    assert (target.token, target.token_from) == ("flag", str(flag))


def test_url_overrides_the_config_and_needs_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./frame.json here
    target = discover(config=None, url="http://10.1.2.3:80/", token_file=None, env={})
    assert (target.url, target.token) == ("http://10.1.2.3:80", None)
    assert target.looked == (
        "--token-file (not given)",
        "no config (pass --config, or --token-file)",
    )
    with pytest.raises(UsageError, match="--url must start with http:// or https://"):
        discover(config=None, url="10.1.2.3:80", token_file=None, env={})


def test_with_url_a_broken_frame_json_here_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config(tmp_path, frame_port="eighty")
    monkeypatch.chdir(tmp_path)
    target = discover(config=None, url="http://127.0.0.1:8123", token_file=None, env={})
    assert target.token is None
    assert target.looked[-1] == "./frame.json (not valid: `frameos check` says why)"
    with pytest.raises(ClientError, match="cannot read the instance's config"):
        discover(config="frame.json", url="http://127.0.0.1:8123", token_file=None, env={})


def test_when_no_token_is_found_every_place_looked_at_is_remembered(tmp_path: Path) -> None:
    target = discover(config=str(config(tmp_path)), url=None, token_file=None, env={})
    assert target.token is None
    assert target.looked == (
        "--token-file (not given)",
        "auth.token_file (not set)",
        "$CREDENTIALS_DIRECTORY/frameos-token (not set)",
        f"{tmp_path / 'state' / 'api-token'} (missing)",
    )


def test_an_unreadable_generated_token_is_said_so(tmp_path: Path) -> None:
    generated = tmp_path / "state" / "api-token"
    generated.mkdir(parents=True)  # unreadable as a token even for root
    target = discover(config=str(config(tmp_path)), url=None, token_file=None, env={})
    assert target.token is None
    assert target.looked[-1] == f"{generated} (not readable: is a directory)"


def test_a_port_picked_at_start_cannot_be_found_from_the_config(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=r"frame_port is 0 .*pass --url http://HOST:PORT"):
        discover(config=str(config(tmp_path, frame_port=0)), url=None, token_file=None, env={})


def test_no_config_anywhere_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClientError) as info:
        discover(config=None, url=None, token_file=None, env={})
    assert str(info.value) == (
        "no config to find the instance from: looked at --config (not given), $FRAMEOS_CONFIG "
        "(not set) and ./frame.json (missing); pass --config PATH (the one `frameos run` uses), "
        "or --url URL and --token-file PATH"
    )
    assert info.value.exit_code == 2


def test_a_broken_config_is_exit_2_with_its_problem(tmp_path: Path) -> None:
    path = config(tmp_path, frame_port="eighty")
    with pytest.raises(ClientError, match=r"cannot read the instance's config: .*frame_port"):
        discover(config=str(path), url=None, token_file=None, env={})


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "does not exist"), ("", "is empty"), ("\n \n", "is empty")]
)
def test_a_token_file_flag_that_is_missing_or_empty_is_exit_2(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClientError, match=f"--token-file {path} {problem}"):
        discover(config=None, url="http://127.0.0.1:1", token_file=str(path), env={})


def test_demo_finds_the_demo_instance_its_port_and_generated_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo keeps its state
    env = {"FRAMEOS_DEMO_PORT": "18999"}
    target = discover(config=None, url=None, token_file=None, env=env, demo=True)
    assert (target.url, target.token) == ("http://127.0.0.1:18999", None)
    assert target.config is not None and target.config.state_dir is not None
    assert target.config.state_dir.parent == tmp_path
    target.config.state_dir.mkdir(parents=True, exist_ok=True)
    (target.config.state_dir / "api-token").write_text("demo-token-0123456789abcdef\n")
    target = discover(config=None, url=None, token_file=None, env=env, demo=True)
    assert target.token == "demo-token-0123456789abcdef"


def test_demo_and_config_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--demo and --config"):
        discover(config=str(tmp_path / "frame.json"), url=None, token_file=None, demo=True)
