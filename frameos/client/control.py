"""`frameos start|stop|restart|bootstrap|clean VM` and `frameos reload` (SPEC §10).

Each creates a run (`POST /v1/runs` with a fresh Idempotency-Key), then follows its events to
the end: `/ws/events?since=` the log's head taken before the POST (so nothing the run does can
come before the cursor), keeping the events that carry its `run_id`. The run's last event says
how it ended: command.completed → exit 0, command.failed or command.canceled → exit 1. While no
event arrives for IDLE_S the run is asked for by id (`GET /v1/runs/{id}`), so a run that ended
while the websocket was away is found and its remaining events read from `/v1/events`.
Ctrl-C ends the client, not the run (it says so).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from frameos import events as ev
from frameos.client.api import Api, ClientError
from frameos.client.discover import Target
from frameos.client.output import warn
from frameos.client.stream import follow_ws, head, read_http
from frameos.envelope import Envelope

ENDINGS = {ev.CommandCompleted.NAME: 0, ev.CommandFailed.NAME: 1, ev.CommandCanceled.NAME: 1}
FINISHED = {"succeeded": 0, "failed": 1, "canceled": 1}  # run states (SPEC §7.3)
IDLE_S = 5.0


class RunFollower:
    """Hands on the events of one run, once each, and remembers how it ended."""

    def __init__(self, run_id: str, show: Callable[[Envelope], None]) -> None:
        self.run_id = run_id
        self.show = show
        self.shown = 0  # the newest seq handed on
        self.status: int | None = None

    def __call__(self, envelope: Envelope) -> bool:
        if envelope.seq <= self.shown or envelope.fields().get("run_id") != self.run_id:
            return False
        self.shown = envelope.seq
        self.show(envelope)
        if envelope.name in ENDINGS:
            self.status = ENDINGS[envelope.name]
        return self.status is not None


async def control(target: Target, op: str, vm: str | None, show: Callable[[Envelope], None]) -> int:
    """Create the run, print its events until it ends; 0 succeeded, 1 failed or canceled."""
    async with Api(target) as api:
        since = await head(api)
        _, run = await api.call(
            "POST",
            "/v1/runs",
            body={"op": op, "target": vm},
            headers={"Idempotency-Key": str(uuid.uuid4())},
            vm=vm,
        )
        if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
            raise ClientError(f"{target.url} answered POST /v1/runs without a run_id: not frameos?")
        follower = RunFollower(run["run_id"], show)

        async def check_run() -> bool:
            _, current = await api.call("GET", f"/v1/runs/{follower.run_id}")
            state = _state(current)
            if state not in FINISHED:
                return False
            await read_http(api, max(since, follower.shown), follower)
            if follower.status is None:
                follower.status = FINISHED[state]
            return True

        try:
            await follow_ws(api, since, follower, idle_s=IDLE_S, on_idle=check_run)
        except KeyboardInterrupt:
            warn(
                f"run {follower.run_id} goes on in frameos; follow it with `frameos events "
                "--follow`, or stop the VM to end it"
            )
            raise
        assert follower.status is not None
        return follower.status


def _state(run: Any) -> str:
    return str(run.get("state", "")) if isinstance(run, dict) else ""
