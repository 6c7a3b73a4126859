"""Config: defaults, aliases, precedence, and one clear message per problem."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frameos.config import (
    FrameConfig,
    diff,
    event_log_path,
    find_config,
    load_config,
    resolve,
    validate_config,
)
from frameos.errors import ConfigError
from frameos.workers.demo import demo_config


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resolve(validate_config(data, "frame.json"), "frame.json", {})
    return [str(p) for p in info.value.problems]


def test_defaults_match_the_spec() -> None:
    config = validate_config({}, "x")
    assert (config.frame_host, config.frame_port, config.server_port) == ("127.0.0.1", 8787, 8989)
    assert (config.width, config.height, config.device) == (1920, 1080, "web_only")
    assert (config.metrics_interval, config.heartbeat_interval) == (60, 1.0)
    assert (config.scaling_mode, config.assets_path, config.time_zone) == (
        "cover",
        Path("/srv/assets"),
        "UTC",
    )
    assert config.log_to_file is None
    assert config.event_log.fsync == "batch"
    assert config.websocket.queue_depth == 64


def test_legacy_camel_case_aliases() -> None:
    config = validate_config(
        {
            "framePort": 9000,
            "serverPort": 9001,
            "metricsInterval": 5,
            "assetsPath": "/a",
            "logToFile": "/tmp/x.log",
            "heartbeatInterval": 0.5,
        },
        "x",
    )
    assert (config.frame_port, config.server_port, config.metrics_interval) == (9000, 9001, 5)
    assert config.assets_path == Path("/a") and config.log_to_file == Path("/tmp/x.log")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"frame_port": "abc"}, 'frame.json: frame_port: expected an integer, found "abc"'),
        ({"frame_port": 70000}, "frame.json: frame_port: expected a value ≤ 65535, found 70000"),
        ({"metrics_interval": 0}, "frame.json: metrics_interval: expected a value ≥ 1, found 0"),
        (
            {"assets_path": "rel/dir"},
            "frame.json: assets_path: expected an absolute path, found 'rel/dir'",
        ),
        ({"frame_prot": 1}, "frame.json: frame_prot: unknown key; did you mean 'frame_port'?"),
        (
            {"frame_port": 1, "framePort": 2},
            "frame.json: framePort: given twice (as 'framePort' and 'frame_port'); "
            "keep one spelling",
        ),
        (
            {"event_log": {"fsync": "sometimes"}},
            "frame.json: event_log.fsync: expected one of 'always', 'batch' or 'never', "
            'found "sometimes"',
        ),
        (
            {"vms": [{"name": "a", "command": ["x"], "timeouts": {"sigterm_ms": -1}}]},
            "frame.json: vms[0].timeouts.sigterm_ms: expected a value ≥ 0, found -1",
        ),
        (
            {"vms": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]},
            "frame.json: vms[1].name: duplicate VM name 'a' (also vms[0]); names must be unique",
        ),
        (
            {"vms": [{"name": "Bad Name", "command": ["x"]}]},
            "frame.json: vms[0].name: expected lowercase letters, digits, '.', '_' or '-' "
            '(starting with a letter or digit), found "Bad Name"',
        ),
        (
            {"frame_host": "0.0.0.0"},
            "frame.json: frame_host: binding '0.0.0.0' (not loopback) needs an API token: set "
            "auth.token_file to a file holding the token, or pass the systemd credential "
            "'frameos-token' (LoadCredential=); or bind 127.0.0.1",
        ),
    ],
)
def test_one_clear_message_per_problem(data: object, expected: str) -> None:
    assert problems(data) == [expected]


def test_every_problem_is_reported_together() -> None:
    found = problems({"frame_port": "x", "width": 0, "bogus": 1})
    assert len(found) == 3
    assert any("frame_port" in p for p in found) and any("width" in p for p in found)


def test_ladder_must_fit_the_shutdown_deadline() -> None:
    [message] = problems({"shutdown_timeout_s": 10, "vms": [{"name": "a", "command": ["x"]}]})
    assert message.startswith("frame.json: vms[0].timeouts: the stop ladder takes up to 35 s")
    assert "raise shutdown_timeout_s above 35" in message


def test_top_level_must_be_an_object() -> None:
    assert problems([1, 2]) == ["frame.json: expected a JSON object at the top level, found list"]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"frame_port": 1,}')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1 column 18"):
        load_config(bad, {})
    with pytest.raises(ConfigError, match=r"missing\.json: file not found"):
        load_config(tmp_path / "missing.json", {})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, {})


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config("/explicit.json", {"FRAMEOS_CONFIG": "/env.json"}) == Path("/explicit.json")
    assert find_config(None, {"FRAMEOS_CONFIG": "/env.json"}) == Path("/env.json")
    with pytest.raises(ConfigError, match=r"no config found.*frameos run --demo"):
        find_config(None, {})
    (tmp_path / "frame.json").write_text("{}")
    assert find_config(None, {}) == Path("frame.json")


def test_state_dir_and_event_log_precedence(tmp_path: Path) -> None:
    config = resolve(validate_config({}, "x"), "x", {"STATE_DIRECTORY": "/var/lib/frameos"})
    assert config.state_dir == Path("/var/lib/frameos")
    assert event_log_path(config, None) == Path("/var/lib/frameos/events.jsonl")
    config = resolve(validate_config({"event_log": {"path": "/a.log"}}, "x"), "x", {})
    assert event_log_path(config, None) == Path("/a.log")
    config = resolve(
        validate_config({"event_log": {"path": "/a.log"}, "log_to_file": "/b.log"}, "x"), "x", {}
    )
    assert event_log_path(config, None) == Path("/b.log")
    assert event_log_path(config, "/c.log") == Path("/c.log")


def test_systemd_credential_counts_as_a_token(tmp_path: Path) -> None:
    (tmp_path / "frameos-token").write_text("secret")
    config = resolve(
        validate_config({"frame_host": "0.0.0.0"}, "x"),
        "x",
        {"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    assert config.frame_host == "0.0.0.0"


def test_diff_names_changed_paths() -> None:
    a = validate_config({}, "x")
    b = validate_config({"metrics_interval": 5, "websocket": {"queue_depth": 8}}, "x")
    assert diff(a, b) == ["metrics_interval", "websocket.queue_depth"]


def test_demo_config_needs_nothing() -> None:
    config = demo_config({})
    assert config.frame_host == "127.0.0.1" and config.state_dir is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_file_as_another_user(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0o000)
    tmp_path.chmod(0o755)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            # import everything first: the other user cannot read root's Python installation
            "import os, sys, argparse, json, frameos.cli, frameos.config, frameos.emit, "
            "frameos.manifests, frameos.events; os.setgid(65534); os.setuid(65534); "
            "sys.exit(frameos.cli.main(sys.argv[1:]))",
            "check",
            "--config",
            str(path),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert result.returncode == 1
    assert "cannot be read (permission denied)" in result.stderr
    assert "Traceback" not in result.stderr


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
known = st.sampled_from([*FrameConfig.model_fields, "framePort", "vms", "event_log"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(known, json_values, max_size=6))
def test_any_json_gives_a_config_or_clean_problems(data: dict[str, object]) -> None:
    json.dumps(data)
    try:
        resolve(validate_config(data, "f.json"), "f.json", {})
    except ConfigError as exc:
        assert exc.problems  # noqa: PT017 (the property: any failure is a clean ConfigError)
        for problem in exc.problems:
            assert str(problem).startswith("f.json")
            assert "Traceback" not in str(problem)
