"""The command line as a person meets it: errors said once with the right usage, and human
output that reads well. In-process through `main([...])` where that is the real path, and one
real process to show the console script behaves the same."""

from __future__ import annotations

import gc
import json
import subprocess
from pathlib import Path

import pytest

from frameos import events as ev
from frameos.commands import COMMANDS
from tests.conftest import frameos_argv, run_main


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (("run", "--bogus"), "usage: frameos run "),
        (("check", "--bogus", "x"), "usage: frameos check "),
        (("check", "--output", "xml"), "usage: frameos check "),
        (("parity", "--probe-timeout", "soon"), "usage: frameos parity "),
        (("contract", "extra"), "usage: frameos contract"),
        (("bogus",), "usage: frameos [-h]"),
        (("stop",), "usage: frameos stop "),
        (("start", "a", "b"), "usage: frameos start "),
        (("reload", "web"), "usage: frameos reload "),
        (("logs", "web", "--lines", "many"), "usage: frameos logs "),
        (("events", "--since", "x"), "usage: frameos events "),
        ((), "usage: frameos [-h]"),
    ],
)
def test_a_bad_flag_gets_its_commands_usage_and_one_error_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], usage: str
) -> None:
    status, out, err = run_main(capsys, *args)
    assert status == 2
    assert out == ""
    assert err.startswith(usage)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("frameos: error: ")
    assert "frameos frameos" not in err


@pytest.mark.parametrize("args", [("--help",), ("bogus",), ("-h", "run")])
def test_the_top_level_still_names_every_command(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """A command's parser alone is built when argv starts with that command (B6); anything
    else gets the whole parser, whose help and errors list every command."""
    _, out, err = run_main(capsys, *args)
    said = out + err
    for cmd in COMMANDS:
        assert cmd.name in said


@pytest.mark.parametrize(
    "args", [("contract",), ("check", "--config", "/nonexistent/frame.json"), ("bogus",)]
)
def test_the_collector_runs_again_after_start_up(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """`main` starts without cyclic collection (B6); whatever the command did, even a usage
    error, the process collects again afterwards."""
    run_main(capsys, *args)
    assert gc.isenabled()


def test_the_console_script_says_the_same(tmp_path: Path) -> None:
    result = subprocess.run(
        frameos_argv("run", "--bogus"), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: frameos run ")
    assert "frameos: error: unrecognized arguments: --bogus\n" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_and_config_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, "run", "--demo", "--config", "frame.json")
    assert (status, out) == (2, "")
    assert err == "frameos: --demo and --config exclude each other: the demo has its own config\n"


def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "frame.json"
    path.write_text(json.dumps({"vms": [{"command": []}], "bogus": 1}))
    return path


def test_a_failed_check_prints_one_problem_per_line_for_a_person(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = bad_config(tmp_path)
    status, out, err = run_main(capsys, "check", "--config", str(path), "--output", "human")
    assert (status, err) == (1, "")  # said once, by the event
    lines = out.rstrip("\n").split("\n")
    assert lines[0].endswith("check failed: 3 problems")
    problems = [line.strip() for line in lines[1:]]
    assert [p.split(": ")[1] for p in problems] == ["vms[0].name", "vms[0].command", "bogus"]
    assert all(p.startswith(f"- {path}: ") for p in problems)


def test_a_failed_check_in_json_is_one_event_and_the_problems_on_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = bad_config(tmp_path)
    status, out, err = run_main(capsys, "check", "--config", str(path), "--output", "json")
    assert status == 1
    (line,) = out.splitlines()
    envelope = json.loads(line)
    assert envelope["event"] == ev.RuntimeCheckFailed.NAME
    assert len(envelope["fields"]["problems"]) == 3
    assert err.splitlines()[0] == "frameos: configuration has problems:"
    assert len(err.splitlines()) == 4


def test_a_good_check_reads_as_a_sentence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "frame.json"
    path.write_text(json.dumps({"vms": [{"name": "web", "command": ["/bin/true"]}]}))
    status, out, err = run_main(capsys, "check", "--config", str(path), "--output", "human")
    assert status == 0, err
    assert f"config {path} is valid (1 VM, 0 apps, 0 scenes)" in out


CLIENT_COMMANDS = ("start", "stop", "restart", "bootstrap", "clean", "reload", "logs", "events")


def test_contract_lists_the_client_commands_and_their_flags() -> None:
    result = subprocess.run(
        frameos_argv("contract"), capture_output=True, text=True, timeout=30, check=True
    )
    commands = json.loads(result.stdout)["commands"]
    for name in CLIENT_COMMANDS:
        flags = {f["name"] for f in commands[name]["flags"]}
        assert {"--config", "--url", "--token-file"} <= flags, name
    assert "vm" in {f["name"] for f in commands["stop"]["flags"]}
    assert ev.CommandCompleted.NAME in commands["stop"]["events"]
    assert ev.RuntimeReload.NAME in commands["reload"]["events"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("logs", "web", "--lines", "-1"), "frameos: --lines must be 0 or more, found -1\n"),
        (("events", "--since", "-5"), "frameos: --since must be a seq (0 or more), found -5\n"),
        (
            ("events", "--url", "http://127.0.0.1:1", "--event-log", "x"),
            "frameos: --event-log and --url exclude each other: pick the file or the instance\n",
        ),
        (
            ("stop", "web", "--url", "127.0.0.1:8787"),
            "frameos: --url must start with http:// or https://, found '127.0.0.1:8787'\n",
        ),
    ],
)
def test_client_flags_that_do_not_fit_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert run_main(capsys, *args) == (2, "", message)
