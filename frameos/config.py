"""Configuration: pydantic models with the defaults of SPEC §2 and §5, and a loader whose errors
name the file, the JSON path, what was expected and what was found.

Keys are snake_case; every key also accepts its legacy FrameOS camelCase spelling.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import signal as _signal
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from frameos.errors import ConfigError, Problem

CONFIG_ENV = "FRAMEOS_CONFIG"
DEFAULT_CONFIG = "frame.json"
TOKEN_CREDENTIAL = "frameos-token"
MIB = 1024 * 1024


def _aliases(name: str) -> AliasChoices:
    return AliasChoices(name, to_camel(name))


class Model(BaseModel):
    """Base of every config model: frozen, strict about unknown keys, camelCase aliases accepted."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=_aliases),
    )


PosMs = Annotated[int, Field(ge=0, le=3_600_000)]


class EventLogConfig(Model):
    """`event_log`: where the durable log lives and how hard it syncs."""

    path: Path | None = None
    fsync: Literal["always", "batch", "never"] = "batch"
    max_bytes: int = Field(default=64 * MIB, ge=64 * 1024)
    keep: int = Field(default=5, ge=0, le=1000)


class WebsocketConfig(Model):
    """`websocket`: per-client bounds of the /ws/events stream."""

    queue_depth: int = Field(default=64, ge=1, le=100_000)
    queue_bytes: int = Field(default=4 * MIB, ge=64 * 1024)
    ping_interval_s: float = Field(default=20.0, gt=0, le=3600)
    idle_timeout_s: float = Field(default=60.0, gt=0, le=86_400)
    max_clients: int = Field(default=512, ge=1, le=100_000)


class AuthConfig(Model):
    """`auth`: the bearer token for the control API."""

    token_file: Path | None = None


class CooperativeConfig(Model):
    """`vms[].cooperative`: how the guest is asked to stop before any signal."""

    method: Literal["qmp", "signal", "command", "none"] | None = None
    signal: str = "SIGINT"
    command: list[str] | None = None

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if not hasattr(_signal, name) or name.startswith("SIG_"):
            raise ValueError(f"expected a signal name such as SIGINT or SIGUSR1, found {value!r}")
        return name

    @model_validator(mode="after")
    def _command_given(self) -> CooperativeConfig:
        if self.method == "command" and not self.command:
            raise ValueError(
                "method 'command' needs `command`: the argv that asks the guest to stop"
            )
        return self


class TimeoutsConfig(Model):
    """`vms[].timeouts`: the deadline of each rung of the stop ladder."""

    cooperative_ms: PosMs = 20_000
    sigterm_ms: PosMs = 10_000
    sigkill_ms: int = Field(default=5_000, ge=1_000, le=600_000)

    @property
    def total_ms(self) -> int:
        return self.cooperative_ms + self.sigterm_ms + self.sigkill_ms


class RestartConfig(Model):
    """`vms[].restart`: policy, backoff and give-up window."""

    policy: Literal["permanent", "transient", "temporary"] = "permanent"
    backoff_initial_ms: PosMs = 500
    backoff_max_ms: PosMs = 30_000
    max_restarts: int = Field(default=5, ge=0, le=10_000)
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    on_exhausted: Literal["stay", "exit"] = "stay"

    @model_validator(mode="after")
    def _backoff_order(self) -> RestartConfig:
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError(
                f"backoff_max_ms ({self.backoff_max_ms}) must be ≥ backoff_initial_ms "
                f"({self.backoff_initial_ms})"
            )
        return self


class SshConfig(Model):
    """`vms[].bootstrap.ssh`: metadata handed to bootstrap steps as FRAMEOS_SSH_* variables."""

    user: str | None = None
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65_535)
    identity: str | None = None
    options: list[str] = Field(default_factory=list)


class BootstrapStep(Model):
    """One host-side provisioning step."""

    name: str = Field(min_length=1, max_length=100)
    command: list[str] = Field(min_length=1)
    timeout_ms: int = Field(default=60_000, ge=1, le=86_400_000)
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay_ms: PosMs = 1_000


class BootstrapConfig(Model):
    """`vms[].bootstrap`: the pipeline run after the VM launches."""

    trigger: Literal["auto", "always"] = "auto"
    steps: list[BootstrapStep] = Field(default_factory=list)
    ssh: SshConfig = Field(default_factory=SshConfig)


VM_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
# How a person reads each pattern a model uses (manifests add theirs).
PATTERN_HINTS = {
    VM_NAME: "lowercase letters, digits, '.', '_' or '-' (starting with a letter or digit)",
}


class VmConfig(Model):
    """`vms[]`: one supervised worker process (a QEMU VM or any long-running command)."""

    name: str = Field(pattern=VM_NAME)
    command: list[str] = Field(min_length=1)
    base_image: Path | None = None
    overlay_dir: Path | None = None
    cooperative: CooperativeConfig = Field(default_factory=CooperativeConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    restart: RestartConfig = Field(default_factory=RestartConfig)
    bootstrap: BootstrapConfig | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None

    @field_validator("base_image", "overlay_dir", "cwd")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"expected an absolute path, found {str(value)!r}")
        return value

    @property
    def cooperative_method(self) -> str:
        """The configured method, or `qmp` when the command has a QMP socket, else `none`."""
        if self.cooperative.method is not None:
            return self.cooperative.method
        return "qmp" if any("{qmp_socket}" in arg for arg in self.command) else "none"


class FrameConfig(Model):
    """The whole `frame.json`."""

    frame_host: str = "127.0.0.1"
    frame_port: int = Field(default=8787, ge=0, le=65_535)
    server_port: int = Field(default=8989, ge=0, le=65_535)
    width: int = Field(default=1920, ge=1, le=32_768)
    height: int = Field(default=1080, ge=1, le=32_768)
    device: str = "web_only"
    metrics_interval: float = Field(default=60.0, ge=1, le=86_400)
    heartbeat_interval: float = Field(default=1.0, ge=0.05, le=3_600)
    scaling_mode: Literal["cover", "contain", "stretch", "center"] = "cover"
    assets_path: Path = Path("/srv/assets")
    time_zone: str = "UTC"
    log_to_file: Path | None = None
    state_dir: Path | None = None
    event_log: EventLogConfig = Field(default_factory=EventLogConfig)
    websocket: WebsocketConfig = Field(default_factory=WebsocketConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    shutdown_timeout_s: float = Field(default=40.0, ge=1, le=3_600)
    vms: list[VmConfig] = Field(default_factory=list)

    @field_validator("assets_path")
    @classmethod
    def _assets_absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"expected an absolute path, found {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _vms_consistent(self) -> FrameConfig:
        seen: dict[str, int] = {}
        for index, vm in enumerate(self.vms):
            if vm.name in seen:
                raise _PathError(
                    f"vms[{index}].name",
                    f"duplicate VM name {vm.name!r} (also vms[{seen[vm.name]}]); "
                    "names must be unique",
                )
            seen[vm.name] = index
            ladder_s = vm.timeouts.total_ms / 1000
            if ladder_s >= self.shutdown_timeout_s:
                raise _PathError(
                    f"vms[{index}].timeouts",
                    f"the stop ladder takes up to {ladder_s:g} s, which does not fit in "
                    f"shutdown_timeout_s ({self.shutdown_timeout_s:g} s); raise shutdown_timeout_s "
                    f"above {ladder_s:g} or shorten the timeouts",
                )
        return self


class _PathError(ValueError):
    """A model-level problem that belongs to a deeper JSON path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


# --- turning pydantic errors into Problems -------------------------------------------------------


def json_path(loc: tuple[int | str, ...]) -> str:
    """`('vms', 1, 'timeouts', 'sigterm_ms')` → `vms[1].timeouts.sigterm_ms`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _found(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


def _expected(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    simple = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "a whole number",
        "float_type": "a number",
        "float_parsing": "a number",
        "string_type": "a string",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "list_type": "a list",
        "dict_type": "an object",
        "model_type": "an object",
        "model_attributes_type": "an object",
        "path_type": "a path string",
        "missing": "this required key",
    }
    if kind in simple:
        return f"expected {simple[kind]}"
    bounds = {
        "greater_than_equal": "≥ {ge}",
        "less_than_equal": "≤ {le}",
        "greater_than": "> {gt}",
        "less_than": "< {lt}",
    }
    if kind in bounds:
        return "expected a value " + bounds[kind].format(**{k: _number(v) for k, v in ctx.items()})
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return "expected a non-empty string"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return "expected " + PATTERN_HINTS.get(pattern, f"text matching {pattern}")
    message = str(err["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def problems_from(err: ValidationError, source: str, model: type[BaseModel]) -> list[Problem]:
    """One Problem per pydantic error, with JSON paths and hints for unknown keys."""
    problems = []
    for item in err.errors(include_url=False):
        loc = tuple(item["loc"])
        exc = (item.get("ctx") or {}).get("error")
        if isinstance(exc, _PathError):
            problems.append(Problem(source, exc.path, str(exc)))
            continue
        path = json_path(loc)
        if item["type"] == "extra_forbidden":
            problems.append(Problem(source, path, _unknown_key(model, loc)))
        elif item["type"] == "missing":
            problems.append(Problem(source, path, "required key is missing"))
        elif item["type"] == "value_error" or item["type"] == "assertion_error":
            problems.append(Problem(source, path, _expected(item)))
        else:
            problems.append(
                Problem(source, path, f"{_expected(item)}, found {_found(item['input'])}")
            )
    return problems


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = _unwrap_model(annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _unknown_key(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    parent = _model_at(model, loc[:-1])
    if parent is None:
        return "unknown key; remove it"
    names = list(parent.model_fields)
    snake = {to_camel(n): n for n in names}
    if key in snake:
        return f"given twice (as {key!r} and {snake[key]!r}); keep one spelling"
    close = difflib.get_close_matches(key, names + list(snake), n=1)
    hint = (
        f"did you mean {snake.get(close[0], close[0])!r}?"
        if close
        else ("known keys: " + ", ".join(names))
    )
    return f"unknown key; {hint}"


# --- loading ----------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """Read a JSON file, turning every failure into a ConfigError naming the file and the fix."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(source, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(source, "", "is a directory, expected a JSON file")]) from None
    except PermissionError:
        raise ConfigError(
            [
                Problem(
                    source,
                    "",
                    "cannot be read (permission denied); fix its permissions or run as its owner",
                )
            ]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(source, "", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    except OSError as exc:
        raise ConfigError([Problem(source, "", f"cannot be read: {exc.strerror}")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [
                Problem(
                    source, "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
                )
            ]
        ) from None


def find_config(explicit: str | None, env: Mapping[str, str]) -> Path:
    """`--config`, else `$FRAMEOS_CONFIG`, else `./frame.json`; never a guess beyond those."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG)
    if default.exists():
        return default
    raise ConfigError(
        [
            Problem(
                "config",
                "",
                f"no config found: looked at --config (not given), ${CONFIG_ENV} (not set) and "
                f"./{DEFAULT_CONFIG} (missing); pass --config PATH, or try `frameos run --demo`",
            )
        ]
    )


def validate_config(data: Any, source: str) -> FrameConfig:
    """Validate parsed JSON as a FrameConfig, or raise a ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Problem(
                    source,
                    "",
                    f"expected a JSON object at the top level, found {type(data).__name__}",
                )
            ]
        )
    try:
        return FrameConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems_from(err, source, FrameConfig)) from None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> FrameConfig:
    """Read, validate and resolve a config file (state_dir filled in, bind checked)."""
    env = os.environ if env is None else env
    config = validate_config(read_json(path), str(path))
    return resolve(config, str(path), env)


def resolve(config: FrameConfig, source: str, env: Mapping[str, str]) -> FrameConfig:
    """Fill in what depends on the environment, and refuse an unauthenticated public bind."""
    state_dir = config.state_dir
    if state_dir is None:
        systemd_state = env.get("STATE_DIRECTORY", "").split(":")[0]
        state_dir = Path(systemd_state) if systemd_state else Path("state")
    config = config.model_copy(update={"state_dir": state_dir.absolute()})
    if not is_loopback(config.frame_host) and token_source(config, env) is None:
        raise ConfigError(
            [
                Problem(
                    source,
                    "frame_host",
                    f"binding {config.frame_host!r} (not loopback) needs an API token: set "
                    f"auth.token_file to a file holding the token, or pass the systemd credential "
                    f"{TOKEN_CREDENTIAL!r} (LoadCredential=); or bind 127.0.0.1",
                )
            ]
        )
    return config


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_source(config: FrameConfig, env: Mapping[str, str]) -> Path | None:
    """Where the API token comes from: `auth.token_file`, else the systemd credential."""
    if config.auth.token_file is not None:
        return config.auth.token_file
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / TOKEN_CREDENTIAL).is_file():
        return Path(creds) / TOKEN_CREDENTIAL
    return None


def event_log_path(config: FrameConfig, override: str | None) -> Path:
    """`--event-log` > `log_to_file` > `event_log.path` > `state_dir/events.jsonl`."""
    if override:
        return Path(override).absolute()
    if config.log_to_file is not None:
        return config.log_to_file.absolute()
    if config.event_log.path is not None:
        return config.event_log.path.absolute()
    assert config.state_dir is not None, "resolve() fills state_dir"
    return config.state_dir / "events.jsonl"


def diff(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """The JSON paths whose values differ between two configs (for runtime:reload)."""
    changed: list[str] = []
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    _diff_values(a, b, prefix, changed)
    return changed


def _diff_values(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff_values(a.get(key), b.get(key), f"{path}.{key}" if path else key, out)
    elif a != b:
        out.append(path)


# --- the embedded demo ------------------------------------------------------------------------


def demo_config(env: Mapping[str, str] | None = None) -> FrameConfig:
    """The config `frameos run --demo` uses: no root, no qemu, no network, state in a temp dir."""
    env = os.environ if env is None else env
    state = Path(tempfile.gettempdir()) / f"frameos-demo-{os.getuid()}"
    data: dict[str, Any] = {
        "frame_host": "127.0.0.1",
        "frame_port": int(env.get("FRAMEOS_DEMO_PORT", "8787")),
        "metrics_interval": 10,
        "state_dir": str(state),
        "shutdown_timeout_s": 15,
        "vms": demo_vms(),
    }
    return resolve(validate_config(data, "demo config"), "demo config", env)


def demo_vms() -> list[dict[str, Any]]:
    """The demo's simulated VMs (small Python programs in frameos.workers.demo)."""
    from frameos.workers.demo import demo_vm_configs

    return demo_vm_configs()
