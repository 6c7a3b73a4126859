"""Where the API tokens come from and how a request's token is judged (SPEC §7.3)."""

from __future__ import annotations

import hmac
import stat
from pathlib import Path

import pytest

from frameos.config import validate_config
from frameos.errors import ConfigError
from frameos.server import auth
from frameos.server.auth import AuthError, Scope, load_tokens

SECRET = "s3cret-token-0123456789abcdef"


def config(tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    return validate_config({"state_dir": str(tmp_path / "state"), **overrides}, "test")


def test_generated_token_is_0600_and_reused(tmp_path: Path) -> None:
    first = load_tokens(config(tmp_path), {})
    path = tmp_path / "state" / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (token,) = first.tokens
    assert token.secret == path.read_bytes().strip() and token.scopes == frozenset(Scope)
    again = load_tokens(config(tmp_path), {})
    assert again.tokens[0].secret == token.secret  # reused at the next start
    path.chmod(0o644)
    load_tokens(config(tmp_path), {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened, never left readable
    path.write_bytes(b"")
    assert load_tokens(config(tmp_path), {}).tokens[0].secret != token.secret  # an empty one


def test_token_file_then_credential_then_generated(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "frameos-token").write_text("credential-token-0123456789\n")
    file = tmp_path / "token"
    file.write_text(f"  {SECRET}\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    from_file = load_tokens(config(tmp_path, auth={"token_file": str(file)}), env)
    assert [t.secret for t in from_file.tokens] == [SECRET.encode()]
    from_credential = load_tokens(config(tmp_path), env)
    assert [t.secret for t in from_credential.tokens] == [b"credential-token-0123456789"]
    assert not (tmp_path / "state" / "api-token").exists()  # made only when nothing is set


def test_named_tokens_with_scopes_and_their_problems(tmp_path: Path) -> None:
    ci = tmp_path / "ci"
    ci.write_text("ci-token-0123456789abcdef")
    cfg = config(
        tmp_path,
        frame_host="0.0.0.0",
        auth={
            "token_file": str(ci.with_name("main")),
            "tokens": [{"name": "ci", "token_file": str(ci), "scopes": ["read", "events:write"]}],
        },
    )
    (tmp_path / "main").write_text(SECRET)
    tokens = load_tokens(cfg, {})
    assert not tokens.loopback
    ci_token = tokens.check("Bearer ci-token-0123456789abcdef", Scope.READ)
    assert ci_token is not None and ci_token.name == "ci"
    with pytest.raises(AuthError) as refused:
        tokens.check("Bearer ci-token-0123456789abcdef", Scope.CONTROL)
    assert (refused.value.status, refused.value.code) == (403, "insufficient_scope")
    assert refused.value.details == {"scope": "control"}
    ci.write_text("short")
    with pytest.raises(ConfigError) as bad:
        load_tokens(cfg, {})
    assert "auth.tokens[0].token_file" in str(bad.value) and str(ci) in str(bad.value)
    ci.unlink()
    with pytest.raises(ConfigError) as gone:
        load_tokens(cfg, {})
    assert "does not exist" in str(gone.value)
    ci.write_text(SECRET)
    with pytest.raises(ConfigError) as same:
        load_tokens(cfg, {})
    assert "same token" in str(same.value)


def test_missing_invalid_and_open_reads(tmp_path: Path) -> None:
    tokens = load_tokens(config(tmp_path), {})
    secret = tokens.tokens[0].secret.decode()
    for header, code in [
        (None, "missing_authorization"),
        ("", "missing_authorization"),
        ("Bearer", "invalid_token"),
        ("Token " + secret, "invalid_token"),
        ("Bearer " + secret + "x", "invalid_token"),
        ("Bearer \udcff", "invalid_token"),
    ]:
        with pytest.raises(AuthError) as refused:
            tokens.check(header, Scope.READ)
        assert (refused.value.status, refused.value.code) == (401, code), header
    assert tokens.check(None, Scope.READ, open_read=True) is None  # loopback: open for reading
    assert tokens.check(f"bearer {secret}", Scope.CONTROL) is not None
    closed = auth.Tokens(tokens.tokens, loopback=False)
    with pytest.raises(AuthError):
        closed.check(None, Scope.READ, open_read=True)


def test_every_token_is_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ci = tmp_path / "ci"
    ci.write_text("ci-token-0123456789abcdef")
    cfg = config(
        tmp_path, auth={"tokens": [{"name": "ci", "token_file": str(ci), "scopes": ["read"]}]}
    )
    tokens = load_tokens(cfg, {})
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counted)
    tokens.check("Bearer " + tokens.tokens[0].secret.decode(), Scope.READ)  # the first matches
    assert len(calls) == 2  # and the other is compared all the same: no early exit
