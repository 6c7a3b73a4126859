"""Token files that cannot serve (frameos/server/auth.py): missing, or too big to be a token.
Each is one problem naming the key and the file; nothing is half-loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameos.errors import ConfigError
from frameos.server.auth import MAX_TOKEN_BYTES, load_tokens
from tests.test_auth import config


def test_a_missing_token_file_is_a_problem_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        load_tokens(config(tmp_path, auth={"token_file": str(missing)}), {})
    [problem] = info.value.problems
    assert problem.path == "auth.token_file" and str(missing) in problem.message


def test_a_token_file_over_the_bound_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"t" * (MAX_TOKEN_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        load_tokens(config(tmp_path, auth={"token_file": str(big)}), {})
    [problem] = info.value.problems
    assert problem.message == f"{big} is over {MAX_TOKEN_BYTES} bytes"
