"""Every event frameos emits, declared once as a frozen pydantic model (SPEC §3).

The contract (`frameos contract`), the JSON Schemas, docs/events.md and the human renderer all
derive from these classes; nothing else lists event fields. An event's envelope is
`{"v", "seq", "timestamp", "event", "severity", "fields"}`, built once by the bus.

Compatibility: fields are only ever added; renaming or removing one bumps `ENVELOPE_VERSION`.
"""

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

ENVELOPE_VERSION = 1

Severity = Literal["debug", "info", "progress", "warn", "error", "blocker"]
SEVERITIES: tuple[Severity, ...] = ("debug", "info", "progress", "warn", "error", "blocker")

# Annotations are evaluated by the interpreter (no `from __future__ import annotations`): pydantic
# then skips evaluating ~270 strings at import, a third of this module's import time.
REGISTRY: dict[str, type["Event"]] = {}


class Event(BaseModel):
    """Base of every event: frozen, strict, registered under its wire name."""

    # defer_build: `check` and `contract` start fast; each schema is built on first use
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, defer_build=True)

    NAME: ClassVar[str] = ""
    SEVERITY: ClassVar[Severity] = "info"
    # How a person reads it: `{field}` placeholders; render.py adds the specs `{n:size}` (bytes
    # as B/KiB/MiB) and `{n:count noun}` ("1 restart", "4 restarts").
    TEMPLATE: ClassVar[str] = ""

    # The run that caused this event (SPEC §7.3), on every event a run causes; omitted from the
    # JSON when None, so an event no run caused keeps its bytes.
    run_id: str | None = Field(default=None, exclude_if=lambda v: v is None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if not cls.NAME:
            raise TypeError(f"{cls.__name__} declares no NAME")
        if cls.NAME in REGISTRY:
            raise TypeError(f"event {cls.NAME!r} declared twice")
        REGISTRY[cls.NAME] = cls

    def to_json(self) -> bytes:
        """The `fields` object of the envelope, as JSON bytes (aliases applied)."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True)


# --- runtime ----------------------------------------------------------------------------------


class RuntimeStart(Event):
    NAME = "runtime:start"
    TEMPLATE = "frameos starting on {server} (config {config})"
    server: str
    apps_loaded: int
    scenes_loaded: int
    config: str


class RuntimeReady(Event):
    NAME = "runtime:ready"
    TEMPLATE = "ready: health {health_endpoint}, events over {event_stream_transport}"
    server: str
    health_endpoint: str
    event_stream_transport: str
    metrics_interval_seconds: float
    apps_loaded: int
    scenes_loaded: int


class RuntimeHeartbeat(Event):
    NAME = "runtime:heartbeat"
    SEVERITY = "debug"
    TEMPLATE = "heartbeat: up {uptime_seconds:.0f} s, loop lag {loop_lag_ms:.2f} ms"
    uptime_seconds: float
    server: str
    loop_lag_ms: float


class RuntimeMetricsTick(Event):
    NAME = "runtime:metrics_tick"
    TEMPLATE = (
        "metrics: rss {rss_bytes:size}, cpu {cpu_seconds:.2f} s, {open_fds} fds, "
        "{events_published:count event} ({events_dropped} dropped), {ws_clients:count ws client}"
    )
    uptime_seconds: float
    metrics_interval_seconds: float
    apps_loaded: int
    scenes_loaded: int
    rss_bytes: int
    cpu_seconds: float
    open_fds: int
    events_published: int
    events_dropped: int
    ws_clients: int


class RuntimeStopping(Event):
    NAME = "runtime:stopping"
    TEMPLATE = "stopping: {reason}"
    reason: str
    signal: str | None = None


class RuntimeStop(Event):
    NAME = "runtime:stop"
    TEMPLATE = "stopped after {duration_ms} ms"
    server: str
    metrics_interval_seconds: float
    apps_loaded: int
    scenes_loaded: int
    duration_ms: int


class ReloadVms(BaseModel):
    """What a reload did to each VM, by name (SPEC §5.1)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    restarted: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)


class RuntimeReload(Event):
    NAME = "runtime:reload"
    TEMPLATE = "reload: changed {changed}; error {error}"  # render.py says it better
    changed: list[str]
    error: str | None = None
    vms: ReloadVms = Field(default_factory=ReloadVms)


class RuntimeCheckOk(Event):
    NAME = "runtime:check_ok"
    TEMPLATE = (
        "config {config} is valid "
        "({vms:count VM}, {apps_loaded:count app}, {scenes_loaded:count scene})"
    )
    config: str
    vms: int
    apps_loaded: int
    scenes_loaded: int


class RuntimeCheckFailed(Event):
    NAME = "runtime:check_failed"
    SEVERITY = "error"
    TEMPLATE = "check failed: {error}"
    error: str
    problems: list[str] = Field(default_factory=list)


ContractSource = Literal["fixture", "discovered"]


class RuntimeParityOk(Event):
    NAME = "runtime:parity_ok"
    TEMPLATE = (
        "renderer {renderer_api_version} and driver {driver_api_version} "
        "({driver_device_kind}) agree on {shared_formats}"
    )
    renderer_api_version: str
    driver_api_version: str
    driver_device_kind: str
    shared_formats: list[str]
    renderer_target_fps: float
    renderer_tick_budget_ms: float
    renderer_drop_policy: str
    driver_backpressure_policy: str
    driver_max_queue_depth: int
    renderer_contract_source: ContractSource
    driver_contract_source: ContractSource


class RuntimeParityFailed(Event):
    NAME = "runtime:parity_failed"
    SEVERITY = "error"
    TEMPLATE = "parity failed: {error}"
    error: str
    duration_ms: int
    renderer_contract_source: ContractSource | None = None
    driver_contract_source: ContractSource | None = None


class Message(Event):
    NAME = "message"
    TEMPLATE = "{text}"
    text: str


# --- VM lifecycle -----------------------------------------------------------------------------


class VmOverlayPrepared(Event):
    NAME = "vm.overlay_prepared"
    TEMPLATE = "{vm}: overlay {overlay_path} on {base_image}"
    vm: str
    overlay_path: str
    base_image: str


class VmLayerDiscarded(Event):
    NAME = "vm.layer_discarded"
    TEMPLATE = "{vm}: overlay {overlay_path} discarded ({reason}, {reclaimed_bytes:size})"
    vm: str
    overlay_path: str
    reclaimed_bytes: int
    reason: Literal["shutdown", "orphan"]


class VmLaunched(Event):
    NAME = "vm.launched"
    TEMPLATE = "{vm}: launched (pid {pid})"  # render.py: "launched again (…, attempt N)"
    vm: str
    pid: int
    attempt: int


class VmExited(Event):
    NAME = "vm.exited"
    TEMPLATE = "{vm}: pid {pid} exited (code {exit_code}, signal {signal}) after {uptime_ms} ms"
    vm: str
    pid: int
    exit_code: int | None
    signal: str | None
    uptime_ms: int
    expected: bool


class VmRestartScheduled(Event):
    NAME = "vm.restart_scheduled"
    SEVERITY = "warn"
    TEMPLATE = "{vm}: restarting in {backoff_ms} ms"  # render.py adds "(attempt N)"
    vm: str
    attempt: int
    backoff_ms: int


class VmGaveUp(Event):
    NAME = "vm.gave_up"
    SEVERITY = "error"
    TEMPLATE = "{vm}: gave up after {restarts:count restart} in {window_s:g} s"
    vm: str
    restarts: int
    window_s: float


class VmWaiting(Event):
    NAME = "vm.waiting"
    TEMPLATE = "{vm}: waiting for {on} ({condition}) before its launch"
    vm: str
    on: str  # the VM it depends on (`depends_on`, SPEC §5.2)
    condition: Literal["started", "ready"]


class VmShutdownRequested(Event):
    NAME = "vm.shutdown_requested"
    TEMPLATE = "{vm}: shutdown requested ({reason}; at most {deadline_ms} ms)"
    vm: str
    reason: str
    # the whole ladder's budget (the rungs' timeouts this VM was launched with); 0: nothing ran
    deadline_ms: int = 0


class VmCooperativeAttempted(Event):
    NAME = "vm.cooperative_attempted"
    SEVERITY = "progress"
    TEMPLATE = "{vm}: asking the guest to stop ({method}, {timeout_ms} ms)"
    vm: str
    method: Literal["qmp", "signal", "command", "none"]
    timeout_ms: int


class VmCooperativeSucceeded(Event):
    NAME = "vm.cooperative_succeeded"
    TEMPLATE = "{vm}: stopped cooperatively in {elapsed_ms} ms"
    vm: str
    elapsed_ms: int


class VmCooperativeTimedOut(Event):
    NAME = "vm.cooperative_timed_out"
    SEVERITY = "warn"
    TEMPLATE = "{vm}: cooperative stop gave no result after {waited_ms} ms ({reason})"
    vm: str
    waited_ms: int
    reason: Literal["timeout_expired", "channel_unavailable", "channel_error"]
    detail: str | None = None


class VmShutdownEscalated(Event):
    NAME = "vm.shutdown_escalated"
    SEVERITY = "warn"
    TEMPLATE = "{vm}: escalating to {signal} ({timeout_ms} ms)"
    vm: str
    signal: Literal["SIGTERM", "SIGKILL"]
    timeout_ms: int


class VmShutdownComplete(Event):
    NAME = "vm.shutdown_complete"
    TEMPLATE = "{vm}: shutdown {outcome} in {total_ms} ms"
    vm: str
    outcome: Literal["graceful", "forced"]
    total_ms: int
    changed: bool


# --- health (SPEC §5.2) -----------------------------------------------------------------------


class VmReady(Event):
    NAME = "vm.ready"
    TEMPLATE = "{vm}: ready {after_ms} ms after its launch"
    vm: str
    after_ms: int  # since this launch


class VmHealth(Event):
    NAME = "vm.health"
    TEMPLATE = "{vm}: {probe} {status}: {detail} ({failures:count failure} in a row)"
    vm: str
    probe: Literal["readiness", "liveness"]
    status: Literal["healthy", "unhealthy"]  # unhealthy is published as warn
    failures: int  # consecutive failed attempts
    detail: str  # the last attempt's outcome (its output, bounded and stripped)


class VmStatus(Event):
    NAME = "vm.status"
    TEMPLATE = "{vm}: {text}"
    vm: str
    text: str  # STATUS= from the VM's notify socket (bounded, control characters removed)


# --- bootstrap --------------------------------------------------------------------------------


class SshInfo(BaseModel):
    """SSH metadata of a bootstrap plan."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    user: str | None = None
    host: str | None = None
    port: int = 22
    identity: str | None = None
    options: list[str] = Field(default_factory=list)


class BootstrapPlanned(Event):
    NAME = "bootstrap.planned"
    TEMPLATE = "{vm}: bootstrap {action} ({trigger}: {reason}); steps {steps}"
    vm: str
    steps: list[str]
    trigger: Literal["auto", "always"]
    ssh: SshInfo
    action: Literal["would_run", "would_skip"]
    reason: str


class BootstrapStarted(Event):
    NAME = "bootstrap.started"
    SEVERITY = "progress"
    TEMPLATE = "{vm}: bootstrap started ({trigger})"
    vm: str
    trigger: Literal["auto", "always"]


class BootstrapStep(Event):
    NAME = "bootstrap.step"
    SEVERITY = "progress"
    TEMPLATE = "{vm}: step {step} {status} in {duration_ms} ms (attempt {attempt})"
    vm: str
    step: str
    status: Literal["success", "skipped", "failed"]
    duration_ms: int
    attempt: int
    detail: str | None = None


class BootstrapCompleted(Event):
    NAME = "bootstrap.completed"
    TEMPLATE = "{vm}: bootstrap {status} in {duration_ms} ms"
    vm: str
    status: Literal["success", "noop"]
    duration_ms: int


class BootstrapFailed(Event):
    NAME = "bootstrap.failed"
    SEVERITY = "error"
    TEMPLATE = "{vm}: bootstrap failed after {duration_ms} ms: {error}"
    vm: str
    duration_ms: int
    error: str


class CleanupProgress(Event):
    NAME = "cleanup.progress"
    SEVERITY = "progress"
    TEMPLATE = "cleanup {kind} {path} ({bytes:size}, dry run {dry_run})"
    path: str
    kind: str
    bytes: int
    dry_run: bool
    skipped_reason: str | None = None


# --- control API runs -------------------------------------------------------------------------


class CommandAccepted(Event):
    NAME = "command.accepted"
    TEMPLATE = "run {run_id}: {op} {target} accepted"
    run_id: str
    op: str
    target: str | None  # a VM name; None for a reload
    idempotency_key: str | None = None


class CommandRejected(Event):
    NAME = "command.rejected"
    SEVERITY = "warn"
    TEMPLATE = "{op} {target} rejected: {reason} ({detail})"
    op: str
    target: str | None  # a VM name; None for a reload
    reason: str
    detail: str


class CommandCompleted(Event):
    NAME = "command.completed"
    TEMPLATE = "run {run_id} completed in {duration_ms} ms"
    run_id: str
    duration_ms: int


class CommandFailed(Event):
    NAME = "command.failed"
    SEVERITY = "error"
    TEMPLATE = "run {run_id} failed: {error}"
    run_id: str
    error: str


class CommandCanceled(Event):
    NAME = "command.canceled"
    SEVERITY = "warn"
    TEMPLATE = "run {run_id} canceled: {reason}"
    run_id: str
    reason: str


# --- external workers -------------------------------------------------------------------------


class WorkerRegistered(Event):
    NAME = "worker.registered"
    TEMPLATE = "worker {worker_id} registered by {owner}"
    worker_id: str
    owner: str


class WorkerStatus(Event):
    NAME = "worker.status"
    TEMPLATE = "worker {worker_id}: {from} → {to}"
    worker_id: str
    from_: str = Field(alias="from")
    to: str


class WorkerStale(Event):
    NAME = "worker.stale"
    SEVERITY = "warn"
    TEMPLATE = "worker {worker_id} stale (last heartbeat {last_heartbeat_age_s:.1f} s ago)"
    worker_id: str
    last_heartbeat_age_s: float


class Summary(Event):
    NAME = "summary"
    TEMPLATE = (
        "summary: {duration_ms} ms, exit {exit_status}, {vms:count VM}, {restarts:count restart}, "
        "{events_published:count event} ({events_dropped} dropped), {bytes_logged:size} logged"
    )
    duration_ms: int
    exit_status: int
    vms: int
    restarts: int
    events_published: int
    events_dropped: int
    bytes_logged: int


def field_names(cls: type[Event]) -> list[str]:
    """The wire names of an event's fields, in declaration order; the base's optional `run_id`
    comes last unless the event declares it itself (command.*)."""
    own = vars(cls).get("__annotations__", {})
    base = [name for name in Event.model_fields if name not in own]
    names = [name for name in cls.model_fields if name not in base] + base
    return [cls.model_fields[name].alias or name for name in names]
