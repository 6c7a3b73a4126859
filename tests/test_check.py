"""`frameos check` catches what cannot run (issue 13): each problem with its JSON path and the
fix, every one at once, exit 1; `check --plan` prints the start order. In-process through
`main([...])`, the real path of the command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from frameos import events as ev
from frameos.cli import main


def check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, vms: list[dict[str, Any]], *flags: str
) -> tuple[int, list[dict[str, Any]]]:
    """Run `frameos check` on a config with `vms`; (status, the events it printed)."""
    path = tmp_path / "frame.json"
    path.write_text(json.dumps({"state_dir": str(tmp_path / "state"), "vms": vms}))
    try:
        status = main(["check", "--config", str(path), "--output", "json", *flags])
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, _ = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()]


def problems(capsys: pytest.CaptureFixture[str], tmp_path: Path, *vms: dict[str, Any]) -> list[str]:
    """The problems `check` reports, each without the file name."""
    status, events = check(capsys, tmp_path, list(vms))
    assert status == 1
    (failed,) = events
    assert failed["event"] == ev.RuntimeCheckFailed.NAME
    prefix = f"{tmp_path / 'frame.json'}: "
    assert all(p.startswith(prefix) for p in failed["fields"]["problems"])
    return [p.removeprefix(prefix) for p in failed["fields"]["problems"]]


def vm(name: str = "web", **kw: Any) -> dict[str, Any]:
    return {"name": name, "command": [sys.executable, "-c", "pass"], **kw}


def test_a_misspelled_program_is_not_on_the_path_and_a_close_name_is_offered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "python3"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (line,) = problems(
        capsys, tmp_path, vm(command=["pyhton3", "-c", "1"], env={"PATH": str(bin_dir)})
    )
    assert line == (
        f"vms[0].command[0]: 'pyhton3' is not on the PATH ({bin_dir}); did you mean "
        "'python3'? install it, fix the name, or give its full path"
    )


def test_the_path_searched_is_frameoss_when_the_vm_sets_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    (line,) = problems(capsys, tmp_path, vm(command=["true"]))
    assert line.startswith(f"vms[0].command[0]: 'true' is not on the PATH ({tmp_path}/nowhere)")
    monkeypatch.setenv("PATH", os.defpath)
    status, _ = check(capsys, tmp_path, [vm(command=["true"])])
    assert status == 0


def test_a_program_that_is_not_executable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "start.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    if os.access(script, os.X_OK):  # a file with no x bit: nobody, root included, runs it
        pytest.skip("this user executes files without an x bit")
    (line,) = problems(capsys, tmp_path, vm(command=[str(script)]))
    assert line == (
        f"vms[0].command[0]: '{script}' ({script}) is not executable by this user; chmod +x it "
        "or fix the path"
    )


def test_a_program_path_that_does_not_exist_relative_to_cwd(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (line,) = problems(capsys, tmp_path, vm(command=["./run.sh"], cwd=str(tmp_path)))
    assert line == (
        f"vms[0].command[0]: './run.sh' does not exist (relative to {tmp_path}); install it or "
        "fix the path"
    )
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    assert check(capsys, tmp_path, [vm(command=["./run.sh"], cwd=str(tmp_path))])[0] == 0


def test_a_missing_cwd(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (line,) = problems(capsys, tmp_path, vm(cwd=str(tmp_path / "gone")))
    assert line == f"vms[0].cwd: {tmp_path}/gone does not exist; create it or fix `cwd`"
    (tmp_path / "file").write_text("")
    (line,) = problems(capsys, tmp_path, vm(cwd=str(tmp_path / "file")))
    assert line == f"vms[0].cwd: {tmp_path}/file is not a directory; create it or fix `cwd`"


def test_a_missing_base_image(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (line,) = problems(capsys, tmp_path, vm(base_image=str(tmp_path / "base.qcow2")))
    assert line == (
        f"vms[0].base_image: {tmp_path}/base.qcow2 does not exist; point it at the disk image "
        "to use"
    )


def test_a_missing_overlay_dir_parent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "base.qcow2").write_bytes(b"")
    config = vm(base_image=str(tmp_path / "base.qcow2"), overlay_dir=str(tmp_path / "a" / "b"))
    (line,) = problems(capsys, tmp_path, config)
    assert line == (
        f"vms[0].overlay_dir: its parent {tmp_path}/a does not exist (frameos creates b inside "
        f"it, not above it); create {tmp_path}/a or choose another overlay_dir"
    )
    (tmp_path / "a").mkdir()  # the overlay_dir itself frameos makes
    assert check(capsys, tmp_path, [config])[0] == 0


def test_a_bootstrap_step_and_a_stop_command_that_are_not_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = vm(
        bootstrap={
            "steps": [{"name": "ok", "command": ["true"]}, {"name": "x", "command": ["nope-x"]}]
        },
        cooperative={"method": "command", "command": [str(tmp_path / "stop.sh")]},
    )
    lines = problems(capsys, tmp_path, config)
    assert [line.split(": ")[0] for line in lines] == [
        "vms[0].cooperative.command[0]",
        "vms[0].bootstrap.steps[1].command[0]",
    ]


def test_an_exec_probe_that_is_not_found_and_a_probe_url_that_is_not_http(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    health = {
        "readiness": {"http": {"url": "ftp://127.0.0.1/ready"}},
        "liveness": {"exec": {"command": ["/opt/nothing/alive"]}},
    }
    url, alive = problems(capsys, tmp_path, vm(health=health))
    assert url.startswith("vms[0].health.readiness.http.url: ")
    assert "http" in url.split(": ", 1)[1]
    assert alive.startswith("vms[0].health.liveness.exec.command[0]: '/opt/nothing/alive' ")
    health["readiness"] = {"exec": {"command": ["true"]}}
    (line,) = problems(capsys, tmp_path, vm(health=health))
    assert line == (
        "vms[0].health.liveness.exec.command[0]: '/opt/nothing/alive' does not exist; install "
        "it or fix the path"
    )


def test_placeholders_in_argv0_are_not_checked_as_paths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "base.qcow2").write_bytes(b"")
    config = vm(
        command=["{overlay}", "-qmp", "unix:{qmp_socket},server"],
        base_image=str(tmp_path / "base.qcow2"),
        cooperative={"method": "command", "command": ["{qmp_socket}"]},
    )
    assert check(capsys, tmp_path, [config])[0] == 0


def test_a_dependency_cycle_and_an_unknown_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = problems(
        capsys,
        tmp_path,
        vm("a", depends_on={"b": "ready"}),
        vm("b", depends_on={"a": "started", "c": "ready"}),
    )
    assert lines == [
        "vms[1].depends_on.c: no VM is named 'c'; name one of the VMs in `vms` (known: a, b)",
        "vms[0].depends_on.b: dependency cycle a → b → a: none of them could ever launch; "
        "remove one of these dependencies",
    ]


def test_every_problem_at_once_one_line_each(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = problems(
        capsys,
        tmp_path,
        vm("db", command=["pyhton3"], cwd=str(tmp_path / "gone")),
        vm("disk", base_image=str(tmp_path / "none.qcow2"), overlay_dir="/nonexistent/x/y"),
        vm("web", bootstrap={"steps": [{"name": "s", "command": ["/opt/nothing/setup.sh"]}]}),
    )
    assert [line.split(": ")[0] for line in lines] == [
        "vms[0].cwd",
        "vms[0].command[0]",
        "vms[1].base_image",
        "vms[1].overlay_dir",
        "vms[2].bootstrap.steps[0].command[0]",
    ]
    assert all("\n" not in line and "Traceback" not in line for line in lines)


def test_the_models_the_graph_and_the_host_problems_in_one_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """D1: a probe URL the models refuse hid the cycle, and the cycle hid the host problems
    (three rounds of `check` for one config); now one run reports all four."""
    lines = problems(
        capsys,
        tmp_path,
        vm(
            "web",
            command=["pyhton3", "-c", "1"],
            depends_on={"db": "started"},
            health={"readiness": {"http": {"url": "ftp://127.0.0.1/ready"}}},
        ),
        vm("db", cwd=str(tmp_path / "gone"), depends_on={"worker": "started"}),
        vm("worker", depends_on={"web": "ready"}),
    )
    assert [line.split(": ")[0] for line in lines] == [
        "vms[0].health.readiness.http.url",
        "vms[0].depends_on.db",
        "vms[0].command[0]",
        "vms[1].cwd",
    ]
    assert "dependency cycle web → db → worker → web" in lines[1]
    assert "'pyhton3' is not on the PATH" in lines[2]
    assert lines[3] == f"vms[1].cwd: {tmp_path}/gone does not exist; create it or fix `cwd`"


def test_a_refused_vm_is_still_checked_as_far_as_it_validates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What a VM's failed keys make uncheckable is left out (no false problem): a bad `env`
    or `command` skips its programs; other VMs and its other keys are checked; the graph's
    problems are reported when another part of the config (`vms[1].name`) fails too."""
    lines = problems(
        capsys,
        tmp_path,
        vm("a", command=["pyhton3"], env={"A=B": "1"}, cwd=str(tmp_path / "gone")),
        vm("b b", command=["nope-x"], depends_on={"c": "ready"}),
        vm("c", command=[], depends_on={"c": "ready"}),
    )
    assert [line.split(": ")[0] for line in lines] == [
        'vms[0].env["A=B"]',
        "vms[1].name",
        "vms[2].command",
        "vms[2].depends_on.c",
        "vms[0].cwd",
        "vms[1].command[0]",
    ]
    assert "a VM cannot depend on itself" in lines[3]


def test_a_bad_depends_on_entry_is_said_once_and_does_not_hide_a_cycle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = problems(
        capsys,
        tmp_path,
        vm("a", depends_on={"B!": "ready", "b": "bogus"}),
        vm("b", depends_on={"a": "ready"}),
    )
    assert [line.split(": ")[0] for line in lines] == [
        'vms[0].depends_on["B!"]',
        "vms[0].depends_on.b",
        "vms[0].depends_on.b",
    ]
    assert lines[1].endswith('found "bogus"')
    assert "dependency cycle a → b → a" in lines[2]


def test_launch_problems_and_host_problems_together(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What `run` refuses after the models (resolve: `{overlay}` with no base_image) no longer
    hides what the host lacks."""
    lines = problems(
        capsys, tmp_path, vm(command=["qemu-nothing", "{overlay}"], cwd=str(tmp_path / "gone"))
    )
    assert [line.split(": ")[0] for line in lines] == [
        "vms[0].command[1]",
        "vms[0].cwd",
        "vms[0].command[0]",
    ]


def test_plan_prints_the_start_order(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, events = check(
        capsys,
        tmp_path,
        [
            vm("web", depends_on={"app": "ready", "db": "ready"}),
            vm("app", depends_on={"db": "started"}),
            vm("db"),
            vm("x"),
        ],
        "--plan",
    )
    assert status == 0
    texts = [e["fields"]["text"] for e in events if e["event"] == ev.Message.NAME]
    assert texts == [
        "start level 1: db, x",
        "start level 2: app (after db started)",
        "start level 3: web (after app ready, db ready)",
        "stop runs in reverse order, level by level (independent VMs in parallel)",
    ]
    assert [e["event"] for e in events].count(ev.BootstrapPlanned.NAME) == 4


def test_run_still_starts_a_config_check_refuses(tmp_path: Path) -> None:
    """`run` does not refuse what the host lacks (the other VMs run; that VM's launch fails
    with the same words): only `check` refuses it."""
    from frameos.config import load_config

    path = tmp_path / "frame.json"
    path.write_text(json.dumps({"vms": [vm(command=["pyhton3"])]}))
    assert load_config(path).vms[0].command == ["pyhton3"]


def test_a_notify_serial_socket_path_too_long_for_unix_sockets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """QEMU connects to `{notify_chardev}`'s socket by path: a deep state_dir cannot hold it,
    which `run` would only find at the launch. The notify datagram socket needs no check (a too
    long path becomes an abstract socket: tests/test_notify.py)."""
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    lines = problems(
        capsys,
        deep,
        vm("guest", health={"readiness": {"notify": True}}),
        vm("port", command=["qemu-system-x86_64", "-chardev", "{notify_chardev}"]),
    )
    assert [line.split(":")[0] for line in lines if "socket path" in line] == ["vms[1].command"]
    assert all("under 108 bytes" in line for line in lines if "socket path" in line)
