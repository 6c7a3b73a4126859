"""The short commands, and `run` up to the VMs' launch, import nothing of the HTTP stack
(quart, flask, jinja2, werkzeug, hypercorn: ~190 ms): the VMs start sooner (BARS B6) and
`check` stays fast (B4).

The real commands run in a subprocess with an audit hook: Python raises `import` for every
module loaded and `subprocess.Popen` for every child started, so the hook tells exactly which
heavy module was first loaded and how many VMs had been launched by then.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from frameos import events as ev
from tests.conftest import write_config

HEAVY = ("quart", "flask", "jinja2", "werkzeug", "hypercorn", "prometheus_client")
WATCHED = (*HEAVY, "rich", "pydantic", "trio")  # rich: only for human output
VM_MARK = "frameos-import-test-vm"  # in each VM's command line, so the hook can count launches

HOOK = f"""
import os, runpy, sys
WATCHED, launches = {WATCHED!r}, 0
def hook(event, args):
    global launches
    if event == "subprocess.Popen" and {VM_MARK!r} in " ".join(map(str, args[1])):
        launches += 1
    elif event == "import" and args[0].split(".")[0] in WATCHED:
        os.write(2, f"HEAVY {{args[0]}} after {{launches}} launches\\n".encode())
sys.addaudithook(hook)
sys.argv = ["frameos", *sys.argv[1:]]
runpy.run_module("frameos", run_name="__main__", alter_sys=True)
"""


def hooked(*args: str) -> list[str]:
    return [sys.executable, "-c", HOOK, *args]


def heavy_imports(stderr: str, watched: tuple[str, ...] = HEAVY) -> list[tuple[str, int]]:
    """(module, VMs launched by then) for each watched module loaded, in order."""
    return [
        (words[1], int(words[3]))
        for words in (line.split() for line in stderr.splitlines())
        if words[:1] == ["HEAVY"] and words[1].split(".")[0] in watched
    ]


def config_with_vms(tmp_path: Path, count: int) -> Path:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", VM_MARK]
    vms = [{"name": f"vm{i}", "command": sleeper} for i in range(count)]
    return write_config(tmp_path, vms=vms)


def test_check_imports_nothing_of_the_http_stack_and_rich_only_for_people(
    tmp_path: Path,
) -> None:
    config = str(config_with_vms(tmp_path, 2))
    for output in ("json", "human"):
        result = subprocess.run(
            hooked("check", "--config", config, "--plan", "--output", output),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert heavy_imports(result.stderr) == []
        rich = heavy_imports(result.stderr, ("rich",))
        assert bool(rich) == (output == "human")


def test_contract_prints_the_shipped_file_without_pydantic_or_trio() -> None:
    result = subprocess.run(
        hooked("contract"), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["contract"] == "frameos.contract.v1"
    assert heavy_imports(result.stderr, WATCHED) == []


def test_run_launches_every_vm_before_importing_the_http_stack(tmp_path: Path) -> None:
    vms = 3
    config = str(config_with_vms(tmp_path, vms))
    stderr_path = tmp_path / "stderr.txt"
    names = []
    with (
        stderr_path.open("w") as stderr,
        subprocess.Popen(
            hooked("run", "--config", config, "--output", "json"),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as proc,
    ):
        killer = threading.Timer(30, proc.kill)  # a hung start fails the test, not hangs it
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                names.append(json.loads(line)["event"])
                if names[-1] == ev.RuntimeReady.NAME:
                    proc.send_signal(signal.SIGTERM)
            assert proc.wait() == 0
        finally:
            killer.cancel()
            proc.kill()
    assert names.count(ev.VmLaunched.NAME) >= vms
    imported = heavy_imports(stderr_path.read_text())
    # the server is imported (so the hook sees those imports), but only after the launches
    assert {module.split(".")[0] for module, _ in imported} >= {"quart", "hypercorn"}
    assert min(launched for _, launched in imported) == vms
