"""CLI paths run in-process through `frameos.cli.main` (frameos/cli.py): `check` with good app and
scene manifests counts them; `events --demo` reads the demo's own event log; a FrameosError
raised inside a nursery of a client command is reported as itself."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import trio

from frameos import events as ev
from frameos.cli import _trio_run
from frameos.client.api import ClientError
from frameos.config import event_log_path
from frameos.envelope import encode
from frameos.eventlog import EventLog
from frameos.workers.demo import demo_config
from tests.conftest import run_main


def test_check_counts_good_app_and_scene_manifests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "frame.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "state")}))
    remote = {"type": "remote", "remote_url": "https://example.org/x.tar"}
    apps = tmp_path / "apps.json"
    apps.write_text(
        json.dumps([{"id": "clock", "name": "Clock", "version": "1.0.0", "source": remote}])
    )
    scenes = tmp_path / "scenes.json"
    scenes.write_text(
        json.dumps(
            {"scenes": [{"id": "s", "name": "S", "version": "2.1.0-rc.1", "source": remote},
                        {"id": "t", "name": "T", "version": "0.0.1", "source": remote}]}
        )
    )  # fmt: skip
    status, out, err = run_main(
        capsys, "check", "--config", str(config), "--apps", str(apps), "--scenes", str(scenes),
        "--output", "json",
    )  # fmt: skip
    assert (status, err) == (0, "")
    ok = json.loads(out.splitlines()[0])
    assert ok["event"] == ev.RuntimeCheckOk.NAME
    assert (ok["fields"]["apps_loaded"], ok["fields"]["scenes_loaded"]) == (1, 2)


def test_events_of_the_demo_read_the_demos_own_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's state lives in $TMPDIR
    config = demo_config({})
    path = event_log_path(config, None)
    path.parent.mkdir(parents=True)
    log = EventLog(path, keep=config.event_log.keep)
    log.open()
    try:
        log.append(encode(ev.Message(text="from the demo"), 1, 1_800_000_000.0).line)
    finally:
        log.close()
    status, out, err = run_main(capsys, "events", "--demo", "--json")
    assert (status, err) == (0, "")
    (line,) = out.splitlines()
    assert json.loads(line)["fields"] == {"text": "from the demo"}


def test_a_client_error_inside_a_nursery_is_reported_as_itself() -> None:
    async def gone() -> None:
        raise ClientError("cannot reach frameos at http://127.0.0.1:9 (connection refused)")

    async def one() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gone)
        return 0  # pragma: no cover

    with pytest.raises(ClientError, match=r"^cannot reach frameos at"):
        _trio_run(one)

    async def two() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gone)
            nursery.start_soon(gone)
        return 0  # pragma: no cover

    with pytest.raises(ExceptionGroup) as info:  # several: not one to report
        _trio_run(two)
    assert len(info.value.exceptions) == 2
