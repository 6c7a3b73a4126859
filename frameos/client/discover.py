"""Where the instance is and which token opens it, from the same config as `run` (SPEC §10).

URL: `--url`, else `http://frame_host:frame_port` of the config (`--config`, else
`$FRAMEOS_CONFIG`, else `./frame.json`; a wildcard bind is reached on loopback).
Token: `--token-file`, else the config's `auth.token_file`, else the systemd credential
`$CREDENTIALS_DIRECTORY/frameos-token`, else the token frameos generated at first start,
`state_dir/api-token`. Every place looked at is remembered, so a refusal can say where.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from frameos.errors import ConfigError, FrameosError

if TYPE_CHECKING:
    from frameos.config import FrameConfig

GENERATED_TOKEN = "api-token"  # in state_dir, made by frameos at first start (SPEC §7.3)
MAX_TOKEN_BYTES = 4096
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ClientError(FrameosError):
    """The instance cannot be found, reached, or refuses us (401/403/404): exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """A running instance as the client sees it."""

    url: str  # http://host:port, no trailing slash
    token: str | None
    token_from: str | None  # where the token was read, for messages
    looked: tuple[str, ...]  # every place looked at for a token, with what was found
    config: FrameConfig | None
    config_path: Path | None
    demo: bool = False  # the instance `frameos run --demo` starts

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def load_client_config(explicit: str | None, env: Mapping[str, str]) -> tuple[FrameConfig, Path]:
    """The config `run` would use, or ClientError saying where it looked and what to pass."""
    from frameos.config import CONFIG_ENV, DEFAULT_CONFIG, find_config, load_config

    if not explicit and not env.get(CONFIG_ENV) and not Path(DEFAULT_CONFIG).exists():
        raise ClientError(
            f"no config to find the instance from: looked at --config (not given), "
            f"${CONFIG_ENV} (not set) and ./{DEFAULT_CONFIG} (missing); pass --config PATH "
            "(the one `frameos run` uses), or --url URL and --token-file PATH"
        )
    path = find_config(explicit, env)
    try:
        return load_config(path, env), path
    except ConfigError as exc:
        raise ClientError(
            f"cannot read the instance's config: {exc}; fix it, or pass --url URL and "
            "--token-file PATH"
        ) from None


def discover(
    *,
    config: str | None,
    url: str | None,
    token_file: str | None,
    env: Mapping[str, str] | None = None,
    demo: bool = False,
) -> Target:
    """Find the instance and its token; ClientError (exit 2) when that cannot be done.

    `demo`: the instance `frameos run --demo` started, found from the same embedded config.
    """
    from frameos.config import CONFIG_ENV, DEFAULT_CONFIG

    env = os.environ if env is None else env
    cfg: FrameConfig | None = None
    path: Path | None = None
    implicit = False  # the config is ./frame.json, which --url does not need
    if demo:
        if config is not None:
            from frameos.errors import UsageError

            raise UsageError("--demo and --config exclude each other: pick one")
        from frameos.workers.demo import demo_config

        cfg, path = demo_config(env), Path("the demo config")
    elif url is None or (token_file is None and (config or env.get(CONFIG_ENV))):
        cfg, path = load_client_config(config, env)
    elif token_file is None and Path(DEFAULT_CONFIG).exists():
        implicit = True
        try:  # with --url, ./frame.json is read for its token only, and only if it can be
            cfg, path = load_client_config(None, env)
        except ClientError:
            cfg, path = None, None
    base = normalize_url(url) if url is not None else config_url(cfg, path)
    token, source, looked = find_token(cfg, token_file, env)
    if implicit and cfg is None:
        looked[-1] = f"./{DEFAULT_CONFIG} (not valid: `frameos check` says why)"
    return Target(base, token, source, tuple(looked), cfg, path, demo)


def normalize_url(url: str) -> str:
    from frameos.errors import UsageError

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, found {url!r}")
    return url.rstrip("/")


def config_url(cfg: FrameConfig | None, path: Path | None) -> str:
    assert cfg is not None
    if cfg.frame_port == 0:
        raise ClientError(
            f"{path}: frame_port is 0 (a port picked at start), so the instance cannot be found "
            "from the config; pass --url http://HOST:PORT (runtime:ready names it), or set "
            "frame_port"
        )
    host = WILDCARDS.get(cfg.frame_host, cfg.frame_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.frame_port}"


def find_token(
    cfg: FrameConfig | None, token_file: str | None, env: Mapping[str, str]
) -> tuple[str | None, str | None, list[str]]:
    """(token, where it came from, every place looked at with what was found there)."""
    from frameos.config import TOKEN_CREDENTIAL

    if token_file is not None:
        return read_token(Path(token_file), "--token-file", required=True), token_file, []
    looked = ["--token-file (not given)"]
    if cfg is None:
        looked.append("no config (pass --config, or --token-file)")
        return None, None, looked
    candidates: list[tuple[str, Path | None]] = [
        ("auth.token_file", cfg.auth.token_file),
    ]
    creds = env.get("CREDENTIALS_DIRECTORY")
    credential = Path(creds) / TOKEN_CREDENTIAL if creds and "\0" not in creds else None
    candidates.append((f"$CREDENTIALS_DIRECTORY/{TOKEN_CREDENTIAL}", credential))
    assert cfg.state_dir is not None, "load_config resolves state_dir"
    candidates.append(("the generated token", cfg.state_dir / GENERATED_TOKEN))
    for what, candidate in candidates:
        if candidate is None:
            looked.append(f"{what} (not set)")
            continue
        try:
            token = read_token(candidate, what, required=False)
        except ClientError as exc:
            looked.append(f"{candidate} ({exc})")
            continue
        if token is None:
            looked.append(f"{candidate} (missing)")
            continue
        return token, str(candidate), [*looked, f"{candidate} (used)"]
    return None, None, looked


def read_token(path: Path, what: str, *, required: bool) -> str | None:
    """The token in `path` (surrounding whitespace dropped); None when the file is missing and
    not `required`; ClientError when it cannot be read or is empty."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        if not required:
            return None
        raise ClientError(
            f"{what} {path} does not exist; pass the file holding the token"
        ) from None
    except OSError as exc:
        hint = "; run as a user who can read it (it guards the instance)" if required else ""
        raise ClientError(
            f"{what} {path} cannot be read: {exc.strerror}{hint}"
            if required
            else f"not readable: {(exc.strerror or str(exc)).lower()}"
        ) from None
    token = data.decode("utf-8", "replace").strip()
    if not token or len(data) > MAX_TOKEN_BYTES:
        problem = "is empty" if not token else f"is longer than {MAX_TOKEN_BYTES} bytes"
        raise ClientError(
            f"{what} {path} {problem}; it must hold the token" if required else problem
        )
    return token
