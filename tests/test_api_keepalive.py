"""A refusal (401, 404, 405) to a request whose body is still on its way keeps the connection
usable: the app reads the whole body before it answers. Before, the answer went out first and
the connection then ended without `Connection: close`, so a keep-alive client's next request
on it failed ("Server disconnected without sending a response")."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.api_helpers import serving_api

BODY = b'{"op": "restart", "target": "alpha"}'


@pytest.mark.parametrize(("path", "status"), [("/v1/runs", 401), ("/nope", 404), ("/healthz", 405)])
async def test_a_late_body_keeps_the_connection(tmp_path: Path, path: str, status: int) -> None:
    async with serving_api(tmp_path) as api:
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        async with stream:
            await stream.send_all(
                b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
                % (path.encode(), len(BODY))
            )
            # the body comes later (a client that writes head and body apart, a slow link):
            # the sleep makes that likely, the assertions do not depend on it
            await trio.sleep(0.1)
            await stream.send_all(BODY + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            with trio.fail_after(5):
                while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
                    chunk = await stream.receive_some(65536)
                    assert chunk, f"the connection ended after: {data!r}"
                    data += chunk
        statuses = [int(part[:3]) for part in data.split(b"HTTP/1.1 ")[1:]]
        assert statuses == [status, 200]
