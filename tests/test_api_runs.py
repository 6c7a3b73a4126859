"""POST/GET /v1/runs and each run's events, receipt, replay and cancel, over real HTTP (the front
door, hypercorn, quart-trio) against the real RunService on a real log (SPEC §7.3, R4)."""

from __future__ import annotations

from pathlib import Path

import orjson
import trio

from tests.api_helpers import READER, WRITER, serving_api


async def test_create_replay_and_mismatch_by_idempotency_key(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        key = {"Idempotency-Key": "key-1"}
        first = await api.call(
            "POST", "/v1/runs", json={"op": "stop", "target": "alpha"}, headers=key
        )
        assert first.status_code == 201
        run = first.json()
        assert (
            run["op"] == "stop" and run["target"] == "alpha" and run["idempotency_key"] == "key-1"
        )
        assert {"run_id", "state", "reason", "created_at", "updated_at"} <= set(run)
        again = await api.call(
            "POST", "/v1/runs", json={"op": "stop", "target": "alpha"}, headers=key
        )
        assert again.status_code == 200 and again.json()["run_id"] == run["run_id"]
        other = await api.call(
            "POST", "/v1/runs", json={"op": "start", "target": "alpha"}, headers=key
        )
        assert other.status_code == 409
        body = other.json()
        assert body["error"] == "idempotency_mismatch"
        assert body["details"]["run"]["run_id"] == run["run_id"]


async def test_unknown_vm_conflict_and_invalid_bodies(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        missing = await api.call("POST", "/v1/runs", json={"op": "start", "target": "nope"})
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_vm"
        assert missing.json()["details"]["known"] == ["alpha", "beta"]
        gate = api.harness.pool.gates[("restart", "alpha")] = trio.Event()
        busy = await api.call("POST", "/v1/runs", json={"op": "restart", "target": "alpha"})
        assert busy.status_code == 201
        clash = await api.call("POST", "/v1/runs", json={"op": "bootstrap", "target": "alpha"})
        assert clash.status_code == 409 and clash.json()["error"] == "conflict"
        assert clash.json()["details"]["run"]["run_id"] == busy.json()["run_id"]
        gate.set()
        for body, path in [
            ({"op": "explode", "target": "alpha"}, "op"),
            ({"op": "start", "target": 7}, "target"),
            ({"op": "start", "target": "alpha", "extra": 1}, "extra"),
            ({"op": "start"}, ""),
            ([1, 2], ""),
        ]:
            bad = await api.call("POST", "/v1/runs", json=body)
            assert bad.status_code == 422, body
            error = bad.json()
            assert error["error"] == "invalid_body"
            assert path in [p["path"] for p in error["details"]["problems"]], error
        for raw in [b"", b"{not json", b"\xff\xfe"]:
            bad = await api.call("POST", "/v1/runs", content=raw)
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_body"
        huge = await api.call("POST", "/v1/runs", content=b"x" * 200_000)
        assert huge.status_code == 413 and huge.json()["error"] == "body_too_large"
        assert huge.headers["connection"] == "close"  # the client opens a new one next
        header = await api.call(
            "POST",
            "/v1/runs",
            json={"op": "start", "target": "beta"},
            headers={"Idempotency-Key": "a b"},
        )
        assert header.status_code == 400 and header.json()["error"] == "invalid_parameter"


async def test_tokens_and_scopes_on_runs(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        body = {"op": "stop", "target": "alpha"}
        none = await api.call("POST", "/v1/runs", token=None, json=body)
        assert none.status_code == 401 and none.json()["error"] == "missing_authorization"
        wrong = await api.call("POST", "/v1/runs", token="not-a-token-of-this-instance", json=body)
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_token"
        basic = await api.client.post(
            "/v1/runs", json=body, headers={"Authorization": "Basic eDp5"}
        )
        assert basic.status_code == 401 and basic.json()["error"] == "invalid_token"
        reader = await api.call("POST", "/v1/runs", token=READER, json=body)
        assert reader.status_code == 403
        assert reader.json()["error"] == "insufficient_scope"
        assert reader.json()["details"]["scope"] == "control"
        assert (await api.call("GET", "/v1/runs", token=READER)).status_code == 200
        producer = await api.call("GET", "/v1/runs", token=WRITER)
        assert producer.status_code == 403 and producer.json()["details"]["scope"] == "read"
        # on a loopback bind only /v1/events, /v1/vms and /ws/events are open for reading
        assert (await api.call("GET", "/v1/runs", token=None)).status_code == 401
        assert (await api.call("GET", "/v1/vms", token=None)).status_code == 200
        assert (await api.call("GET", "/v1/events", token=None)).status_code == 200
        assert (await api.call("GET", "/healthz", token=None)).status_code == 200


async def test_list_get_events_receipt_replay(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        ids = []
        for vm in ["alpha", "beta", "alpha"]:
            created = await api.call("POST", "/v1/runs", json={"op": "stop", "target": vm})
            assert created.status_code == 201
            ids.append(created.json()["run_id"])
            await api.harness.ended(ids[-1])
        page = (await api.call("GET", "/v1/runs", params={"limit": 2})).json()
        assert [r["run_id"] for r in page["runs"]] == [ids[2], ids[1]]
        assert page["next_before"] == ids[1]
        rest = (await api.call("GET", "/v1/runs", params={"limit": 2, "before": ids[1]})).json()
        assert [r["run_id"] for r in rest["runs"]] == [ids[0]] and rest["next_before"] is None
        bad = await api.call("GET", "/v1/runs", params={"limit": 0})
        assert bad.status_code == 400
        assert bad.json()["details"] == {"parameter": "limit"}
        run = (await api.call("GET", f"/v1/runs/{ids[0]}")).json()
        assert run["state"] == "succeeded"
        events = (await api.call("GET", f"/v1/runs/{ids[0]}/events")).json()
        names = [e["event"] for e in events["events"]]
        assert names[0] == "command.accepted" and names[-1] == "command.completed"
        assert all(e["fields"]["run_id"] == ids[0] for e in events["events"])
        replay = await api.call("GET", f"/v1/runs/{ids[0]}/replay")
        assert replay.headers["content-type"].startswith("application/x-ndjson")
        lines = replay.content.splitlines()
        assert [orjson.loads(line) for line in lines] == events["events"]
        receipt = await api.call("GET", f"/v1/runs/{ids[0]}/receipt")
        assert receipt.json()["schema"] == "frameos.receipt.v1"
        assert receipt.json()["event_count"] == len(lines)
        assert receipt.json()["digest"].startswith("sha256:")
        assert (await api.call("GET", f"/v1/runs/{ids[0]}/receipt")).content == receipt.content
        for path in ["/v1/runs/nope", "/v1/runs/nope/events", "/v1/runs/nope/receipt"]:
            missing = await api.call("GET", path)
            assert missing.status_code == 404 and missing.json()["error"] == "unknown_run", path


async def test_cancel(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        api.harness.pool.gates[("start", "alpha")] = trio.Event()
        run = (await api.call("POST", "/v1/runs", json={"op": "start", "target": "alpha"})).json()
        canceled = await api.call("POST", f"/v1/runs/{run['run_id']}/cancel")
        assert canceled.status_code == 200
        assert canceled.json()["state"] in ("canceling", "canceled")
        ended = await api.harness.ended(run["run_id"])
        assert ended.state == "canceled"
        again = await api.call("POST", f"/v1/runs/{run['run_id']}/cancel")
        assert again.status_code == 409 and again.json()["error"] == "illegal_transition"
        assert (await api.call("POST", "/v1/runs/nope/cancel")).status_code == 404
