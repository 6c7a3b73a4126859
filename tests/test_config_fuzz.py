"""Issue 8: whatever bytes a config file holds, `load_config` either refuses them cleanly or
yields a config that `run` can act on up to the launch.

"Cleanly": a ConfigError, one line per problem, each naming the file (and a JSON path where
there is one), no traceback. "Can act on": resolve, the event log path, and for every VM the
argv, env and cwd of its process, its stop command and its bootstrap steps, built the way the
workers build them (workers/paths.py, workers/bootstrap.py) and accepted by what `subprocess`
(trio's `open_process`) checks before exec — in-process for speed, and by real `execve` of
/bin/true with those argv and env in a smaller run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from frameos.config import FrameConfig, event_log_path, load_config
from frameos.errors import ConfigError
from frameos.workers import LaunchError
from frameos.workers.bootstrap import BootstrapContext, step_env
from frameos.workers.paths import VmPaths, child_env, substitute, uses_qmp

BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
MAX_ARG_STRLEN = 128 * 1024
ARG_MAX = os.sysconf("SC_ARG_MAX")
SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- raw bytes ----------------------------------------------------------------------------------

junk_text = st.sampled_from(
    [
        "",
        "\0",
        "a\0b",
        "A=B",
        "=",
        "\ud800",
        "\udcff",
        "{overlay}",
        "{qmp_socket}",
        "x{overlay}" * 50,
        "/abs/path",
        "rel/path",
        "/" + "a" * 300,
        "/a" * 2100,
        "x" * 140_000,
        "0.0.0.0",
        "127.0.0.1",
        "localhost",
        "::1",
        "line\nbreak",
        "é☃",
        "sleep",
        "/bin/true",
        "/etc/passwd",
        "SIGUSR1",
        "qmp",
        "command",
        "signal",
    ]
)
junk_number = st.sampled_from([0, -1, 1, 5, 22, 1000, 70_000, 10**30, 1.5, 1e308, -0.0])
junk_scalar = junk_text | junk_number | st.booleans() | st.none()
junk = st.recursive(
    junk_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(junk_text, inner, max_size=3),
    max_leaves=6,
)


def maybe(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = junk) -> Any:
    """Mostly a plausible value, sometimes junk: so that many configs get all the way through."""
    return st.integers(0, 19).flatmap(lambda n: bad if n == 0 else good)


word = st.sampled_from(["sleep", "1", "-c", "--flag=x", "{qmp_socket}", "{overlay}", "é☃"])
absolute = st.sampled_from(["/tmp/frameos-fuzz", "/var/lib/x", "/srv/a b", "/é"])
argv = maybe(st.lists(maybe(word, junk_text), min_size=1, max_size=4))
env = maybe(
    st.dictionaries(
        maybe(st.sampled_from(["A", "LANG", "FRAMEOS_VM", "lower"]), junk_text),
        maybe(st.sampled_from(["", "x", "a b", "=", "é"]), junk_text),
        max_size=3,
    )
)
step = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["s", "provision"])), "command": argv},
    optional={"timeout_ms": maybe(st.just(1000), junk_number), "retries": maybe(st.just(1))},
)
vm = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["a", "b", "vm-1"])), "command": argv},
    optional={
        "env": env,
        "cwd": maybe(absolute, junk_text),
        "base_image": maybe(absolute, junk_text),
        "overlay_dir": maybe(absolute, junk_text),
        "cooperative": st.fixed_dictionaries(
            {},
            optional={
                "method": maybe(st.sampled_from(["qmp", "signal", "command", "none"])),
                "command": argv,
                "signal": maybe(st.sampled_from(["SIGINT", "usr1"]), junk_text),
            },
        ),
        "bootstrap": st.fixed_dictionaries(
            {},
            optional={
                "steps": maybe(st.lists(step, max_size=2)),
                "ssh": st.fixed_dictionaries(
                    {},
                    optional={
                        "user": maybe(st.just("demo"), junk_text),
                        "host": maybe(st.just("127.0.0.1"), junk_text),
                        "port": maybe(st.just(2222), junk_number),
                        "options": maybe(st.lists(maybe(word, junk_text), max_size=2)),
                    },
                ),
            },
        ),
        "timeouts": st.dictionaries(
            st.sampled_from(["cooperative_ms", "sigterm_ms", "sigkill_ms"]),
            maybe(st.sampled_from([1000, 2000]), junk_number),
        ),
        "restart": maybe(st.just({"policy": "transient", "max_restarts": 3}), junk),
    },
)
config = st.fixed_dictionaries(
    {"vms": maybe(st.lists(vm, min_size=1, max_size=3, unique_by=lambda v: str(v["name"])))},
    optional={
        "frame_host": maybe(st.sampled_from(["127.0.0.1", "::1", "localhost"]), junk_text),
        "frame_port": maybe(st.sampled_from([0, 8787]), junk_number),
        "state_dir": maybe(absolute, junk_text),
        "log_to_file": maybe(absolute, junk_text),
        "assets_path": maybe(absolute, junk_text),
        "event_log": maybe(
            st.fixed_dictionaries({}, optional={"path": absolute, "keep": st.just(0)}),
            st.dictionaries(st.sampled_from(["path", "keep", "max_bytes"]), junk_scalar),
        ),
        "auth": maybe(st.just({"token_file": "/etc/passwd"}), junk),
        "websocket": maybe(st.just({"queue_depth": 8}), junk),
    },
)
structured = config.map(lambda data: json.dumps(data).encode("utf-8", "surrogatepass"))


def spliced(data: bytes, at: int, insert: bytes) -> bytes:
    at = at % (len(data) + 1)
    return data[:at] + insert + data[at:]


raw = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 20_000).map(lambda n: b'{"width": ' + b"9" * n + b"}"),
    st.integers(1, 20_000).map(lambda n: b'{"width": 1e' + b"9" * n + b"}"),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.builds(
        spliced,
        structured,
        st.integers(0, 10_000),
        st.sampled_from([b"\0", b"\xff", b"\xc3", b"\xed\xa0\x80"]),
    ),
    structured,
    structured,
    structured,
)


# --- the oracle ---------------------------------------------------------------------------------


def subprocess_accepts(argv: list[str], env: dict[str, str], cwd: Path | None) -> None:
    """What `subprocess.Popen` (and the kernel's execve) check before running anything."""
    assert argv and argv[0], "argv[0] names the program"
    total = 0
    for arg in argv:
        raw_arg = os.fsencode(arg)  # UnicodeEncodeError: not passable
        assert b"\0" not in raw_arg and len(raw_arg) < MAX_ARG_STRLEN
        total += len(raw_arg) + 1
    for key, value in env.items():
        raw_key, raw_value = os.fsencode(key), os.fsencode(value)
        assert raw_key and b"=" not in raw_key and b"\0" not in raw_key + raw_value
        assert len(raw_key) + 1 + len(raw_value) < MAX_ARG_STRLEN
        total += len(raw_key) + len(raw_value) + 2
    assert total < ARG_MAX
    if cwd is not None:
        assert b"\0" not in os.fsencode(cwd)


def processes(config: FrameConfig) -> list[tuple[list[str], dict[str, str], Path | None]]:
    """Every process `run` would start for `config`, built the way the workers build it."""
    assert config.state_dir is not None
    out = []
    for vm in config.vms:
        paths = VmPaths.of(vm, config.state_dir)
        if uses_qmp(vm.command):
            paths.check_socket()
        env = child_env(BASE_ENV, vm.env)
        launch_env = child_env(
            BASE_ENV, {"FRAMEOS_VM": vm.name, "FRAMEOS_VM_ATTEMPT": "1", **vm.env}
        )
        out.append((substitute(vm.command, paths), launch_env, vm.cwd))
        if vm.cooperative_method == "command" and vm.cooperative.command:
            out.append((substitute(vm.cooperative.command, paths), env, vm.cwd))
        if vm.bootstrap is not None:
            ctx = BootstrapContext(vm, paths, env, publisher=None, pid=4_194_304)  # type: ignore[arg-type]
            for bootstrap_step in vm.bootstrap.steps:
                out.append((substitute(bootstrap_step.command, paths), step_env(ctx), vm.cwd))
    return out


def check_outcome(path: Path, data: bytes) -> FrameConfig | None:
    path.write_bytes(data)
    try:
        config = load_config(path, {})
    except ConfigError as exc:
        assert exc.problems  # noqa: PT017 (the property: any failure is a clean ConfigError)
        for problem in exc.problems:
            line = str(problem)
            assert line.startswith(f"{path}: "), line
            assert "\n" not in line and "Traceback" not in line, line
            line.encode("utf-8")  # printable: no lone surrogate reaches a terminal or orjson
        event("refused")
        return None
    for log in (event_log_path(config, None), config.state_dir):
        assert log is not None and b"\0" not in os.fsencode(log)
    try:
        built = processes(config)
    except LaunchError as exc:
        raise AssertionError(f"check passed a config that cannot launch: {exc}") from None
    for argv_, env_, cwd in built:
        subprocess_accepts(argv_, env_, cwd)
    event(f"accepted, {min(len(built), 3)}+ processes")
    return config


@settings(SETTINGS, max_examples=600)
@given(raw)
def test_any_bytes_give_a_clean_refusal_or_a_launchable_config(tmp_path: Path, data: bytes) -> None:
    check_outcome(tmp_path / "frame.json", data)


@settings(SETTINGS, max_examples=60)
@given(structured)
def test_accepted_configs_really_exec(tmp_path: Path, data: bytes) -> None:
    """The in-process oracle agrees with execve: run /bin/true with each argv and env."""
    config = check_outcome(tmp_path / "frame.json", data)
    if config is None:
        return
    for argv_, env_, _cwd in processes(config):
        subprocess.run(argv_, executable="/bin/true", env=env_, check=True, timeout=30)
