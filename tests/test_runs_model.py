"""The run state machine, the request model, and idempotency (hypothesis over key/body
sequences, against a plain model of what the service must answer)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from frameos.runs import (
    IdempotencyMismatch,
    IllegalTransition,
    Op,
    Run,
    RunRequest,
    RunState,
    UnknownVm,
)
from tests.runs_helpers import running_service

S = RunState
ALLOWED = {
    (S.CREATED, S.RUNNING),
    (S.CREATED, S.CANCELED),
    (S.CREATED, S.FAILED),
    (S.RUNNING, S.CANCELING),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.CANCELING, S.CANCELED),
    (S.CANCELING, S.SUCCEEDED),
    (S.CANCELING, S.FAILED),
}


def a_run(state: RunState) -> Run:
    return Run(run_id="r1", op=Op.STOP, target="alpha", state=state, created_at=1.0, updated_at=1.0)


@pytest.mark.parametrize("before", list(RunState))
@pytest.mark.parametrize("after", list(RunState))
def test_only_the_transitions_of_the_table_are_allowed(before: RunState, after: RunState) -> None:
    run = a_run(before)
    if (before, after) in ALLOWED:
        run.advance(after, 2.0, "why")
        assert (run.state, run.updated_at, run.reason) == (after, 2.0, "why")
    else:
        with pytest.raises(IllegalTransition, match=f"is {before.value}; it cannot become"):
            run.advance(after, 2.0)
        assert (run.state, run.updated_at) == (before, 1.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"op": "start"}, "start needs a target: the name of one VM"),
        ({"op": "stop", "target": "*"}, "stop needs a target"),
        ({"op": "reload", "target": "alpha"}, 'a reload has no VM: set target to "\\*" or null'),
        ({"op": "explode", "target": "alpha"}, "Input should be 'start', 'stop'"),
        ({"op": "start", "target": "alpha", "force": True}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_request_names_the_problem(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RunRequest.model_validate(body)


def test_a_reload_target_star_and_null_are_the_same_request() -> None:
    star, null = RunRequest(op=Op.RELOAD, target="*"), RunRequest(op=Op.RELOAD)
    assert star.same_as(null) and star.vm is None
    assert not RunRequest(op=Op.START, target="a").same_as(RunRequest(op=Op.STOP, target="a"))


KEYS = st.sampled_from(["k1", "k2", "k3", None])
BODIES = st.builds(
    RunRequest,
    op=st.sampled_from([Op.START, Op.STOP, Op.RESTART]),
    target=st.sampled_from(["alpha", "beta", "ghost"]),
) | st.just(RunRequest(op=Op.RELOAD))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEYS, BODIES), min_size=1, max_size=12))
def test_idempotency_same_key_same_body_is_the_original_run(
    steps: list[tuple[str | None, RunRequest]],
) -> None:
    async def scenario(directory: Path) -> None:
        seen: dict[str, tuple[RunRequest, str]] = {}  # key → (body, run_id) of its first run
        async with running_service(directory) as h:
            for key, body in steps:
                first = seen.get(key) if key is not None else None
                if first is not None and not first[0].same_as(body):
                    with pytest.raises(IdempotencyMismatch) as caught:
                        h.service.submit(body, key)
                    assert caught.value.original.run_id == first[1]
                    continue
                if first is not None:
                    run, created = h.service.submit(body, key)
                    assert not created and run.run_id == first[1]
                    continue
                if body.vm == "ghost":
                    with pytest.raises(UnknownVm):
                        h.service.submit(body, key)
                    continue  # a refused request uses no key
                run, created = h.service.submit(body, key)
                assert created and run.idempotency_key == key
                if key is not None:
                    seen[key] = (body, run.run_id)
                await h.ended(run.run_id)  # no run in flight: no conflicts in this test

    with tempfile.TemporaryDirectory() as directory:
        trio.run(scenario, Path(directory))
