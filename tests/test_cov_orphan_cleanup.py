"""What a killed frameos left of one VM, cleaned up at the next start (frameos/workers/orphans.py
clean_up_after), with real pidfiles and processes: a pidfile whose group is long gone is only
forgotten (no ladder, no warning); an overlay recorded under an overlay_dir the config no longer
names is discarded as well as the current one; what a `frameos check` says of a VM entry that is
not an object."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from frameos import events as ev
from frameos.cli import main
from frameos.workers import pidfile, procfs
from frameos.workers.orphans import clean_up_after
from frameos.workers.testing import RecordingPublisher


def record_of_a_gone_process(overlay: Path | None = None) -> pidfile.PidRecord:
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    start_time = procfs.start_time(child.pid)
    assert start_time is not None
    child.kill()
    child.wait()  # reaped: its group is gone
    return pidfile.PidRecord(
        vm="a",
        pid=child.pid,
        start_time=start_time,
        pgid=child.pid,
        method="signal",
        overlay=str(overlay) if overlay else None,
        owner_pid=999_999,
    )


async def test_a_pidfile_whose_group_is_gone_is_forgotten_without_a_ladder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.pid"
    pidfile.write(path, record_of_a_gone_process())
    pub = RecordingPublisher()
    await clean_up_after("a", path, None, pub)
    assert not path.exists()
    assert pub.events == []  # nothing was left running: nothing to say, nothing stopped


async def test_an_overlay_under_an_old_overlay_dir_is_discarded_with_the_current_one(
    tmp_path: Path,
) -> None:
    old, new = tmp_path / "old" / "a.qcow2", tmp_path / "new" / "a.qcow2"
    for overlay in (old, new):
        overlay.parent.mkdir()
        overlay.write_bytes(b"\0" * 8192)
    path = tmp_path / "a.pid"
    pidfile.write(path, record_of_a_gone_process(overlay=old))
    pub = RecordingPublisher()
    await clean_up_after("a", path, new, pub)
    assert not old.exists() and not new.exists() and not path.exists()
    discarded = [e for e, _ in pub.events if isinstance(e, ev.VmLayerDiscarded)]
    assert [(e.overlay_path, e.reason) for e in discarded] == [
        (str(old), "orphan"),
        (str(new), "orphan"),
    ]


def test_check_names_a_vm_entry_that_is_not_an_object_and_still_checks_the_others(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "frame.json"
    web = {"name": "web", "command": ["frameos-no-such-tool"], "env": {"PATH": "/nonexistent"}}
    config.write_text(json.dumps({"state_dir": str(tmp_path / "s"), "vms": ["alpha", web]}))
    assert main(["check", "--config", str(config), "--output", "json"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["fields"]["problems"] == [
        f'{config}: vms[0]: expected an object, found "alpha"',
        f"{config}: vms[1].command[0]: 'frameos-no-such-tool' is not on the PATH (/nonexistent); "
        "install it, fix the name, or give its full path",
    ]
