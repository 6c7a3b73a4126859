"""Config problems worded for what pydantic reports less often (frameos/config/problems.py):
too many items, a name too long, an unknown key under a list item, a value that cannot be
shown as JSON."""

from __future__ import annotations

from typing import Any

import pytest

from frameos.config import validate_config
from frameos.config.problems import _found
from frameos.errors import ConfigError


def problem_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "t.json")
    return str(info.value)


def test_too_many_items_names_the_bound() -> None:
    tokens = [{"name": f"t{i}", "token_file": "/x", "scopes": ["read"]} for i in range(101)]
    text = problem_of({"auth": {"tokens": tokens}})
    assert "auth.tokens" in text and "expected at most 100 item(s)" in text


def test_a_name_too_long_names_the_bound() -> None:
    raw = {
        "vms": [
            {
                "name": "a",
                "command": ["true"],
                "bootstrap": {"steps": [{"name": "n" * 101, "command": ["true"]}]},
            }
        ]
    }
    text = problem_of(raw)
    assert "vms[0].bootstrap.steps[0].name" in text
    assert "expected at most 100 characters" in text


def test_an_unknown_key_in_a_list_item_is_named_with_its_path_and_a_guess() -> None:
    text = problem_of({"vms": [{"name": "a", "command": ["true"], "comand": ["x"]}]})
    assert text == "t.json: vms[0].comand: unknown key; did you mean 'command'?"


def test_a_value_that_is_not_json_is_shown_by_its_type() -> None:
    looped: list[Any] = []
    looped.append(looped)  # YAML anchors can build this
    assert _found(looped) == "a list"
    assert _found("x" * 200).endswith("...") and len(_found("x" * 200)) == 80
