"""The /v1 API's tokens on the real `frameos run` (SPEC §7.3): the generated token (0600, kept
across restarts), named tokens with narrower scopes, a non-loopback bind closing the open reads
(/ws/events included). (The HTTP stack's private socket needing no /tmp is proved under the
real systemd with a read-only /tmp: tests/test_systemd_e2e.py.)"""

from __future__ import annotations

import signal
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from frameos import events as ev
from tests.conftest import running_frameos, write_config

pytestmark = pytest.mark.e2e

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def vm(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "command": SLEEPER,
        "cooperative": {"method": "none"},
        "timeouts": {"cooperative_ms": 0, "sigterm_ms": 3000, "sigkill_ms": 2000},
    }


async def test_generated_token_and_named_scopes(tmp_path: Path) -> None:
    reader = tmp_path / "reader-token"
    reader.write_text("reader-token-0123456789abcdef\n")
    config = write_config(
        tmp_path,
        vms=[vm("alpha")],
        auth={"tokens": [{"name": "dash", "token_file": str(reader), "scopes": ["read"]}]},
    )
    generated = tmp_path / "state" / "api-token"
    secrets = []
    for _ in range(2):  # the token made at the first start is the one of the second
        async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
            assert stat.S_IMODE(generated.stat().st_mode) == 0o600
            secrets.append(generated.read_text().strip())
            async with httpx.AsyncClient(base_url=fos.url, timeout=10) as http:
                own = {"Authorization": f"Bearer {secrets[-1]}"}
                dash = {"Authorization": "Bearer reader-token-0123456789abcdef"}
                body = {"op": "restart", "target": "alpha"}
                assert (await http.post("/v1/runs", json=body)).status_code == 401
                refused = await http.post("/v1/runs", json=body, headers=dash)
                assert refused.status_code == 403
                assert refused.json()["details"] == {"scope": "control"}
                assert (await http.get("/v1/runs", headers=dash)).status_code == 200
                assert (await http.get("/v1/vms")).status_code == 200  # loopback: open read
                created = await http.post("/v1/runs", json=body, headers=own)
                assert created.status_code == 201
                run_id = created.json()["run_id"]
                await fos.wait_for(
                    ev.CommandCompleted, lambda e, r=run_id: e["fields"]["run_id"] == r
                )
            fos.send(signal.SIGTERM)
            assert await fos.wait_exit() == 0
    assert secrets[0] == secrets[1]


async def test_non_loopback_bind_needs_a_token_everywhere(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("instance-token-0123456789abcdef\n")
    config = write_config(tmp_path, frame_host="0.0.0.0", auth={"token_file": str(token)})
    async with running_frameos(tmp_path, "run", "--config", str(config)) as fos:
        assert not (tmp_path / "state" / "api-token").exists()
        port = int(fos.url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
            for path in ["/v1/vms", "/v1/events", "/v1/openapi.json"]:
                refused = await http.get(path)
                assert refused.status_code == 401, path
                assert refused.json()["error"] == "missing_authorization"
            own = {"Authorization": "Bearer instance-token-0123456789abcdef"}
            assert (await http.get("/v1/vms", headers=own)).status_code == 200
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /ws/events HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"sec-websocket-version: 13\r\n\r\n"
            )
            with trio.fail_after(5):
                answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 401 ")
        fos.send(signal.SIGTERM)
        assert await fos.wait_exit() == 0
