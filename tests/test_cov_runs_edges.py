"""The run service (frameos/runs/service.py) on a real bus and log when the pool says a stop won
(OperationCanceled, with or without the operator's cancel first), when an op fails with a bug
rather than an error of frameos, and what a rejected request leaves for the next instance."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.runs import Conflict, Op, RunRequest, RunState
from frameos.workers import OperationCanceled
from tests.runs_helpers import logged, running_service

RESTART_ALPHA = RunRequest(op=Op.RESTART, target="alpha")
WON = "vm alpha: the restart was canceled: a stop of the VM won"


def last_event_of(directory: Path, run_id: str) -> dict[str, object]:
    mine = [e for e in logged(directory) if e["fields"].get("run_id") == run_id]  # type: ignore[attr-defined]
    return mine[-1]


async def test_a_stop_the_pool_saw_win_cancels_the_run_with_the_pools_reason(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path) as h:

        async def restart_vm(name: str, *, run_id: str | None = None) -> None:
            raise OperationCanceled(WON)  # e.g. `systemctl stop` of the VM's unit got there first

        h.pool.restart_vm = restart_vm  # type: ignore[method-assign]
        run, _ = h.service.submit(RESTART_ALPHA)
        ended = await h.ended(run.run_id)
        assert (ended.state, ended.reason) == (RunState.CANCELED, WON)
    last = last_event_of(tmp_path, run.run_id)
    assert last["event"] == ev.CommandCanceled.NAME
    assert last["fields"] == {"run_id": run.run_id, "reason": WON}


async def test_an_operator_cancel_keeps_its_reason_when_the_pool_then_says_canceled(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path) as h:

        async def restart_vm(name: str, *, run_id: str | None = None) -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise OperationCanceled(WON) from None  # as the pool translates its scope's

        h.pool.restart_vm = restart_vm  # type: ignore[method-assign]
        run, _ = h.service.submit(RESTART_ALPHA)
        await trio.testing.wait_all_tasks_blocked()
        assert h.service.cancel(run.run_id).state is RunState.CANCELING
        ended = await h.ended(run.run_id)
        assert (ended.state, ended.reason) == (RunState.CANCELED, "canceled by the operator")
    assert last_event_of(tmp_path, run.run_id)["fields"] == {
        "run_id": run.run_id,
        "reason": "canceled by the operator",
    }


async def test_a_bug_in_an_op_fails_its_run_and_not_the_service(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:

        async def restart_vm(name: str, *, run_id: str | None = None) -> None:
            raise KeyError("pid")

        h.pool.restart_vm = restart_vm  # type: ignore[method-assign]
        run, _ = h.service.submit(RESTART_ALPHA)
        ended = await h.ended(run.run_id)
        assert (ended.state, ended.reason) == (
            RunState.FAILED,
            "internal fault: KeyError: 'pid'",
        )
        after, _ = h.service.submit(RunRequest(op=Op.START, target="beta"))
        assert (await h.ended(after.run_id)).state is RunState.SUCCEEDED  # it goes on
    assert last_event_of(tmp_path, run.run_id)["fields"] == {
        "run_id": run.run_id,
        "error": "internal fault: KeyError: 'pid'",
    }


async def test_a_rejected_request_is_not_a_run_of_the_next_instance(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("restart", "alpha")] = gate = trio.Event()
        first, _ = h.service.submit(RESTART_ALPHA)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Conflict):
            h.service.submit(RunRequest(op=Op.BOOTSTRAP, target="alpha"))
        gate.set()
        await h.ended(first.run_id)
    assert ev.CommandRejected.NAME in [e["event"] for e in logged(tmp_path)]
    async with running_service(tmp_path) as h:
        rebuilt = h.service.list(limit=10)
        assert [(r.run_id, r.state) for r in rebuilt] == [(first.run_id, RunState.SUCCEEDED)]
