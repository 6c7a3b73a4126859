"""POST /v1/events (ext.NAME from external producers), GET /v1/vms and the VM output log, and the
reads a non-loopback bind closes (SPEC §7.3, R1/R4)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio

from frameos.bus import Bus
from frameos.envelope import decode, encode_ext
from frameos.eventlog import EventLog
from tests.api_helpers import ADMIN, READER, WRITER, serving_api


def logged(tmp_path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]


async def test_ext_event_is_in_the_log_when_201_answers(tmp_path: Path) -> None:
    async with serving_api(tmp_path, fsync="always") as api:
        body = {"event": "ext.renderer.frame", "severity": "progress", "fields": {"n": 1}}
        posted = await api.call("POST", "/v1/events", token=WRITER, json=body)
        assert posted.status_code == 201
        seq = posted.json()["seq"]
        # answered after the write and the fsync: the file has it now, with the same bytes
        line = next(e for e in logged(tmp_path) if e["seq"] == seq)
        assert line["event"] == "ext.renderer.frame" and line["severity"] == "progress"
        assert line["fields"] == {"n": 1}
        assert api.bus.written_seq >= seq


async def test_ext_event_idempotency_and_expected_previous_seq(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        key = {"Idempotency-Key": "evt-1"}
        body = {"event": "ext.agent.ping", "fields": {"a": [1, 2]}}
        first = await api.call("POST", "/v1/events", json=body, headers=key)
        again = await api.call("POST", "/v1/events", json=body, headers=key)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == {**first.json(), "replayed": True}
        assert [e["seq"] for e in logged(tmp_path) if e["event"] == "ext.agent.ping"] == [
            first.json()["seq"]
        ]
        other = await api.call("POST", "/v1/events", json={**body, "fields": {}}, headers=key)
        assert other.status_code == 409 and other.json()["error"] == "idempotency_mismatch"
        head = api.bus.last_seq
        stale = await api.call(
            "POST", "/v1/events", json={**body, "expected_previous_seq": head - 1}
        )
        assert stale.status_code == 409
        assert stale.json()["error"] == "seq_conflict" and stale.json()["details"]["head"] == head
        fits = await api.call("POST", "/v1/events", json={**body, "expected_previous_seq": head})
        assert fits.status_code == 201 and fits.json()["seq"] == head + 1


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"event": "vm.launched", "fields": {"vm": "x", "pid": 1, "attempt": 1}}, "event"),
        ({"event": "command.completed"}, "event"),
        ({"event": 'ext.x","seq":1,"event":"vm.exited'}, "event"),
        ({"event": "ext.Upper"}, "event"),
        ({"event": "ext.ok", "severity": "fatal"}, "severity"),
        ({"event": "ext.ok", "fields": [1]}, "fields"),
        ({"event": "ext.ok", "fields": {"big": "x" * 17_000}}, "fields"),
        ({"event": "ext.ok", "expected_previous_seq": -1}, "expected_previous_seq"),
        ({"event": "ext.ok", "seq": 5}, "seq"),
    ],
)
async def test_a_producer_cannot_forge_or_overfill(
    tmp_path: Path, body: dict[str, object], path: str
) -> None:
    async with serving_api(tmp_path) as api:
        before = api.bus.last_seq
        refused = await api.call("POST", "/v1/events", token=WRITER, json=body)
        assert refused.status_code == 422
        assert path in [p["path"] for p in refused.json()["details"]["problems"]]
        assert api.bus.last_seq == before  # nothing published


async def test_ext_event_scopes(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        body = {"event": "ext.ok"}
        reader = await api.call("POST", "/v1/events", token=READER, json=body)
        assert reader.status_code == 403 and reader.json()["details"]["scope"] == "events:write"
        assert (await api.call("POST", "/v1/events", token=None, json=body)).status_code == 401
        assert (await api.call("POST", "/v1/events", token=ADMIN, json=body)).status_code == 201
        huge = await api.call("POST", "/v1/events", token=WRITER, content=b"{" + b" " * 100_000)
        assert huge.status_code == 413 and huge.json()["error"] == "body_too_large"


def test_encode_ext_refuses_what_the_api_would() -> None:
    envelope = encode_ext("ext.a", "info", b'{"k":"v"}', 7, 1.5)
    assert decode(envelope.line).fields() == {"k": "v"} and envelope.event is None
    for name, fields in [("vm.launched", b"{}"), ("ext.a", b"[]"), ("ext.a", b'{"a":\n1}')]:
        with pytest.raises(ValueError, match=r"ext\.NAME|JSON object"):
            encode_ext(name, "info", fields, 1, 1.0)
    with pytest.raises(ValueError, match="severity"):
        encode_ext("ext.a", "loud", b"{}", 1, 1.0)  # type: ignore[arg-type]


async def test_publish_ext_keeps_seq_order(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", max_bytes=None, keep=2)
    log.open()
    bus = Bus(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        first = bus.publish_ext("ext.a", "info", b"{}")
        with pytest.raises(ValueError, match=r"ext\.NAME"):
            bus.publish_ext("runtime:ready", "info", b"{}")
        second = bus.publish_ext("ext.b", "warn", b'{"x":1}')
        await bus.aclose()
    log.close()
    assert (first.seq, second.seq) == (1, 2)
    assert [e["event"] for e in logged(tmp_path)] == ["ext.a", "ext.b"]


async def test_vms_and_output_log(tmp_path: Path) -> None:
    async with serving_api(tmp_path) as api:
        vms = (await api.call("GET", "/v1/vms")).json()["vms"]
        assert [v["name"] for v in vms] == ["alpha", "beta"]
        one = await api.call("GET", "/v1/vms/alpha")
        assert one.status_code == 200 and one.json()["config"]["env"]["API_TOKEN"] == "***"
        missing = await api.call("GET", "/v1/vms/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_vm"
        empty = (await api.call("GET", "/v1/vms/alpha/log")).json()
        assert empty == {"data": "", "offset": 0, "next_offset": 0, "size": 0, "rotated": False}
        (api.log_dir / "alpha.log").write_bytes("line é\n".encode() * 3)
        part = (await api.call("GET", "/v1/vms/alpha/log", params={"limit": 6})).json()
        # the é (2 bytes) is cut at byte 6: left for the next read, not mangled
        assert part["data"] == "line " and part["next_offset"] == 5 and part["size"] == 24
        rest = await api.call("GET", "/v1/vms/alpha/log", params={"offset": part["next_offset"]})
        assert rest.json()["data"] == "é\n" + "line é\n" * 2 and rest.json()["next_offset"] == 24
        (api.log_dir / "alpha.log").write_bytes(b"new\n")  # rotated under the reader
        rotated = (await api.call("GET", "/v1/vms/alpha/log", params={"offset": 24})).json()
        assert rotated["rotated"] is True and rotated["data"] == "new\n" and rotated["offset"] == 0
        bad = await api.call("GET", "/v1/vms/alpha/log", params={"offset": "-1"})
        assert bad.status_code == 400 and bad.json()["details"] == {"parameter": "offset"}
        closed = await api.call("GET", "/v1/vms/alpha/log", token=None)
        assert closed.status_code == 401


async def test_non_loopback_bind_closes_the_open_reads(tmp_path: Path) -> None:
    async with serving_api(tmp_path, loopback=False) as api:
        for path in ["/v1/vms", "/v1/vms/alpha", "/v1/events", "/v1/openapi.json"]:
            refused = await api.call("GET", path, token=None)
            assert refused.status_code == 401, path
            assert refused.json()["error"] == "missing_authorization"
            assert (await api.call("GET", path, token=READER)).status_code == 200, path
        ws = (
            b"GET /ws/events HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
        )
        assert (await _status(api.port, ws + b"\r\n")) == 401
        assert (
            await _status(api.port, ws + b"authorization: Bearer " + READER.encode() + b"\r\n\r\n")
        ) == 101
        assert (
            await _status(api.port, ws + b"authorization: Bearer " + WRITER.encode() + b"\r\n\r\n")
        ) == 403


async def _status(port: int, raw: bytes) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(5):
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1])


async def test_a_poll_cursor_ahead_of_the_log_is_refused_as_the_websocket_refuses_it(
    tmp_path: Path,
) -> None:
    """FINDINGS D11: `after` beyond the newest event (a poller whose instance's log was wiped)
    is 400 invalid_cursor naming the head, like /ws/events?since=, not a silent empty page."""
    from frameos.watch import wsread

    async with serving_api(tmp_path) as api:
        head = (await api.call("GET", "/v1/events", params={"after": 0})).json()["head_cursor"]
        at_head = await api.call("GET", "/v1/events", params={"after": head})
        assert at_head.status_code == 200 and at_head.json()["events"] == []
        ahead = await api.call("GET", "/v1/events", params={"after": 99_999_999})
        assert ahead.status_code == 400
        body = ahead.json()
        assert body["error"] == "invalid_cursor"
        assert body["details"] == {
            "parameter": "after",
            "requested_cursor": 99_999_999,
            "head_cursor": head,
        }
        assert f"after=99999999 is ahead of the newest event {head}" in body["message"]
        ws_url = api.url.replace("http", "ws", 1) + "/ws/events?since=99999999"
        with pytest.raises(wsread.Rejected) as info:
            async with wsread.connect(ws_url, [], connect_timeout=5, close_timeout=1):
                pass
        assert info.value.status_code == 400
        assert orjson.loads(info.value.body)["error"] == body["error"]
