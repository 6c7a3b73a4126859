"""The run service on a real bus and log, with a fake pool: runs, conflicts, a stop that wins,
cancel, events carrying run_id, runs rebuilt after a restart, shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from frameos import events as ev
from frameos.bus import Bus
from frameos.runs import (
    Conflict,
    IllegalTransition,
    NotAccepting,
    Op,
    RunRequest,
    RunService,
    RunState,
    UnknownRun,
    UnknownVm,
)
from tests.runs_helpers import FakePool, logged, names_of, running_service

START_ALPHA = RunRequest(op=Op.START, target="alpha")


def of_run(directory: Path, run_id: str) -> list[dict[str, object]]:
    return [e for e in logged(directory) if e["fields"].get("run_id") == run_id]  # type: ignore[attr-defined]


async def test_a_run_is_accepted_runs_and_completes_with_its_events(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        run, created = h.service.submit(START_ALPHA, "key-1")
        assert created and run.state is RunState.CREATED and run.target == "alpha"
        h.bus.publish_nowait(ev.Message(text="unrelated"))  # no run_id: not the run's
        ended = await h.ended(run.run_id)
        assert ended.state is RunState.SUCCEEDED and ended.reason is None
        assert h.pool.calls == [("start", "alpha", run.run_id)]
        lines = await h.service.events(run.run_id)
    events = of_run(tmp_path, run.run_id)
    assert names_of(events) == [
        ev.CommandAccepted.NAME,
        ev.Message.NAME,
        ev.CommandCompleted.NAME,
    ]
    assert len(lines) == 3 and [e["seq"] for e in events] == [
        run.first_seq,
        events[1]["seq"],
        run.last_seq,
    ]
    accepted = events[0]["fields"]
    assert accepted == {
        "run_id": run.run_id,
        "op": "start",
        "target": "alpha",
        "idempotency_key": "key-1",
    }


async def test_a_failed_op_fails_the_run_with_its_message(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.fail[("bootstrap", "beta")] = "bootstrap step apt failed (exit 100)"
        run, _ = h.service.submit(RunRequest(op=Op.BOOTSTRAP, target="beta"))
        ended = await h.ended(run.run_id)
    assert ended.state is RunState.FAILED
    assert ended.reason == "bootstrap step apt failed (exit 100)"
    last = of_run(tmp_path, run.run_id)[-1]
    assert last["event"] == ev.CommandFailed.NAME
    assert last["fields"] == {"run_id": run.run_id, "error": ended.reason}


async def test_an_unknown_vm_is_refused_and_logged(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        with pytest.raises(UnknownVm, match=r"no VM named 'gamma'.*alpha, beta"):
            h.service.submit(RunRequest(op=Op.STOP, target="gamma"), "k")
        assert h.service.list(limit=10) == []
        run, created = h.service.submit(START_ALPHA, "k")  # the key was not used up
        await h.ended(run.run_id)
        assert created
    rejected = [e for e in logged(tmp_path) if e["event"] == ev.CommandRejected.NAME]
    assert [r["fields"]["reason"] for r in rejected] == ["unknown_vm"]  # type: ignore[index]


async def test_a_second_op_on_a_busy_vm_conflicts_naming_the_run_in_the_way(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("start", "alpha")] = gate = trio.Event()
        first, _ = h.service.submit(START_ALPHA)
        await trio.testing.wait_all_tasks_blocked()
        for op in (Op.START, Op.RESTART, Op.BOOTSTRAP, Op.CLEAN):
            with pytest.raises(Conflict) as caught:
                h.service.submit(RunRequest(op=op, target="alpha"))
            assert caught.value.run_in_the_way is first
            assert first.run_id in str(caught.value)
        with pytest.raises(Conflict):  # a reload waits for every VM run
            h.service.submit(RunRequest(op=Op.RELOAD))
        other, _ = h.service.submit(RunRequest(op=Op.RESTART, target="beta"))  # another VM: fine
        gate.set()
        assert (await h.ended(first.run_id)).state is RunState.SUCCEEDED
        assert (await h.ended(other.run_id)).state is RunState.SUCCEEDED
        again, created = h.service.submit(RunRequest(op=Op.CLEAN, target="alpha"))  # free again
        assert created
        await h.ended(again.run_id)
    rejected = [e for e in logged(tmp_path) if e["event"] == ev.CommandRejected.NAME]
    assert [r["fields"]["reason"] for r in rejected] == ["conflict"] * 5  # type: ignore[index]


async def test_a_reload_in_flight_excludes_every_other_run(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.reload_gate = trio.Event()
        reload, _ = h.service.submit(RunRequest(op=Op.RELOAD, target="*"))
        assert reload.target is None
        await trio.testing.wait_all_tasks_blocked()
        for request in (RunRequest(op=Op.STOP, target="beta"), RunRequest(op=Op.RELOAD)):
            with pytest.raises(Conflict) as caught:
                h.service.submit(request)
            assert caught.value.run_in_the_way is reload
        h.reload_gate.set()
        assert (await h.ended(reload.run_id)).state is RunState.SUCCEEDED
    events = of_run(tmp_path, reload.run_id)
    assert names_of(events) == [
        ev.CommandAccepted.NAME,
        ev.RuntimeReload.NAME,
        ev.CommandCompleted.NAME,
    ]


async def test_a_reload_that_changed_nothing_fails_with_its_error(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.reload_errors.append("frame.json: vms[0].command: field required")
        run, _ = h.service.submit(RunRequest(op=Op.RELOAD))
        ended = await h.ended(run.run_id)
    assert (
        ended.state is RunState.FAILED
        and ended.reason == "frame.json: vms[0].command: field required"
    )


@pytest.mark.parametrize("beaten", [Op.START, Op.RESTART, Op.BOOTSTRAP])
async def test_a_stop_wins_over_a_start_restart_or_bootstrap_in_flight(
    tmp_path: Path, beaten: Op
) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[(beaten.value, "alpha")] = trio.Event()  # never set: only a cancel ends it
        first, _ = h.service.submit(RunRequest(op=beaten, target="alpha"))
        await trio.testing.wait_all_tasks_blocked()
        stop, created = h.service.submit(RunRequest(op=Op.STOP, target="alpha"))
        assert created and first.state is RunState.CANCELING
        assert (await h.ended(stop.run_id)).state is RunState.SUCCEEDED
        assert first.state is RunState.CANCELED
        assert first.reason == f"stopped by run {stop.run_id}"
        # the beaten op unwound before the stop began
        assert h.pool.unwound == [(beaten.value, "alpha")]
        assert [c[0] for c in h.pool.calls] == [beaten.value, "stop"]
    last = of_run(tmp_path, first.run_id)[-1]
    assert last["event"] == ev.CommandCanceled.NAME
    assert last["fields"] == {"run_id": first.run_id, "reason": f"stopped by run {stop.run_id}"}


async def test_a_stop_does_not_beat_a_stop_or_a_clean(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        for op in (Op.STOP, Op.CLEAN):
            h.pool.gates[(op.value, "alpha")] = gate = trio.Event()
            first, _ = h.service.submit(RunRequest(op=op, target="alpha"))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Conflict):
                h.service.submit(RunRequest(op=Op.STOP, target="alpha"))
            gate.set()
            assert (await h.ended(first.run_id)).state is RunState.SUCCEEDED


async def test_cancel_moves_a_running_run_through_canceling_to_canceled(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("stop", "beta")] = trio.Event()
        run, _ = h.service.submit(RunRequest(op=Op.STOP, target="beta"))
        await trio.testing.wait_all_tasks_blocked()
        assert run.state is RunState.RUNNING
        assert h.service.cancel(run.run_id).state is RunState.CANCELING
        assert h.service.cancel(run.run_id).state is RunState.CANCELING  # again: no change
        ended = await h.ended(run.run_id)
        assert ended.state is RunState.CANCELED and ended.reason == "canceled by the operator"
        with pytest.raises(IllegalTransition, match="is canceled; it cannot become canceled"):
            h.service.cancel(run.run_id)
        with pytest.raises(UnknownRun):
            h.service.cancel("nope")


async def test_a_run_canceled_before_its_task_began_never_runs(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        run, _ = h.service.submit(START_ALPHA)
        h.service.cancel(run.run_id)  # no checkpoint in between: its task has not begun
        assert run.state is RunState.CANCELED
        await h.ended(run.run_id)
        assert h.pool.calls == []


async def test_list_is_newest_first_and_pages_with_before(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        ids = []
        for _ in range(5):
            run, _ = h.service.submit(START_ALPHA)
            await h.ended(run.run_id)
            ids.append(run.run_id)
        assert [r.run_id for r in h.service.list(limit=3)] == ids[::-1][:3]
        assert [r.run_id for r in h.service.list(limit=3, before=ids[2])] == [ids[1], ids[0]]
        assert h.service.list(limit=3, before=ids[0]) == []
        with pytest.raises(UnknownRun):
            h.service.list(limit=3, before="nope")


@pytest.mark.parametrize("scan_page", [5000, 2])  # 2: the command.* lines over many pages
async def test_runs_are_rebuilt_after_a_restart_and_an_unfinished_one_was_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scan_page: int
) -> None:
    from frameos.runs import service

    monkeypatch.setattr(service, "SCAN_PAGE", scan_page)
    async with running_service(tmp_path) as h:
        done, _ = h.service.submit(START_ALPHA, "k-done")
        await h.ended(done.run_id)
        h.pool.fail[("clean", "beta")] = "beta is running; stop it first"
        failed, _ = h.service.submit(RunRequest(op=Op.CLEAN, target="beta"))
        await h.ended(failed.run_id)
        before = {r.run_id: r.model_dump() for r in h.service.list(limit=10)}
        # frameos dies while a run is in flight: its command.accepted is all the log has
        h.bus.publish_nowait(ev.CommandAccepted(run_id="dead", op="restart", target="alpha"))
    async with running_service(tmp_path) as h:
        rebuilt = {r.run_id: r for r in h.service.list(limit=10)}
        assert list(rebuilt) == ["dead", failed.run_id, done.run_id]
        for run_id, dumped in before.items():
            assert rebuilt[run_id].model_dump() == dumped
        dead = rebuilt["dead"]
        assert dead.state is RunState.FAILED and dead.reason == "interrupted"
        again, created = h.service.submit(START_ALPHA, "k-done")  # the key still holds
        assert not created and again.run_id == done.run_id
    interrupted = of_run(tmp_path, "dead")
    assert names_of(interrupted) == [ev.CommandAccepted.NAME, ev.CommandFailed.NAME]
    assert interrupted[-1]["fields"] == {"run_id": "dead", "error": "interrupted"}
    assert interrupted[-1]["seq"] == dead.last_seq


async def test_stopping_frameos_cancels_the_runs_in_flight(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("restart", "alpha")] = trio.Event()
        run, _ = h.service.submit(RunRequest(op=Op.RESTART, target="alpha"))
        await trio.testing.wait_all_tasks_blocked()
    assert run.state is RunState.CANCELED and run.reason == "frameos is stopping"
    assert of_run(tmp_path, run.run_id)[-1]["event"] == ev.CommandCanceled.NAME


async def test_submit_before_the_service_runs_is_refused(tmp_path: Path) -> None:
    from tests.runs_helpers import log_at

    log = log_at(tmp_path)
    try:
        bus = Bus(log)

        async def reload(run_id: str) -> str | None:
            return None

        service = RunService(FakePool(bus), bus, reload=reload)
        with pytest.raises(NotAccepting):
            service.submit(START_ALPHA)
    finally:
        log.close()


async def test_past_max_runs_the_oldest_ended_runs_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frameos.runs import service

    monkeypatch.setattr(service, "MAX_RUNS", 3)
    async with running_service(tmp_path) as h:
        h.pool.gates[("start", "beta")] = gate = trio.Event()
        held, _ = h.service.submit(RunRequest(op=Op.START, target="beta"), "held")  # in flight
        ids = []
        for i in range(4):
            run, _ = h.service.submit(START_ALPHA, f"k{i}")
            await h.ended(run.run_id)
            ids.append(run.run_id)
        kept = [r.run_id for r in h.service.list(limit=10)]
        assert kept == [ids[3], ids[2], held.run_id]  # the one in flight is never forgotten
        with pytest.raises(UnknownRun):
            h.service.get(ids[0])
        _, created = h.service.submit(START_ALPHA, "k0")  # its key is free again
        assert created
        gate.set()


@pytest.mark.parametrize("op", [Op.CLEAN, Op.RELOAD])
async def test_a_clean_or_a_reload_cannot_be_canceled(tmp_path: Path, op: Op) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("clean", "alpha")] = gate = h.reload_gate = trio.Event()
        run, _ = h.service.submit(RunRequest(op=op, target="alpha" if op is Op.CLEAN else None))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(IllegalTransition, match=f"cannot be canceled: a {op.value} runs"):
            h.service.cancel(run.run_id)
        assert run.state is RunState.RUNNING
        gate.set()
        assert (await h.ended(run.run_id)).state is RunState.SUCCEEDED
