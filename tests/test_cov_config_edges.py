"""Config mistakes an operator makes, each one line naming the JSON path and the fix
(frameos/config/models.py): two tokens with one name, a backoff whose maximum is below its
start, a probe URL with a space in it; and what a reload says changed inside a list of objects
(frameos/workers/reload.py)."""

from __future__ import annotations

from typing import Any

import pytest

from frameos.config import FrameConfig, validate_config
from frameos.errors import ConfigError
from frameos.workers.reload import json_paths


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "f.json")
    return [str(p) for p in info.value.problems]


def vm(**more: Any) -> dict[str, Any]:
    return {"name": "web", "command": ["true"], **more}


def test_two_tokens_with_one_name() -> None:
    token = {"name": "ci", "token_file": "/etc/frameos/ci.token", "scopes": ["read"]}
    assert problems_of({"auth": {"tokens": [token, {**token, "scopes": ["control"]}]}}) == [
        "f.json: auth.tokens[1].name: duplicate token name 'ci'; names must be unique"
    ]


def test_a_backoff_maximum_below_its_start() -> None:
    (problem,) = problems_of(
        {"vms": [vm(restart={"backoff_initial_ms": 5000, "backoff_max_ms": 100})]}
    )
    assert problem.startswith("f.json: vms[0].restart: ")
    assert "backoff_max_ms (100) must be ≥ backoff_initial_ms (5000)" in problem


def test_a_probe_url_with_a_space_in_it() -> None:
    health = {"readiness": {"http": {"url": "http://127.0.0.1:8080/health z"}}}
    assert problems_of({"vms": [vm(health=health)]}) == [
        "f.json: vms[0].health.readiness.http.url: the URL 'http://127.0.0.1:8080/health z' "
        "contains spaces or control characters; remove them"
    ]


def frame(steps: list[dict[str, Any]]) -> FrameConfig:
    return validate_config({"vms": [vm(bootstrap={"steps": steps})]}, "f.json")


def test_a_reload_names_the_step_that_changed_and_the_argv_as_one() -> None:
    before = frame(
        [
            {"name": "fetch", "command": ["curl", "-O", "http://x/a"]},
            {"name": "unpack", "command": ["tar", "xf", "a"]},
        ]
    )
    after = frame(
        [
            {"name": "fetch", "command": ["curl", "-O", "http://x/a"]},
            {"name": "unpack", "command": ["tar", "xzf", "a"], "timeout_ms": 9000},
        ]
    )
    assert json_paths(before, after) == [
        "vms[0].bootstrap.steps[1].command",  # the argv, not its second word
        "vms[0].bootstrap.steps[1].timeout_ms",
    ]
    assert json_paths(before, before) == []
