"""Loading a config: reading the file (bounded), parsing it (bounded), validating, resolving.

Whatever the file is — a FIFO, `/dev/zero`, a directory, 100,000 nested brackets, a number
thousands of digits long, invalid UTF-8 — `load_config` returns or raises `ConfigError` within
a bounded time and memory, and never prints a traceback. SIGHUP reload uses the same loader.

    read_bytes      open O_NONBLOCK, fstat, refuse non-regular files, read ≤ MAX_CONFIG_BYTES
    parse_json      UTF-8 (the byte offset of a bad one), JSON (line and column), numbers of at
                    most MAX_NUMBER_DIGITS digits, no NaN/Infinity, no duplicate keys, nesting of
                    at most MAX_DEPTH, no lone surrogates
    validate_config the models (frameos/config/models.py), every problem with its JSON path
    resolve         what depends on the environment: state_dir, the token, the paths a VM's
                    processes get (`{qmp_socket}`, `{overlay}`) and the size of what they exec
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from frameos.config.models import MAX_ARG_BYTES, MIB, FrameConfig, VmConfig
from frameos.config.problems import json_path, problems_from
from frameos.errors import ConfigError, Problem

CONFIG_ENV = "FRAMEOS_CONFIG"
DEFAULT_CONFIG = "frame.json"
TOKEN_CREDENTIAL = "frameos-token"
MAX_CONFIG_BYTES = MIB
MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 30
# What one VM's processes may be handed from the config (argv plus env, after substitution),
# leaving the other half of Linux's usual 2 MiB ARG_MAX to the inherited environment.
MAX_EXEC_BYTES = MIB
# sun_path is 108 bytes including the terminating NUL (as workers/paths.py UNIX_PATH_MAX).
UNIX_PATH_MAX = 107

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _fail(source: str, message: str, path: str = "") -> ConfigError:
    return ConfigError([Problem(source, path, message)])


# --- reading ------------------------------------------------------------------------------------


def read_bytes(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The file's bytes: a regular file of at most `limit` bytes, opened without blocking."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise _fail(source, "file not found") from None
    except PermissionError:
        raise _fail(
            source, "cannot be read (permission denied); fix its permissions or run as its owner"
        ) from None
    except OSError as exc:
        raise _fail(source, f"cannot be opened: {exc.strerror or exc}") from None
    except (ValueError, UnicodeError):
        raise _fail(
            ascii(source), "the path contains a NUL byte or is not encodable; fix the path"
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _fail(source, "is a directory, expected a JSON file")
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise _fail(source, f"is {kind}, not a regular file; point it at a JSON file")
        if info.st_size > limit:
            raise _fail(source, _too_big(info.st_size, limit))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _fail(source, _too_big(None, limit))
        return b"".join(chunks)
    except OSError as exc:
        raise _fail(source, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _too_big(size: int | None, limit: int) -> str:
    what = f"is {size} bytes" if size is not None else "holds more"
    return f"{what}; a JSON file here holds at most {limit} bytes ({limit // 1024} KiB)"


# --- parsing ------------------------------------------------------------------------------------


class _Refused(ValueError):
    def __init__(self, message: str, token: str = "") -> None:
        super().__init__(message)
        self.message, self.token = message, token


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        raise _Refused(
            f"a number of {digits} digits; numbers here have at most {MAX_NUMBER_DIGITS}", text
        )
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 100:
        raise _Refused(f"a number written with {len(text)} characters; write at most 100", text)
    return float(text)


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number; write a finite number", name)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {json.dumps(key)} is given twice in one object; keep one")
        out[key] = value
    return out


def _where(text: str, token: str) -> str:
    index = text.find(token) if token else -1
    if index < 0:
        return ""
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f" at line {line} column {column}"


def parse_json(raw: bytes, source: str) -> Any:
    """Decode and parse JSON within the bounds above, or raise a ConfigError that says where."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(source, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as exc:
        raise _fail(
            source, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except _Refused as exc:
        raise _fail(source, f"{exc.message}{_where(text, exc.token)}") from None
    except RecursionError:
        raise _fail(source, f"nested too deeply; at most {MAX_DEPTH} levels") from None
    except ValueError as exc:  # anything else the decoder refuses
        raise _fail(source, f"invalid JSON: {exc}") from None
    _check_tree(data, source)
    return data


def _check_tree(data: Any, source: str) -> None:
    """Nesting of at most MAX_DEPTH; no string (key or value) with a lone surrogate."""
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            raise _fail(source, f"nested deeper than {MAX_DEPTH} levels", json_path(loc[:8]) + "…")
        if isinstance(value, dict):
            for key, item in value.items():
                if _surrogate(key):
                    raise _fail(source, _SURROGATE.format("key"), json_path(loc))
                stack.append((item, (*loc, key)))
        elif isinstance(value, list):
            stack.extend((item, (*loc, index)) for index, item in enumerate(value))
        elif isinstance(value, str) and _surrogate(value):
            raise _fail(source, _SURROGATE.format("string"), json_path(loc))


_SURROGATE = "the {} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape), which is not text"


def _surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_json(path: Path, limit: int = MAX_CONFIG_BYTES) -> Any:
    """Read and parse a JSON file; every failure is a ConfigError naming the file and the fix."""
    return parse_json(read_bytes(path, limit), str(path))


# --- finding, validating, resolving -------------------------------------------------------------


def find_config(explicit: str | None, env: Mapping[str, str]) -> Path:
    """`--config`, else `$FRAMEOS_CONFIG`, else `./frame.json`; never a guess beyond those."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG)
    if default.exists():
        return default
    raise _fail(
        "config",
        f"no config found: looked at --config (not given), ${CONFIG_ENV} (not set) and "
        f"./{DEFAULT_CONFIG} (missing); pass --config PATH, or try `frameos run --demo`",
    )


def validate_config(data: Any, source: str) -> FrameConfig:
    """Validate parsed JSON as a FrameConfig, or raise a ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise _fail(source, f"expected a JSON object at the top level, found {type(data).__name__}")
    try:
        return FrameConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems_from(err, source, FrameConfig)) from None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> FrameConfig:
    """Read (bounded), validate and resolve a config file. Used by `check`, `run` and SIGHUP."""
    env = os.environ if env is None else env
    config = validate_config(read_json(path), str(path))
    return resolve(config, str(path), env)


def resolve(config: FrameConfig, source: str, env: Mapping[str, str]) -> FrameConfig:
    """Fill in what depends on the environment; refuse what `run` would trip over later."""
    state_dir = config.state_dir
    if state_dir is None:
        systemd_state = env.get("STATE_DIRECTORY", "").split(":")[0]
        state_dir = Path(systemd_state) if systemd_state and "\0" not in systemd_state else None
    try:
        state_dir = (state_dir or Path("state")).absolute()
    except OSError as exc:  # a relative state_dir, and the current directory is gone
        raise _fail(
            source, f"cannot be made absolute ({exc.strerror}); give an absolute path", "state_dir"
        ) from None
    config = config.model_copy(update={"state_dir": state_dir})
    problems = _token_problems(config, source, env)
    for index, vm in enumerate(config.vms):
        problems += _launch_problems(vm, index, state_dir, source)
    if problems:
        raise ConfigError(problems)
    return config


def _token_problems(config: FrameConfig, source: str, env: Mapping[str, str]) -> list[Problem]:
    token_file = config.auth.token_file
    if token_file is not None:
        create = f"create it: (umask 077; head -c 32 /dev/urandom | base64 > {token_file})"
        try:
            info = os.stat(token_file)
        except FileNotFoundError:
            return [Problem(source, "auth.token_file", f"{token_file} does not exist; {create}")]
        except OSError as exc:
            return [
                Problem(source, "auth.token_file", f"{token_file} cannot be read: {exc.strerror}")
            ]
        if not stat.S_ISREG(info.st_mode):
            return [
                Problem(
                    source,
                    "auth.token_file",
                    f"{token_file} is not a regular file; point it at the file holding the token",
                )
            ]
    if not is_loopback(config.frame_host) and token_source(config, env) is None:
        return [
            Problem(
                source,
                "frame_host",
                f"binding {config.frame_host!r} (not loopback) needs an API token: set "
                f"auth.token_file to a file holding the token, or pass the systemd credential "
                f"{TOKEN_CREDENTIAL!r} (LoadCredential=); or bind 127.0.0.1",
            )
        ]
    return []


def _launch_problems(vm: VmConfig, index: int, state_dir: Path, source: str) -> list[Problem]:
    """What launching `vm` would refuse: the placeholders, the socket path, the exec size.

    The paths mirror workers/paths.py VmPaths.of (the config cannot import the workers).
    """
    at = f"vms[{index}]"
    qmp = os.fsencode(state_dir / "vms" / f"{vm.name}.qmp")
    overlay = None
    if vm.base_image is not None:
        overlay = os.fsencode((vm.overlay_dir or state_dir / "overlays") / f"{vm.name}.qcow2")
    argvs = [(f"{at}.command", vm.command)]
    if vm.cooperative.command:
        argvs.append((f"{at}.cooperative.command", vm.cooperative.command))
    for number, step in enumerate(vm.bootstrap.steps if vm.bootstrap else []):
        argvs.append((f"{at}.bootstrap.steps[{number}].command", step.command))
    problems: list[Problem] = []
    env_bytes = sum(len(os.fsencode(f"{k}={v}")) + 1 for k, v in vm.env.items())
    for key, value in vm.env.items():
        if len(os.fsencode(f"{key}={value}")) > MAX_ARG_BYTES:
            problems.append(
                Problem(
                    source,
                    json_path(("vms", index, "env", key)),
                    f"`NAME=value` is over {MAX_ARG_BYTES} bytes, which the kernel refuses to "
                    "exec; shorten it",
                )
            )
    if vm.bootstrap is not None:
        options = shlex.join(vm.bootstrap.ssh.options)
        if len(os.fsencode(options)) + 20 > MAX_ARG_BYTES:
            problems.append(
                Problem(
                    source,
                    f"{at}.bootstrap.ssh.options",
                    f"FRAMEOS_SSH_OPTIONS would be over {MAX_ARG_BYTES} bytes; pass fewer options",
                )
            )
    for where, argv in argvs:
        total = env_bytes
        for number, arg in enumerate(argv):
            raw = os.fsencode(arg)
            size = len(raw) + raw.count(b"{qmp_socket}") * (len(qmp) - len(b"{qmp_socket}"))
            if b"{overlay}" in raw:
                if overlay is None:
                    problems.append(
                        Problem(
                            source,
                            f"{where}[{number}]",
                            "uses {overlay} but no base_image is set; set base_image or "
                            "remove the placeholder",
                        )
                    )
                    continue
                size += raw.count(b"{overlay}") * (len(overlay) - len(b"{overlay}"))
            if size > MAX_ARG_BYTES:
                problems.append(
                    Problem(
                        source,
                        f"{where}[{number}]",
                        f"is {size} bytes once its placeholders are filled in; the kernel "
                        f"refuses to exec one over {MAX_ARG_BYTES}: shorten it",
                    )
                )
            total += size + 1
        if total > MAX_EXEC_BYTES:
            problems.append(
                Problem(
                    source,
                    where,
                    f"its argv and the VM's env come to {total} bytes; keep them under "
                    f"{MAX_EXEC_BYTES} (the kernel's limit is shared with the inherited "
                    "environment)",
                )
            )
    if any("{qmp_socket}" in arg for arg in vm.command) and len(qmp) > UNIX_PATH_MAX:
        problems.append(
            Problem(
                source,
                f"{at}.command",
                f"the QMP socket path {os.fsdecode(qmp)} is {len(qmp)} bytes; unix socket paths "
                "must be under 108 bytes: choose a shorter state_dir or VM name",
            )
        )
    serial = os.fsencode(state_dir / "vms" / f"{vm.name}.serial")  # QEMU connects by path
    if any("{notify_chardev}" in arg for arg in vm.command) and len(serial) > UNIX_PATH_MAX:
        problems.append(
            Problem(
                source,
                f"{at}.command",
                f"the notify serial socket path {os.fsdecode(serial)} ({{notify_chardev}}) is "
                f"{len(serial)} bytes; unix socket paths must be under 108 bytes: choose a "
                "shorter state_dir or VM name",
            )
        )
    return problems


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
    if creds and "\0" not in creds and (Path(creds) / TOKEN_CREDENTIAL).is_file():
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
