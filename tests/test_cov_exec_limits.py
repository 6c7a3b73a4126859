"""What the kernel would refuse to exec is found by `check`, before any launch
(frameos/config/load.py): an argv and env over MAX_EXEC_BYTES together, and ssh options that
make FRAMEOS_SSH_OPTIONS longer than one argument may be."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameos.config import load as config_load
from frameos.config import validate_config
from frameos.errors import ConfigError


def problems_of(tmp_path: Path, vm: dict[str, object]) -> list[tuple[str, str]]:
    raw = {"state_dir": str(tmp_path), "vms": [{"name": "big", **vm}]}
    config = validate_config(raw, "t.json")
    with pytest.raises(ConfigError) as info:
        config_load.resolve(config, "t.json", {})
    return [(p.path, p.message) for p in info.value.problems]


def test_an_argv_and_env_over_the_exec_bound_together(tmp_path: Path) -> None:
    piece = "a" * (config_load.MAX_ARG_BYTES // 2)
    count = config_load.MAX_EXEC_BYTES // len(piece) + 1  # each fits, all do not
    [(path, message)] = problems_of(tmp_path, {"command": ["true", *[piece] * count]})
    assert path == "vms[0].command" and f"keep them under {config_load.MAX_EXEC_BYTES}" in message


def test_ssh_options_too_long_for_one_variable(tmp_path: Path) -> None:
    options = ["-o", "x" * (config_load.MAX_ARG_BYTES // 2)] * 2
    vm = {"command": ["true"], "bootstrap": {"ssh": {"options": options}, "steps": []}}
    [(path, message)] = problems_of(tmp_path, vm)
    assert path == "vms[0].bootstrap.ssh.options" and "pass fewer options" in message
