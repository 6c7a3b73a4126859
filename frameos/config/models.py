"""The config models: every key of `frame.json`, its type, default, range and description.

The defaults are those of SPEC §2 and §5. docs/configuration.md is generated from these models
(frameos/config/reference.py), so a field's `description` is its documentation.

Keys are snake_case; every key also accepts its legacy FrameOS camelCase spelling. Anything a
config can say that `run` would later trip over (a NUL byte in a path, an env name with `=`, an
empty argv[0], a string the kernel would refuse to exec) is refused here, with the fix.

Import cost (`frameos run` validates before any VM launches, BARS B6): the annotations are
evaluated by the interpreter (no `from __future__ import annotations`, so pydantic evaluates no
strings), and only `FrameConfig` builds its validator at import; the models inside it are
validated through its schema and build their own on first use (`defer_build`).
"""

import os
import signal as _signal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from frameos.config import graph

MIB = 1024 * 1024
# Linux: one argv or environment string may hold at most 32 pages (MAX_ARG_STRLEN) with its NUL.
MAX_ARG_BYTES = 128 * 1024 - 1
# A path frameos opens, leaving room below PATH_MAX (4096) for the files it makes inside it
# (`vms/NAME.pid`, `events.jsonl.1000`, …); one component leaves room below NAME_MAX (255).
MAX_PATH_BYTES = 3840
MAX_NAME_BYTES = 240


def _aliases(name: str) -> AliasChoices:
    return AliasChoices(name, to_camel(name))


class Model(BaseModel):
    """Base of every config model: frozen, strict about unknown keys, camelCase aliases accepted."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=_aliases),
        defer_build=True,
    )


class PathError(ValueError):
    """A model-level problem that belongs to a deeper JSON path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class PathErrors(ValueError):
    """Several model-level problems, each at its own JSON path (one line each)."""

    def __init__(self, errors: list[PathError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e}" for e in errors))


# --- what the OS accepts ------------------------------------------------------------------------


def os_bytes(value: str, what: str) -> bytes:
    """`value` as the bytes the OS will see, or ValueError saying why it cannot be passed."""
    if "\0" in value:
        raise ValueError(
            f"{what} contains a NUL byte (\\u0000), which the OS cannot pass; remove it"
        )
    try:
        return os.fsencode(value)
    except UnicodeError:
        raise ValueError(
            f"{what} contains a lone UTF-16 surrogate escape, which is not text; remove it"
        ) from None


def _exec_text(value: str) -> str:
    size = len(os_bytes(value, "the string"))
    if size > MAX_ARG_BYTES:
        raise ValueError(
            f"the string is {size} bytes; the kernel refuses to exec with one longer than "
            f"{MAX_ARG_BYTES} bytes: shorten it (or pass a file)"
        )
    return value


def _env_name(value: str) -> str:
    if not value:
        raise ValueError("an environment variable name cannot be empty; give it a name")
    os_bytes(value, "the environment variable name")
    if "=" in value:
        raise ValueError(
            f"the environment variable name {value!r} contains '=', which ends a name; "
            "rename it (the value goes on the right of the ':')"
        )
    return _exec_text(value)


def _fs_path(value: Path) -> Path:
    raw = os_bytes(str(value), "the path")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"the path is {len(raw)} bytes; keep it under {MAX_PATH_BYTES + 1}")
    for part in raw.split(b"/"):
        if len(part) > MAX_NAME_BYTES:
            raise ValueError(
                f"the path has a component of {len(part)} bytes; keep each under "
                f"{MAX_NAME_BYTES + 1}"
            )
    return value


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError(f"expected an absolute path, found {str(value)!r}")
    return value


def _argv(value: list[str]) -> list[str]:
    if not value[0]:
        raise ValueError(
            'argv[0] is empty: the first element names the program, e.g. ["/usr/bin/env", ...]'
        )
    return value


# How docs/configuration.md states what each validator allows (frameos/config/reference.py).
RULES = {
    _exec_text: f"no NUL, ≤ {MAX_ARG_BYTES} bytes",
    _env_name: "names: non-empty, no `=`",
    _fs_path: f"no NUL, ≤ {MAX_PATH_BYTES} bytes, each part ≤ {MAX_NAME_BYTES}",
    _absolute: "absolute",
    _argv: "argv[0] non-empty",
}

ExecText = Annotated[str, AfterValidator(_exec_text)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Argv = Annotated[list[ExecText], Field(min_length=1, max_length=10_000), AfterValidator(_argv)]
FsPath = Annotated[Path, AfterValidator(_fs_path)]
AbsPath = Annotated[Path, AfterValidator(_fs_path), AfterValidator(_absolute)]
PosMs = Annotated[int, Field(ge=0, le=3_600_000)]


# --- the models ---------------------------------------------------------------------------------


class EventLogConfig(Model):
    """`event_log`: where the durable log lives and how hard it syncs."""

    path: FsPath | None = Field(
        default=None,
        description="the log file; unset: `state_dir/events.jsonl`. Where the event log goes: "
        "`--event-log` > `log_to_file` > `event_log.path` > `state_dir/events.jsonl`",
    )
    fsync: Literal["always", "batch", "never"] = Field(
        default="batch",
        description="`always`: fsync before any observer sees a batch (an event a client saw is "
        "on disk); `batch`: one write and one fsync per batch, observers served between the two; "
        "`never`: the OS decides",
    )
    max_bytes: int = Field(
        default=64 * MIB,
        ge=64 * 1024,
        le=1 << 40,
        description="bytes; past this the log rotates to `PATH.1 … PATH.keep`",
    )
    keep: int = Field(
        default=5,
        ge=0,
        le=1000,
        description=(
            "rotated files kept (0: none; the fresh file starts with the last event, so seq "
            "continues)"
        ),
    )


class WebsocketConfig(Model):
    """`websocket`: per-client bounds of the /ws/events stream."""

    queue_depth: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="deliveries a client may have queued beyond its kernel socket buffer (a "
        "delivery is one bus batch: a single event at ordinary rates, many in a burst); over it, "
        "a client that has taken no bytes for 1 s is dropped",
    )
    queue_bytes: int = Field(
        default=4 * MIB,
        ge=64 * 1024,
        le=1 << 34,
        description="bytes; a client with more than this queued is dropped at once",
    )
    ping_interval_s: float = Field(
        default=20.0, gt=0, le=3600, description="seconds; the server pings every client this often"
    )
    idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="seconds; a client silent this long (no pong, no data) is closed with 1001",
    )
    max_clients: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="event-stream clients served at once; one more is refused",
    )


TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$"
Scope = Literal["read", "control", "events:write"]


class TokenConfig(Model):
    """`auth.tokens[]`: a narrower token (SPEC §7.3) with its own name and scopes."""

    name: str = Field(
        pattern=TOKEN_NAME,
        description="who holds it: the owner of the external workers it registers",
    )
    token_file: FsPath = Field(description="file holding the token (read at start)")
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=3,
        description="what it may do: `read` (GETs), `control` (runs, workers), "
        "`events:write` (POST /v1/events)",
    )


class AuthConfig(Model):
    """`auth`: the bearer tokens of the control API."""

    token_file: FsPath | None = Field(
        default=None,
        description="file holding the control API bearer token (every scope); unset: the "
        "systemd credential `frameos-token` (`LoadCredential=`), else `state_dir/api-token`, "
        "generated (mode 0600) at first start. A non-loopback `frame_host` needs one of the "
        "first two, and the file must exist",
    )
    tokens: list[TokenConfig] = Field(
        default_factory=list,
        max_length=100,
        description="more tokens, each with a name and narrower scopes",
    )

    @model_validator(mode="after")
    def _names_unique(self) -> "AuthConfig":
        seen: set[str] = set()
        for index, token in enumerate(self.tokens):
            if token.name in seen:
                raise PathError(
                    f"auth.tokens[{index}].name",
                    f"duplicate token name {token.name!r}; names must be unique",
                )
            seen.add(token.name)
        return self


# How a guest is asked to stop (SPEC §5): declared once, here; events, the ladder and pidfiles
# import it.
CooperativeMethod = Literal["qmp", "signal", "command", "none"]


class CooperativeConfig(Model):
    """`vms[].cooperative`: how the guest is asked to stop before any signal."""

    method: CooperativeMethod | None = Field(
        default=None,
        description="how the guest is asked to stop; unset: `qmp` when the command has "
        "`{qmp_socket}`, else `none`",
    )
    signal: str = Field(
        default="SIGINT",
        max_length=32,
        description="the signal of method `signal` (`SIGINT`, `USR1`, …)",
    )
    command: Argv | None = Field(
        default=None,
        description="argv of method `command` (placeholders as in `command`); exit 0 means asked",
    )

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if not hasattr(_signal, name) or name.startswith("SIG_"):
            raise ValueError(f"expected a signal name such as SIGINT or SIGUSR1, found {value!r}")
        if name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(
                f"{name} cannot be caught, so it asks nothing (SIGSTOP would freeze the guest "
                "for the whole ladder); use a signal the guest handles, such as SIGINT"
            )
        return name

    @model_validator(mode="after")
    def _command_given(self) -> "CooperativeConfig":
        if self.method == "command" and not self.command:
            raise ValueError(
                "method 'command' needs `command`: the argv that asks the guest to stop"
            )
        return self


class TimeoutsConfig(Model):
    """`vms[].timeouts`: the deadline of each rung of the stop ladder."""

    cooperative_ms: PosMs = Field(
        default=20_000, description="ms the guest has to stop after the cooperative request"
    )
    sigterm_ms: PosMs = Field(default=10_000, description="ms after SIGTERM before SIGKILL")
    sigkill_ms: int = Field(
        default=5_000,
        ge=1_000,
        le=600_000,
        description="ms to wait for the process group to vanish after SIGKILL",
    )

    @property
    def total_ms(self) -> int:
        return self.cooperative_ms + self.sigterm_ms + self.sigkill_ms


class RestartConfig(Model):
    """`vms[].restart`: policy, backoff and give-up window."""

    policy: Literal["permanent", "transient", "temporary"] = Field(
        default="permanent",
        description="`permanent`: always restart; `transient`: only after an abnormal exit; "
        "`temporary`: never",
    )
    backoff_initial_ms: PosMs = Field(default=500, description="ms before the first restart")
    backoff_max_ms: PosMs = Field(
        default=30_000, description="ms; the backoff doubles up to this (≥ `backoff_initial_ms`)"
    )
    max_restarts: int = Field(
        default=5, ge=0, le=10_000, description="restarts allowed within `window_s`"
    )
    window_s: float = Field(
        default=60.0, gt=0, le=86_400, description="seconds; the window `max_restarts` counts in"
    )
    on_exhausted: Literal["stay", "exit"] = Field(
        default="stay",
        description="after giving up: `stay` (frameos keeps running) or `exit` (frameos stops)",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> "RestartConfig":
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError(
                f"backoff_max_ms ({self.backoff_max_ms}) must be ≥ backoff_initial_ms "
                f"({self.backoff_initial_ms})"
            )
        return self


class SshConfig(Model):
    """`vms[].bootstrap.ssh`: metadata handed to bootstrap steps as FRAMEOS_SSH_* variables."""

    user: ExecText | None = Field(default=None, description="`FRAMEOS_SSH_USER`")
    host: ExecText | None = Field(default=None, description="`FRAMEOS_SSH_HOST`")
    port: int = Field(default=22, ge=1, le=65_535, description="`FRAMEOS_SSH_PORT`")
    identity: ExecText | None = Field(default=None, description="`FRAMEOS_SSH_IDENTITY`")
    options: list[ExecText] = Field(
        default_factory=list,
        max_length=1000,
        description="`FRAMEOS_SSH_OPTIONS` (shell-quoted, joined by spaces)",
    )


class BootstrapStep(Model):
    """`vms[].bootstrap.steps[]`: one host-side provisioning step."""

    name: str = Field(min_length=1, max_length=100, description="shown in `bootstrap.step`")
    command: Argv = Field(description="argv, run with the VM's env and cwd plus FRAMEOS_* facts")
    timeout_ms: int = Field(
        default=60_000, ge=1, le=86_400_000, description="ms one attempt may take"
    )
    retries: int = Field(default=0, ge=0, le=100, description="attempts after the first")
    retry_delay_ms: PosMs = Field(default=1_000, description="ms between attempts")


class BootstrapConfig(Model):
    """`vms[].bootstrap`: the pipeline run after the VM launches."""

    trigger: Literal["auto", "always"] = Field(
        default="auto",
        description="`auto`: skip when the stamp matches the plan and its inputs; `always`: "
        "every launch",
    )
    steps: list[BootstrapStep] = Field(
        default_factory=list, max_length=1000, description="run in order after each launch"
    )
    ssh: SshConfig = Field(
        default_factory=SshConfig, description="facts handed to the steps (below)"
    )


VM_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
HOST = r"^[0-9A-Za-z:.%_-]+$"
# How a person reads each pattern a model uses (manifests add theirs).
PATTERN_HINTS = {
    VM_NAME: "lowercase letters, digits, '.', '_' or '-' (starting with a letter or digit)",
    HOST: "an IP address or a host name (letters, digits, '.', '-', ':')",
    TOKEN_NAME: "letters, digits, '.', '_', '@' or '-' (starting with a letter or digit)",
}


class ExecProbe(Model):
    """`vms[].health.*.exec`: a command; exit 0 passes."""

    command: Argv = Field(
        description="argv, run in its own process group (killed at `timeout_ms`) with the VM's "
        "env and cwd; placeholders as in `command`"
    )


class HttpProbe(Model):
    """`vms[].health.*.http`: a GET; an accepted status passes."""

    url: str = Field(
        min_length=1, max_length=2000, description="`http://` or `https://` URL (no other scheme)"
    )
    status: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="the status codes that pass; unset: any of 200–399",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = urlsplit(value)
        try:
            port_ok = url.port is None or url.port > 0
        except ValueError:
            port_ok = False
        if url.scheme.lower() not in ("http", "https") or not url.hostname or not port_ok:
            raise ValueError(
                f"expected an http:// or https:// URL with a host (and a port 1-65535) such as "
                f"http://127.0.0.1:8080/healthz, found {value!r}; use a tcp probe for other "
                "protocols"
            )
        if any(ch.isspace() or ord(ch) < 32 for ch in value):
            raise ValueError(
                f"the URL {value!r} contains spaces or control characters; remove them"
            )
        return value


class TcpProbe(Model):
    """`vms[].health.*.tcp`: a TCP connect; an accepted connection passes."""

    host: str = Field(default="127.0.0.1", pattern=HOST, description="address or host name")
    port: int = Field(ge=1, le=65_535, description="TCP port")


class ProbeConfig(Model):
    """`vms[].health.readiness` / `.liveness`: one probe (exactly one of `exec`, `http`, `tcp`,
    `notify`) and its timing (SPEC §5.2)."""

    exec: ExecProbe | None = Field(default=None, description="run a command (exit 0 passes)")
    http: HttpProbe | None = Field(default=None, description="GET a URL (200–399 passes)")
    tcp: TcpProbe | None = Field(default=None, description="connect to a port")
    notify: bool = Field(
        default=False,
        description="`true`: readiness is the VM's own `READY=1` on its notify socket (or its "
        "guest's, `{notify_chardev}`); readiness only (for liveness, set `watchdog_ms`)",
    )
    period_ms: int = Field(
        default=5_000, ge=100, le=3_600_000, description="ms from one attempt's start to the next"
    )
    timeout_ms: int = Field(
        default=1_000, ge=10, le=600_000, description="ms one attempt may take (then it fails)"
    )
    initial_delay_ms: PosMs = Field(default=0, description="ms after the launch before probing")
    failure_threshold: int = Field(
        default=3, ge=1, le=1_000, description="consecutive failures that make it unhealthy"
    )
    success_threshold: int = Field(
        default=1, ge=1, le=1_000, description="consecutive successes that make it healthy"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "ProbeConfig":
        kinds = [k for k in ("exec", "http", "tcp") if getattr(self, k) is not None]
        kinds += ["notify"] if self.notify else []
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a probe is exactly one of exec, http, tcp or notify (found {found}); "
                'e.g. {"http": {"url": "http://127.0.0.1:8080/"}}'
            )
        return self

    @property
    def kind(self) -> Literal["exec", "http", "tcp", "notify"]:
        if self.exec is not None:
            return "exec"
        if self.http is not None:
            return "http"
        return "tcp" if self.tcp is not None else "notify"


class HealthConfig(Model):
    """`vms[].health`: when the VM is ready, and whether it is still alive (SPEC §5.2)."""

    readiness: ProbeConfig | None = Field(
        default=None,
        description="passes: the VM is ready (`vm.ready`); unset: ready once launched and "
        "bootstrapped",
    )
    liveness: ProbeConfig | None = Field(
        default=None,
        description="fails `failure_threshold` times in a row: the VM is restarted through its "
        "stop ladder, counted by its restart policy like an abnormal exit",
    )

    @model_validator(mode="after")
    def _liveness_not_notify(self) -> "HealthConfig":
        if self.liveness is not None and self.liveness.notify:
            raise ValueError(
                "liveness cannot be a notify probe: notify is for readiness (READY=1); for "
                "liveness through the notify socket set the VM's `watchdog_ms` (WATCHDOG=1 pings)"
            )
        return self


class VmConfig(Model):
    """`vms[]`: one supervised worker process (a QEMU VM or any long-running command)."""

    name: str = Field(
        pattern=VM_NAME, description="unique; names its pidfile, log, socket and overlay"
    )
    command: Argv = Field(
        description="argv; `{qmp_socket}`, `{overlay}` and `{notify_chardev}` are filled in "
        "(SPEC §5)"
    )
    base_image: AbsPath | None = Field(
        default=None, description="a disk image; each launch gets a fresh overlay (`{overlay}`)"
    )
    overlay_dir: AbsPath | None = Field(
        default=None, description="where overlays go; unset: `state_dir/overlays`"
    )
    cooperative: CooperativeConfig = Field(
        default_factory=CooperativeConfig, description="the first rung of the stop ladder"
    )
    timeouts: TimeoutsConfig = Field(
        default_factory=TimeoutsConfig, description="the deadline of each rung"
    )
    restart: RestartConfig = Field(
        default_factory=RestartConfig, description="what happens after an exit"
    )
    health: HealthConfig | None = Field(
        default=None, description="readiness and liveness probes (SPEC §5.2, below)"
    )
    watchdog_ms: int | None = Field(
        default=None,
        ge=100,
        le=3_600_000,
        description="the VM sends `WATCHDOG=1` on its notify socket at least this often (it "
        "gets `WATCHDOG_USEC`); a missed ping is a liveness failure: the VM is restarted through "
        "its ladder. A reload that changes it restarts the VM",
    )
    bootstrap: BootstrapConfig | None = Field(
        default=None, description="host-side steps after each launch"
    )
    env: dict[EnvName, ExecText] = Field(
        default_factory=dict,
        max_length=10_000,
        description="added to frameos's environment (minus its systemd variables)",
    )
    cwd: AbsPath | None = Field(
        default=None, description="working directory of the VM, its steps and its stop command"
    )
    depends_on: dict[Annotated[str, Field(pattern=VM_NAME)], graph.Condition] = Field(
        default_factory=dict,
        max_length=10_000,
        description="VMs this one launches after, each with the state it waits for: `started` "
        "(its process runs) or `ready` (launched, bootstrapped, its readiness probe passed); "
        "stop runs in reverse order (see [workers.md](workers.md#start-order-depends_on))",
    )

    @property
    def cooperative_method(self) -> CooperativeMethod:
        """The configured method, or `qmp` when the command has a QMP socket, else `none`."""
        if self.cooperative.method is not None:
            return self.cooperative.method
        return "qmp" if any("{qmp_socket}" in arg for arg in self.command) else "none"


class StreamLimits(Model):
    """`forward.nats.stream`: the JetStream stream created when it is missing."""

    name: str = Field(
        default="FRAMEOS",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="stream name (letters, digits, `_`, `-`); it holds `PREFIX.*.events`",
    )
    max_age_s: float = Field(
        default=7 * 24 * 3600,
        ge=0,
        le=10 * 365 * 24 * 3600,
        description="seconds an event is kept (0: no limit)",
    )
    max_bytes: int = Field(
        default=1 << 30, ge=-1, le=1 << 50, description="bytes the stream keeps (-1: no limit)"
    )
    max_msgs_per_subject: int = Field(
        default=-1,
        ge=-1,
        le=1 << 40,
        description="events kept per host (-1: no limit); the oldest go first",
    )
    duplicate_window_s: float = Field(
        default=120,
        ge=1,
        le=7 * 24 * 3600,
        description="seconds JetStream remembers a `Nats-Msg-Id` (a resend inside it is dropped)",
    )


class NatsConfig(Model):
    """`forward.nats`: the NATS server with JetStream the events go to."""

    url: str = Field(
        min_length=1,
        max_length=2000,
        pattern=r"^(nats|tls)://[^\s]+$",
        description="the server, e.g. `nats://127.0.0.1:4222` (`tls://` for TLS)",
    )
    subject_prefix: str = Field(
        default="frameos",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="events go to `PREFIX.HOST.events`",
    )
    credentials_file: FsPath | None = Field(
        default=None, description="a NATS `.creds` file (JWT + NKey seed); unset: none"
    )
    stream: StreamLimits = Field(
        default_factory=StreamLimits, description="the stream created when it is missing"
    )


class ForwardConfig(Model):
    """`forward`: send every event to a broker (SPEC §12, [operations.md](operations.md))."""

    nats: NatsConfig = Field(description="NATS JetStream")
    host: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="this host's name in subjects and message ids; unset: the hostname "
        "(dots become `_`)",
    )


class FrameConfig(Model):
    """The whole `frame.json`."""

    model_config = ConfigDict(defer_build=False)  # built at import: every load validates it

    frame_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=253,
        pattern=HOST,
        description="the HTTP server's bind address (an IP address or a host name); a "
        "non-loopback address needs an API token (`auth.token_file`)",
    )
    frame_port: int = Field(
        default=8787,
        ge=0,
        le=65_535,
        description="the HTTP port (0: any free port, reported in `runtime:ready`)",
    )
    server_port: int = Field(
        default=8989,
        ge=0,
        le=65_535,
        description="FrameOS compatibility; not bound by frameos",
    )
    width: int = Field(default=1920, ge=1, le=32_768, description="frame width in pixels")
    height: int = Field(default=1080, ge=1, le=32_768, description="frame height in pixels")
    device: str = Field(default="web_only", max_length=200, description="FrameOS device kind")
    metrics_interval: float = Field(
        default=60.0, ge=1, le=86_400, description="seconds between `runtime:metrics_tick`"
    )
    heartbeat_interval: float = Field(
        default=1.0,
        ge=0.05,
        le=3_600,
        description="seconds between `runtime:heartbeat` (and watchdog liveness)",
    )
    scaling_mode: Literal["cover", "contain", "stretch", "center"] = Field(
        default="cover", description="how scenes fit the frame"
    )
    assets_path: AbsPath = Field(default=Path("/srv/assets"), description="asset directory")
    time_zone: str = Field(default="UTC", max_length=200, description="the frame's time zone")
    log_to_file: FsPath | None = Field(
        default=None,
        description="event log path; overrides `event_log.path`, overridden by `--event-log`",
    )
    state_dir: FsPath | None = Field(
        default=None,
        description="event log, pidfiles, stamps, overlays; unset: `$STATE_DIRECTORY` under "
        "systemd, else `./state`; made absolute at load time",
    )
    event_log: EventLogConfig = Field(
        default_factory=EventLogConfig, description="the durable event log"
    )
    websocket: WebsocketConfig = Field(
        default_factory=WebsocketConfig, description="bounds of `/ws/events` clients"
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="the control API token")
    forward: ForwardConfig | None = Field(
        default=None, description="forward every event to NATS JetStream; unset: no forwarding"
    )
    shutdown_timeout_s: float = Field(
        default=40.0,
        ge=1,
        le=3_600,
        description="seconds; bounds the whole graceful stop, and must exceed every VM's ladder",
    )
    vms: list[VmConfig] = Field(
        default_factory=list,
        max_length=10_000,
        description="VM workers (see [workers.md](workers.md))",
    )

    @model_validator(mode="after")
    def _vms_consistent(self) -> "FrameConfig":
        seen: dict[str, int] = {}
        for index, vm in enumerate(self.vms):
            if vm.name in seen:
                raise PathError(
                    f"vms[{index}].name",
                    f"duplicate VM name {vm.name!r} (also vms[{seen[vm.name]}]); "
                    "names must be unique",
                )
            seen[vm.name] = index
            ladder_s = vm.timeouts.total_ms / 1000
            if ladder_s >= self.shutdown_timeout_s:
                raise PathError(
                    f"vms[{index}].timeouts",
                    f"the stop ladder takes up to {ladder_s:g} s, which does not fit in "
                    f"shutdown_timeout_s ({self.shutdown_timeout_s:g} s); raise shutdown_timeout_s "
                    f"above {ladder_s:g} or shorten the timeouts",
                )
        if found := graph.problems(self.vms):
            raise PathErrors([PathError(path, message) for path, message in found])
        return self
