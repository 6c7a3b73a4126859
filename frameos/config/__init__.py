"""Configuration (SPEC §2, §5): the models, their errors, and a loader that cannot be broken.

    models.py    the pydantic models: every key, its default, range and description
    problems.py  pydantic errors → one `Problem` per line, with the JSON path and the fix
    load.py      reading (bounded, non-blocking), parsing, validating, resolving
    reference.py docs/configuration.md's tables, generated from the models

The demo config lives next to the demo VMs (frameos/workers/demo.py `demo_config()`): nothing
here imports `frameos.workers`.
"""

from __future__ import annotations

from frameos.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    MAX_CONFIG_BYTES,
    TOKEN_CREDENTIAL,
    diff,
    event_log_path,
    find_config,
    is_loopback,
    load_config,
    parse_json,
    read_bytes,
    read_json,
    resolve,
    token_source,
    validate_config,
)
from frameos.config.models import (
    MIB,
    PATTERN_HINTS,
    VM_NAME,
    AuthConfig,
    BootstrapConfig,
    BootstrapStep,
    CooperativeConfig,
    CooperativeMethod,
    EventLogConfig,
    FrameConfig,
    Model,
    RestartConfig,
    SshConfig,
    TimeoutsConfig,
    VmConfig,
    WebsocketConfig,
)
from frameos.config.problems import json_path, problems_from

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "MAX_CONFIG_BYTES",
    "MIB",
    "PATTERN_HINTS",
    "TOKEN_CREDENTIAL",
    "VM_NAME",
    "AuthConfig",
    "BootstrapConfig",
    "BootstrapStep",
    "CooperativeConfig",
    "CooperativeMethod",
    "EventLogConfig",
    "FrameConfig",
    "Model",
    "RestartConfig",
    "SshConfig",
    "TimeoutsConfig",
    "VmConfig",
    "WebsocketConfig",
    "diff",
    "event_log_path",
    "find_config",
    "is_loopback",
    "json_path",
    "load_config",
    "parse_json",
    "problems_from",
    "read_bytes",
    "read_json",
    "resolve",
    "token_source",
    "validate_config",
]
