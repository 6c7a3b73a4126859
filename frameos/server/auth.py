"""The control API's bearer tokens and their scopes (SPEC §7.3).

    the instance's token (every scope)   auth.token_file, else $CREDENTIALS_DIRECTORY/frameos-token,
                                         else state_dir/api-token (made at first start, 0600)
    auth.tokens[]                        {name, token_file, scopes}: narrower ones

Every token is read once, at start; a file that cannot be read stops `frameos run` with one line
naming it. A request's token is compared with each known one by `hmac.compare_digest` (constant
time), all of them every time, so the time taken says nothing about which nearly matched.
Nothing here imports quart: the supervisor loads the tokens before any VM starts.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from frameos.config import FrameConfig, is_loopback, token_source
from frameos.errors import ConfigError, Problem

GENERATED = "api-token"  # in state_dir (frameos/client/discover.py reads it there too)
MAX_TOKEN_BYTES = 4096
MIN_TOKEN_CHARS = 16
INSTANCE = "instance"  # the name of the instance's own token (the owner of what it registers)


class Scope(StrEnum):
    READ = "read"
    CONTROL = "control"
    EVENTS_WRITE = "events:write"


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    scopes: frozenset[Scope]
    source: str  # where it was read, for messages (never the token itself)


class AuthError(Exception):
    """A refused request: 401 (missing_authorization, invalid_token) or 403
    (insufficient_scope, with the scope in `details`)."""

    def __init__(self, status: int, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


@dataclass(frozen=True)
class Tokens:
    """The known tokens, and whether reads of the event stream and the VMs stay open (a
    loopback bind)."""

    tokens: tuple[Token, ...]
    loopback: bool = True

    def identify(self, authorization: str | None) -> Token | None:
        """The token a request's `Authorization` header carries; None when it has none;
        AuthError(401) when it is malformed or unknown."""
        if authorization is None or not authorization.strip():
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(
                401,
                "invalid_token",
                "the Authorization header must be `Bearer <token>`",
            )
        offered = value.strip().encode("utf-8", "surrogateescape")
        found: Token | None = None
        for token in self.tokens:  # every comparison, always: no early exit
            if hmac.compare_digest(offered, token.secret):
                found = token
        if found is None:
            raise AuthError(
                401,
                "invalid_token",
                "the bearer token is not one of this instance's tokens; the local one is "
                "state_dir/api-token (or auth.token_file)",
            )
        return found

    def check(
        self, authorization: str | None, scope: Scope, *, open_read: bool = False
    ) -> Token | None:
        """The caller's token, checked for `scope`. `open_read`: a read that a loopback bind
        leaves open (None when no token was sent). Raises AuthError."""
        token = self.identify(authorization)
        if token is None:
            if open_read and self.loopback:
                return None
            raise AuthError(
                401,
                "missing_authorization",
                "this route needs a bearer token: send `Authorization: Bearer <token>` (the "
                "local one is in state_dir/api-token, or auth.token_file)",
            )
        if scope not in token.scopes:
            raise AuthError(
                403,
                "insufficient_scope",
                f"the token {token.name!r} lacks the {scope.value!r} scope; use a token that has "
                "it (auth.tokens scopes, or the instance's own token)",
                scope=scope.value,
            )
        return token


# What /ws/events gets from the hub's authorizer: None (admitted), or (status, error body).
WsRefusal = tuple[int, dict[str, object]] | None


def ws_authorizer(tokens: Tokens) -> Callable[[Sequence[tuple[bytes, bytes]]], WsRefusal]:
    """The check of `/ws/events` handshakes: scope `read`; open on a loopback bind."""

    def authorize(headers: Sequence[tuple[bytes, bytes]]) -> WsRefusal:
        raw = next((v for k, v in headers if k.lower() == b"authorization"), None)
        try:
            tokens.check(
                raw.decode("latin-1") if raw is not None else None, Scope.READ, open_read=True
            )
        except AuthError as exc:
            return exc.status, {"error": exc.code, "message": exc.message, "details": exc.details}
        return None

    return authorize


def load_tokens(config: FrameConfig, env: Mapping[str, str]) -> Tokens:
    """Every token of `config`, read now; the generated one made when none is configured.
    Raises ConfigError naming the file and the fix."""
    problems: list[Problem] = []
    tokens: list[Token] = []
    source = token_source(config, env)
    if source is not None:
        where = "auth.token_file" if config.auth.token_file is not None else "credential"
        secret = _read(source, where, problems)
        if secret is not None:
            tokens.append(Token(INSTANCE, secret, ALL_SCOPES, str(source)))
    else:
        assert config.state_dir is not None, "load_config resolves state_dir"
        path = config.state_dir / GENERATED
        secret = _generated(path, problems)
        if secret is not None:
            tokens.append(Token(INSTANCE, secret, ALL_SCOPES, str(path)))
    for index, extra in enumerate(config.auth.tokens):
        secret = _read(extra.token_file, f"auth.tokens[{index}].token_file", problems)
        if secret is not None:
            scopes = frozenset(Scope(s) for s in extra.scopes)
            tokens.append(Token(extra.name, secret, scopes, str(extra.token_file)))
    seen: dict[bytes, str] = {}
    for token in tokens:
        if token.secret in seen:
            problems.append(
                Problem(
                    "auth",
                    "auth.tokens",
                    f"{token.source} holds the same token as {seen[token.secret]}; give each "
                    "token its own secret",
                )
            )
        seen[token.secret] = token.source
    if problems:
        raise ConfigError(problems)
    return Tokens(tuple(tokens), loopback=is_loopback(config.frame_host))


def _read(path: Path, where: str, problems: list[Problem]) -> bytes | None:
    create = f"create it: (umask 077; head -c 32 /dev/urandom | base64 > {path})"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        problems.append(Problem("auth", where, f"{path} does not exist; {create}"))
        return None
    except OSError as exc:
        problems.append(Problem("auth", where, f"{path} cannot be read: {exc.strerror}"))
        return None
    secret = data.strip()
    if len(data) > MAX_TOKEN_BYTES:
        problems.append(Problem("auth", where, f"{path} is over {MAX_TOKEN_BYTES} bytes"))
        return None
    if len(secret) < MIN_TOKEN_CHARS or any(c <= 32 or c == 127 for c in secret):
        problems.append(
            Problem(
                "auth",
                where,
                f"{path} must hold one token of at least {MIN_TOKEN_CHARS} printable "
                f"characters without spaces; {create}",
            )
        )
        return None
    return secret


def _generated(path: Path, problems: list[Problem]) -> bytes | None:
    """state_dir/api-token: read it, or make it (0600) when it is missing or empty."""
    if path.exists() and path.stat().st_size > 0:
        with suppress(OSError):  # another owner's file: left as it is
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)  # only this user may read the instance's token
        return _read(path, "state_dir/api-token", problems)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32).encode()
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secret + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except OSError as exc:
        problems.append(
            Problem(
                "auth",
                "state_dir",
                f"cannot create the API token {path}: {exc.strerror}; make state_dir writable "
                "or set auth.token_file",
            )
        )
        return None
    return secret
