"""Runs over the real /v1 API of the real `frameos run`: a stop run, its receipt byte-identical
after a restart of frameos, its Idempotency-Key still holding, a conflict naming the run."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from frameos import events as ev
from tests.conftest import Frameos, running_frameos, write_config


def vm(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "command": [sys.executable, "-c", "import time; time.sleep(600)"],
        "cooperative": {"method": "none"},
        "timeouts": {"cooperative_ms": 0, "sigterm_ms": 3000, "sigkill_ms": 2000},
    }


def client(fos: Frameos, tmp_path: Path) -> httpx.AsyncClient:
    token = (tmp_path / "state" / "api-token").read_text().strip()
    return httpx.AsyncClient(
        base_url=fos.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def test_a_stop_run_and_its_receipt_survive_a_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path, vms=[vm("alpha")])
    body = {"op": "stop", "target": "alpha"}
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        async with client(fos, tmp_path) as http:
            created = await http.post("/v1/runs", json=body, headers={"Idempotency-Key": "k1"})
            assert created.status_code == 201, created.text
            run = created.json()
            run_id = run["run_id"]
            await fos.wait_for(ev.CommandCompleted, lambda e: e["fields"]["run_id"] == run_id)
            receipt = await http.get(f"/v1/runs/{run_id}/receipt")
            assert receipt.status_code == 200
            first = receipt.content
            assert orjson.loads(first)["state"] == "succeeded"
            replay = await http.get(f"/v1/runs/{run_id}/replay")
            names = [orjson.loads(line)["event"] for line in replay.content.splitlines()]
            assert names[0] == ev.CommandAccepted.NAME and names[-1] == ev.CommandCompleted.NAME
            assert ev.VmExited.NAME in names
            again = await http.post("/v1/runs", json=body, headers={"Idempotency-Key": "k1"})
            assert again.status_code == 200 and again.json()["run_id"] == run_id
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        async with client(fos, tmp_path) as http:
            assert (await http.get(f"/v1/runs/{run_id}/receipt")).content == first
            got = (await http.get(f"/v1/runs/{run_id}")).json()
            assert (got["state"], got["op"], got["target"]) == ("succeeded", "stop", "alpha")
            again = await http.post("/v1/runs", json=body, headers={"Idempotency-Key": "k1"})
            assert again.status_code == 200 and again.json()["run_id"] == run_id
            other = await http.post(
                "/v1/runs",
                json={"op": "start", "target": "alpha"},
                headers={"Idempotency-Key": "k1"},
            )
            assert other.status_code == 409 and other.json()["error"] == "idempotency_mismatch"
            unknown = await http.post("/v1/runs", json={"op": "stop", "target": "nope"})
            assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_vm"
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0


async def test_a_conflict_names_the_run_in_the_way_and_a_stop_wins_over_it(
    tmp_path: Path,
) -> None:
    slow = tmp_path / "slow"
    booting = vm("alpha")
    booting["bootstrap"] = {
        "trigger": "always",
        "steps": [
            {
                "name": "maybe-slow",
                "command": [
                    sys.executable,
                    "-c",
                    "import os, sys, time; os.path.exists(sys.argv[1]) and time.sleep(60)",
                    str(slow),
                ],
            }
        ],
    }
    config = write_config(tmp_path, vms=[booting])
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        async with client(fos, tmp_path) as http:
            stop = (await http.post("/v1/runs", json={"op": "stop", "target": "alpha"})).json()
            await fos.wait_for(
                ev.CommandCompleted, lambda e: e["fields"]["run_id"] == stop["run_id"]
            )
            slow.touch()  # the next bootstrap hangs: the start stays in flight
            start = (await http.post("/v1/runs", json={"op": "start", "target": "alpha"})).json()
            await fos.wait_for(
                ev.BootstrapStarted, lambda e: e["fields"].get("run_id") == start["run_id"]
            )
            busy = await http.post("/v1/runs", json={"op": "restart", "target": "alpha"})
            assert busy.status_code == 409
            assert busy.json()["error"] == "conflict"
            assert busy.json()["details"]["run"]["run_id"] == start["run_id"]
            wins = await http.post("/v1/runs", json={"op": "stop", "target": "alpha"})
            assert wins.status_code == 201
            winner = wins.json()["run_id"]
            await fos.wait_for(ev.CommandCompleted, lambda e: e["fields"]["run_id"] == winner)
            canceled = (await http.get(f"/v1/runs/{start['run_id']}")).json()
            assert canceled["state"] == "canceled"
            assert canceled["reason"] == f"stopped by run {winner}"
            done = await http.post(f"/v1/runs/{start['run_id']}/cancel")
            assert done.status_code == 409 and done.json()["error"] == "illegal_transition"
            listed = (await http.get("/v1/runs")).json()["runs"]
            assert [r["run_id"] for r in listed] == [winner, start["run_id"], stop["run_id"]]
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
