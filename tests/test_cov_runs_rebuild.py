"""Runs rebuilt from what an earlier instance logged (frameos/runs/service.py): a cancel, a
failure, an op this version does not know and an end whose run is not in the log."""

from __future__ import annotations

from pathlib import Path

from frameos import events as ev
from frameos.runs import RunState
from tests.runs_helpers import running_service


async def test_the_log_is_the_authority_for_every_way_a_run_ended(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        for event in (
            ev.CommandAccepted(run_id="c", op="stop", target="alpha"),
            ev.CommandCanceled(run_id="c", reason="a stop won"),
            ev.CommandAccepted(run_id="f", op="start", target="beta"),
            ev.CommandFailed(run_id="f", error="beta: launch failed"),
            ev.CommandAccepted(run_id="x", op="teleport", target="alpha"),  # a newer op
            ev.CommandCompleted(run_id="x", duration_ms=1),
            ev.CommandFailed(run_id="unknown", error="its accept was rotated away"),
        ):
            h.bus.publish_nowait(event)
    async with running_service(tmp_path) as h:
        rebuilt = {r.run_id: r for r in h.service.list(limit=10)}
        assert set(rebuilt) == {"c", "f"}  # nothing made up for "x" or "unknown"
        assert (rebuilt["c"].state, rebuilt["c"].reason) == (RunState.CANCELED, "a stop won")
        assert (rebuilt["f"].state, rebuilt["f"].reason) == (
            RunState.FAILED,
            "beta: launch failed",
        )
