"""Issue 8 #1 and #7: what `run` would trip over, `check` refuses; the loader cannot be broken.

Each case names the JSON path and the fix in one line, and `check` exits 1 without a traceback.
`test_subprocess_refuses_these_too` shows that each exec-related refusal is one `subprocess`
(hence `trio.run_process`) would raise on at launch: the config refuses nothing launching accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from frameos.config import MAX_CONFIG_BYTES, FrameConfig, load_config, resolve, validate_config
from frameos.errors import ConfigError
from tests.conftest import frameos_argv

ROOT = Path(__file__).parents[1]


def problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resolve(validate_config(data, "frame.json"), "frame.json", env or {})
    found = [str(p) for p in info.value.problems]
    for line in found:
        assert "\n" not in line and "Traceback" not in line
    return found


def vm(**fields: Any) -> dict[str, Any]:
    return {"name": "bad", "command": ["sleep", "1"], **fields}


GOOD = {"name": "good", "command": ["sleep", "600"]}

# (config, JSON path, words of the message)
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"vms": [GOOD, vm(env={"A=B": "x"})]}, 'vms[1].env["A=B"]', "contains '='"),
    ({"vms": [vm(env={"": "x"})]}, 'vms[0].env[""]', "cannot be empty"),
    ({"vms": [vm(env={"A\0": "x"})]}, 'vms[0].env["A\\u0000"]', "NUL byte"),
    ({"vms": [vm(env={"A": "x\0y"})]}, "vms[0].env.A", "NUL byte"),
    ({"vms": [vm(command=["sleep\0", "1"])]}, "vms[0].command[0]", "NUL byte"),
    ({"vms": [vm(command=["sleep", "1\0"])]}, "vms[0].command[1]", "NUL byte"),
    ({"vms": [vm(command=[""])]}, "vms[0].command", "argv[0] is empty"),
    ({"vms": [vm(command=["", "x"])]}, "vms[0].command", "argv[0] is empty"),
    ({"vms": [vm(command=["\ud800"])]}, "vms[0].command[0]", "surrogate"),
    ({"vms": [vm(command=["x" * 200_000])]}, "vms[0].command[0]", "refuses to exec"),
    ({"vms": [vm(env={"A": "x" * 131_070})]}, "vms[0].env.A", "refuses to exec"),
    (
        {"vms": [vm(bootstrap={"steps": [{"name": "s", "command": ["a\0"]}]})]},
        "vms[0].bootstrap.steps[0].command[0]",
        "NUL byte",
    ),
    (
        {"vms": [vm(bootstrap={"steps": [{"name": "s", "command": [""]}]})]},
        "vms[0].bootstrap.steps[0].command",
        "argv[0] is empty",
    ),
    (
        {"vms": [vm(bootstrap={"ssh": {"user": "a\0"}})]},
        "vms[0].bootstrap.ssh.user",
        "NUL byte",
    ),
    (
        {"vms": [vm(cooperative={"method": "command", "command": ["stop\0"]})]},
        "vms[0].cooperative.command[0]",
        "NUL byte",
    ),
    ({"log_to_file": "/tmp/a\0b"}, "log_to_file", "NUL byte"),
    ({"state_dir": "/tmp/a\0b"}, "state_dir", "NUL byte"),
    ({"assets_path": "/srv/a\0b"}, "assets_path", "NUL byte"),
    ({"event_log": {"path": "/tmp/\0"}}, "event_log.path", "NUL byte"),
    ({"auth": {"token_file": "/tmp/\0"}}, "auth.token_file", "NUL byte"),
    ({"vms": [vm(cwd="/tmp/\0")]}, "vms[0].cwd", "NUL byte"),
    ({"vms": [vm(base_image="/b\0.qcow2")]}, "vms[0].base_image", "NUL byte"),
    ({"vms": [vm(overlay_dir="/o\0")]}, "vms[0].overlay_dir", "NUL byte"),
    ({"state_dir": "/" + "a" * 300}, "state_dir", "component of 300 bytes"),
    ({"log_to_file": "/a" * 2000}, "log_to_file", "the path is 4000 bytes"),
    (
        {"vms": [vm(command=["qemu", "-drive", "file={overlay}"])]},
        "vms[0].command[2]",
        "uses {overlay} but no base_image is set",
    ),
    (
        {
            "vms": [
                vm(
                    cooperative={"method": "command", "command": ["stop", "{overlay}"]},
                )
            ]
        },
        "vms[0].cooperative.command[1]",
        "uses {overlay} but no base_image",
    ),
    (
        {"state_dir": "/" + "s/" * 60, "vms": [vm(command=["qemu", "-qmp", "{qmp_socket}"])]},
        "vms[0].command",
        "unix socket paths must be under 108 bytes",
    ),
    (
        {"vms": [vm(command=["q", "{overlay}" * 10_000], base_image="/b.qcow2")]},
        "vms[0].command[1]",
        "once its placeholders are filled in",
    ),
    (
        {"vms": [vm(cooperative={"method": "signal", "signal": "kill"})]},
        "vms[0].cooperative.signal",
        "SIGKILL cannot be caught",
    ),
    ({"frame_host": "a b"}, "frame_host", "an IP address or a host name"),
    ({"frame_host": ""}, "frame_host", "non-empty"),
    (
        {"frame_host": "0.0.0.0", "auth": {"token_file": "/nonexistent/token"}},
        "auth.token_file",
        "/nonexistent/token does not exist; create it: (umask 077; head -c 32 /dev/urandom",
    ),
    ({"event_log": {"max_bytes": 10**20}}, "event_log.max_bytes", "expected a value ≤"),
]


@pytest.mark.parametrize(("data", "path", "words"), REFUSED, ids=[r[1] for r in REFUSED])
def test_check_refuses_what_run_would_trip_over(
    data: dict[str, Any], path: str, words: str
) -> None:
    found = problems(data)
    assert any(line.startswith(f"frame.json: {path}: ") and words in line for line in found), found


@pytest.mark.parametrize(
    ("argv", "env", "cwd"),
    [
        (["x"], {"A=B": "x"}, None),
        (["x"], {"A\0": "x"}, None),
        (["x"], {"A": "x\0"}, None),
        (["x\0"], {}, None),
        (["\ud800"], {}, None),
        (["x"], {"A": "\ud800"}, None),
        (["x"], {}, "/tmp/\0"),
        (["x" * 200_000], {}, None),
    ],
)
def test_subprocess_refuses_these_too(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """The facts the refusals above rest on (trio.lowlevel.open_process is subprocess.Popen)."""
    with pytest.raises((ValueError, UnicodeEncodeError, OSError)):
        subprocess.run(argv, executable="/bin/true", env=env, cwd=cwd, check=False)


def test_an_empty_argv0_cannot_be_executed() -> None:
    with pytest.raises((FileNotFoundError, PermissionError)):
        subprocess.run(["", "x"], env={}, check=False)


def test_a_token_file_that_exists_is_enough(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret\n")
    data = {"frame_host": "0.0.0.0", "auth": {"token_file": str(token)}}
    config = resolve(validate_config(data, "x"), "x", {})
    assert config.auth.token_file == token
    assert problems({"auth": {"token_file": str(tmp_path)}}) == [
        f"frame.json: auth.token_file: {tmp_path} is not a regular file; point it at the file "
        "holding the token"
    ]


def test_a_good_config_is_still_good() -> None:
    config = resolve(
        validate_config(
            {
                "vms": [
                    vm(
                        command=["qemu", "-qmp", "unix:{qmp_socket},server", "{overlay}"],
                        base_image="/b.qcow2",
                        env={"LANG": "C.UTF-8", "EMPTY": ""},
                        cooperative={"method": "command", "command": ["stop", "{qmp_socket}"]},
                    )
                ]
            },
            "x",
        ),
        "x",
        {},
    )
    assert config.vms[0].env == {"LANG": "C.UTF-8", "EMPTY": ""}


# --- the loader (issue 8 #7) --------------------------------------------------------------------


def load_problems(path: Path | str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(Path(path), {})
    found = [str(p) for p in info.value.problems]
    assert len(found) == 1 and "\n" not in found[0], found
    return found


def test_a_huge_integer_is_refused_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text('{\n  "width": ' + "9" * 5000 + "}")
    [line] = load_problems(path)
    assert (
        line == f"{path}: a number of 5000 digits; numbers here have at most 30 at line 2 column 12"
    )


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    [line] = load_problems(path)
    assert line == f"{path}: nested too deeply; at most 64 levels"
    path.write_text('{"vms": ' + "[" * 200 + "]" * 200 + "}")
    [line] = load_problems(path)
    assert line.startswith(f"{path}: vms[0][0][0][0][0][0][0]…: nested deeper than 64 levels")


def test_non_regular_files_are_refused_before_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert load_problems(fifo) == [
        f"{fifo}: is a FIFO, not a regular file; point it at a JSON file"
    ]
    assert load_problems("/dev/zero") == [
        "/dev/zero: is a character device, not a regular file; point it at a JSON file"
    ]
    assert load_problems(tmp_path) == [f"{tmp_path}: is a directory, expected a JSON file"]


def test_a_big_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as file:
        file.truncate(10 * 1024**3)  # sparse: reading it would take minutes
    assert load_problems(path) == [
        f"{path}: is {10 * 1024**3} bytes; a JSON file here holds at most {MAX_CONFIG_BYTES} bytes "
        "(1024 KiB)"
    ]


def test_a_file_that_grows_is_read_at_most_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc files say size 0, and a file may grow after fstat: the read itself stops."""
    import frameos.config.load as load

    path = tmp_path / "f.json"
    path.write_bytes(b" " * (MAX_CONFIG_BYTES + 10))
    real_fstat = os.fstat
    monkeypatch.setattr(
        load.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:]))
    )
    assert load_problems(path) == [
        f"{path}: holds more; a JSON file here holds at most {MAX_CONFIG_BYTES} bytes (1024 KiB)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"width": 1,\n "width": 2}', 'key "width" is given twice in one object; keep one'),
        (b'{"width": NaN}', "NaN is not a JSON number; write a finite number at line 1 column 11"),
        (b'{"width": -Infinity}', "-Infinity is not a JSON number; write a finite number"),
        (b'{"device": "ok\xff"}', "is not UTF-8 text (invalid start byte at byte 14)"),
        (b'{"device": "\\ud800"}', "device: the string holds a lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "the key holds a lone UTF-16 surrogate"),
        (b'{"device": "x"}\0', "invalid JSON at line 1 column 16: Extra data"),
        (b"", "invalid JSON at line 1 column 1: Expecting value"),
        (b'{"width": 1' + b"0" * 200 + b".5}", "write at most 100"),
    ],
)
def test_bad_bytes_get_one_clean_line(tmp_path: Path, text: bytes, expected: str) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(text)
    [line] = load_problems(path)
    assert line.startswith(f"{path}: ") and expected in line


def test_a_nul_in_the_path_is_refused() -> None:
    [line] = load_problems("frame\0.json")
    assert (
        line == "'frame\\x00.json': the path contains a NUL byte or is not encodable; fix the path"
    )


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        frameos_argv("check", *args),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", ["check", "run"])
def test_check_refuses_the_config_that_killed_run(tmp_path: Path, command: str) -> None:
    """Issue 8 #1 as reported: `check` exited 0 and `run` crashed with a traceback, SIGKILLing
    the good VM. Now both refuse the file before anything starts."""
    path = tmp_path / "frame.json"
    data = {"state_dir": str(tmp_path / "state"), "vms": [GOOD, vm(env={"A=B": "x"})]}
    path.write_text(json.dumps(data))
    result = subprocess.run(
        frameos_argv(command, "--config", str(path), "--output", "json"),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert f"{path}: vms[1].env[\"A=B\"]: the environment variable name 'A=B' contains" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "state").exists(), "nothing started"


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_check_never_hangs_on_a_strange_config_path(tmp_path: Path, target: str) -> None:
    """Issue 8 #7 as reported: a FIFO hung `check`, /dev/zero grew its memory until killed."""
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    result = run_check("--config", target, "--output", "json")
    assert result.returncode == 1, result.stderr
    assert "not a regular file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_load_config_is_importable_alone() -> None:
    code = (
        "import sys, frameos.config, frameos.workers.demo;"
        "bad = [m for m in sys.modules if m.startswith(('quart', 'hypercorn', 'frameos.workers.'))"
        " and m != 'frameos.workers.demo'];"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_thousands_of_mistakes_give_a_readable_report(tmp_path: Path) -> None:
    """One problem per line, but not 80,000 lines (nor a did-you-mean search for each)."""
    path = tmp_path / "f.json"
    path.write_text("{" + ",".join(f'"k{i}": 1' for i in range(80_000)) + "}")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == 21
    assert lines[0] == f"{path}: k0: unknown key; known keys: " + ", ".join(
        FrameConfig.model_fields
    )
    assert lines[-1] == f"{path}: and 79980 more problems not shown; fix these first"
