"""Receipts (`frameos.receipt.v1`): canonical bytes, the same for the same log, also after a
restart; the run's events found from its first/last seq."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
import trio

from frameos import events as ev
from frameos.errors import StaleCursorError
from frameos.runs import Op, RunRequest, RunState
from frameos.runs.receipt import canonical_lines, run_lines
from tests.runs_helpers import log_at, logged, running_service


async def test_a_receipt_is_the_digest_of_the_runs_canonical_events(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        run, _ = h.service.submit(RunRequest(op=Op.RESTART, target="beta"), "key")
        h.bus.publish_nowait(ev.Message(text="someone else's"))
        await h.ended(run.run_id)
        receipt = await h.service.receipt(run.run_id)
        first = receipt.canonical()
        assert await h.service.receipt(run.run_id) == receipt
    mine = [e for e in logged(tmp_path) if e["fields"].get("run_id") == run.run_id]  # type: ignore[attr-defined]
    expected = hashlib.sha256(
        b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in mine)
    ).hexdigest()
    assert orjson.loads(first) == {
        "schema": "frameos.receipt.v1",
        "run_id": run.run_id,
        "op": "restart",
        "target": "beta",
        "state": "succeeded",
        "first_seq": run.first_seq,
        "last_seq": run.last_seq,
        "event_count": 3,
        "digest": f"sha256:{expected}",
    }
    assert first == orjson.dumps(orjson.loads(first), option=orjson.OPT_SORT_KEYS)

    async with running_service(tmp_path) as h:  # a restart: runs rebuilt from the log
        assert (await h.service.receipt(run.run_id)).canonical() == first


def test_canonical_lines_do_not_depend_on_key_order_or_spacing() -> None:
    a = b'{"v":1,"seq":3,"fields":{"b":1,"a":[1,2]}}\n'
    b = b'{"fields": {"a": [1, 2], "b": 1}, "seq": 3, "v": 1}\n'
    assert (
        canonical_lines([a])
        == canonical_lines([b])
        == [b'{"fields":{"a":[1,2],"b":1},"seq":3,"v":1}\n']
    )


async def test_a_runs_events_are_read_from_its_first_seq_even_after_rotation(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path, max_bytes=64 << 10, keep=2) as h:
        old, _ = h.service.submit(RunRequest(op=Op.STOP, target="alpha"))
        await h.ended(old.run_id)
        # until the old run's file is rotated away (rotation runs in a worker thread and waits
        # out an fsync in flight, so count on the outcome, not on a number of events)
        with trio.fail_after(30):
            filler = 0
            while (h.bus.log.oldest_seq() or 0) <= old.last_seq:  # type: ignore[operator]
                for _ in range(300):
                    h.bus.publish_nowait(ev.Message(text=f"filler {filler}"))
                    filler += 1
                await trio.sleep(0.01)  # the writer takes the batch; rotation may follow
        h.pool.gates[("start", "beta")] = gate = trio.Event()
        run, _ = h.service.submit(RunRequest(op=Op.START, target="beta"))
        await trio.testing.wait_all_tasks_blocked()
        for i in range(300):  # other events in between
            h.bus.publish_nowait(ev.Message(text=f"filler {i}"))
        gate.set()
        assert (await h.ended(run.run_id)).state is RunState.SUCCEEDED
        lines = await h.service.events(run.run_id)
        with pytest.raises(StaleCursorError):  # the old run's events were rotated away
            await h.service.receipt(old.run_id)
        assert [orjson.loads(line)["event"] for line in lines] == [
            ev.CommandAccepted.NAME,
            ev.Message.NAME,
            ev.CommandCompleted.NAME,
        ]
    log = log_at(tmp_path, 64 << 10, 2)
    try:
        assert len(log.files_oldest_first()) == 3 and log.oldest_seq() > old.last_seq  # type: ignore[operator]
        assert run.first_seq is not None and run.last_seq is not None
        assert run_lines(log, run.run_id, run.first_seq, run.last_seq) == lines
        # the range bounds the read: an end before the run's last event leaves it out
        assert run_lines(log, run.run_id, run.first_seq, run.last_seq - 1) == lines[:-1]
    finally:
        log.close()


async def test_the_receipt_of_a_run_in_flight_covers_what_is_logged_so_far(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("bootstrap", "alpha")] = gate = trio.Event()
        run, _ = h.service.submit(RunRequest(op=Op.BOOTSTRAP, target="alpha"))
        await trio.testing.wait_all_tasks_blocked()
        receipt = await h.service.receipt(run.run_id)
        assert (receipt.state, receipt.last_seq, receipt.event_count) == ("running", None, 2)
        gate.set()
        await h.ended(run.run_id)
        assert (await h.service.receipt(run.run_id)).event_count == 3


async def test_an_external_event_claiming_a_run_id_is_not_the_runs(tmp_path: Path) -> None:
    async with running_service(tmp_path) as h:
        h.pool.gates[("stop", "alpha")] = gate = trio.Event()
        run, _ = h.service.submit(RunRequest(op=Op.STOP, target="alpha"))
        await trio.testing.wait_all_tasks_blocked()
        forged = orjson.dumps({"run_id": run.run_id, "note": "I was here"})
        h.bus.publish_ext("ext.intruder", "info", forged)
        gate.set()
        await h.ended(run.run_id)
        lines = await h.service.events(run.run_id)
        receipt = await h.service.receipt(run.run_id)
    assert [orjson.loads(line)["event"] for line in lines] == [
        ev.CommandAccepted.NAME,
        ev.Message.NAME,
        ev.CommandCompleted.NAME,
    ]
    assert receipt.event_count == 3
    assert any(e["event"] == "ext.intruder" for e in logged(tmp_path))  # it is in the log
