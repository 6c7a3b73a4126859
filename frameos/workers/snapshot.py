"""What `GET /v1/vms/{name}` answers (SPEC §7.3): one VM's state as a pydantic model.

`VmPool.snapshot(name)` builds it; the config is the effective one (what the next launch uses),
with the values of `env` keys that look secret (TOKEN, SECRET, PASSWORD, KEY, CREDENTIAL, any
case) replaced by "***". Times are UNIX epoch seconds.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from frameos.config import VmConfig

SECRET_KEY = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|CREDENTIAL", re.IGNORECASE)
REDACTED = "***"

StepStatus = Literal["pending", "running", "success", "skipped", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LastExit(_Model):
    exit_code: int | None = Field(description="the exit status; None when killed by a signal")
    signal: str | None = Field(description="the signal that ended it (SIGKILL, ...)")
    at: float = Field(description="when frameos saw the exit (epoch seconds)")


class StepSnapshot(_Model):
    name: str
    status: StepStatus
    duration_ms: int | None = None


class BootstrapSnapshot(_Model):
    status: Literal["none", "pending", "running", "ok", "failed"] = Field(
        description="the bootstrap of the current launch (`ok` also when there are no steps)"
    )
    steps: list[StepSnapshot]


class ProbeSnapshot(_Model):
    kind: Literal["exec", "http", "tcp", "notify", "watchdog"]
    status: Literal["unknown", "healthy", "unhealthy"] = Field(
        description="`unknown` until its thresholds decide (or before its initial delay)"
    )
    failures: int = Field(description="failed attempts in a row")
    detail: str = Field(description="the last attempt's outcome (bounded, control chars removed)")


class HealthSnapshot(_Model):
    status: Literal["ready", "starting", "unhealthy", "down"] = Field(
        description="`ready`; `starting`: running, not ready yet; `unhealthy`: a probe fails; "
        "`down`: not running"
    )
    ready: bool = Field(description="running, bootstrapped, readiness passed (SPEC §5.2)")
    readiness: ProbeSnapshot | None
    liveness: ProbeSnapshot | None = Field(description="the liveness probe, or `watchdog_ms`")
    status_text: str | None = Field(description="the last STATUS= on the notify socket")
    stopping: bool = Field(description="the VM said STOPPING=1 in this launch")
    probe_failures: int = Field(description="failed probe attempts so far, every launch")
    notify_dropped: int = Field(description="notify messages dropped (foreign sender, oversize)")


class VmSnapshot(_Model):
    name: str
    state: Literal[
        "idle", "starting", "running", "backoff", "finished", "gave_up", "stopping", "stopped"
    ]
    pid: int | None
    uptime_s: float
    attempt: int = Field(description="launches so far (this run of frameos)")
    restarts: int = Field(description="restarts the policy granted so far")
    last_exit: LastExit | None
    backoff_until: float | None = Field(description="when the next launch is due (backoff)")
    operator_stopped: bool = Field(description="stopped by an operator: no policy restarts it")
    bootstrap: BootstrapSnapshot
    health: HealthSnapshot | None = Field(
        default=None, description="readiness, liveness and the notify socket (SPEC §5.2)"
    )
    config: dict[str, Any] = Field(description="the effective VmConfig; secret env values ***")
    output_log: str = Field(description="the file with the VM's stdout and stderr")
    waiting_for: str | None = Field(
        default=None,
        description="while its launch waits on `depends_on`: what it waits for, e.g. "
        "`db (ready), cache (started)`",
    )


def redacted_config(vm: VmConfig) -> dict[str, Any]:
    """`vm` as JSON-ready data, secret-looking env values replaced by "***"."""
    data = vm.model_dump(mode="json")
    data["env"] = {k: REDACTED if SECRET_KEY.search(k) else v for k, v in vm.env.items()}
    return data
