"""The JetStream link (frameos/forward/jetstream.py) against a real nats-server: one
acknowledgement covers a batch, and a line the stream cannot take is never sent and never holds
the lines after it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from frameos.config.models import ForwardConfig, NatsConfig
from frameos.forward.jetstream import ACK_EVERY, JetStreamLink
from tests.conftest import require_tools
from tests.test_forward_nats import free_port, read_subject

pytestmark = pytest.mark.e2e


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    require_tools("nats-server")
    port = free_port()
    argv = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # ready once it accepts connections (polled, with a deadline)
            try:
                asyncio.run(_probe(port))
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no nats-server"
                time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


def lines_of(bodies: list[bytes]) -> list[bytes]:
    return [body + b"\n" for body in bodies]


def envelope(seq: int, pad: int = 20) -> bytes:
    return json.dumps({"seq": seq, "event": "message", "fields": {"text": "x" * pad}}).encode()


def nats_config(url: str) -> NatsConfig:
    return ForwardConfig.model_validate({"nats": {"url": url}, "host": "h"}).nats


async def send_all(url: str, bodies: list[bytes]) -> tuple[JetStreamLink, int]:
    """Connect a link, send `bodies` as seq 1..N, wait (with a deadline) until all are
    acknowledged; the link and how many messages the client received meanwhile."""
    changed = asyncio.Event()
    link = JetStreamLink(nats_config(url), "h", changed.set)
    assert await link.connect() == 0
    link.start_after(0)
    nc = cast(Any, link)._nc
    received = nc.stats["in_msgs"]
    await link.send(1, lines_of(bodies))
    async with asyncio.timeout(10):
        while link.acked < len(bodies):
            assert link.failure is None, link.failure
            changed.clear()
            await changed.wait()
    received = nc.stats["in_msgs"] - received
    await link.close()
    return link, received


def test_one_acknowledgement_covers_a_batch_and_every_line_is_stored_once_in_order(
    nats_url: str,
) -> None:
    n = 1000
    link, answers = asyncio.run(send_all(nats_url, [envelope(seq) for seq in range(1, n + 1)]))
    assert link.acked == link.sent == n
    assert link.in_flight == 0
    # one answer per ACK_EVERY lines and one for the last: 256, 512, 768, 1000
    assert answers == -(-n // ACK_EVERY)
    held = read_subject(nats_url, "frameos.h.events")
    assert [h["Nats-Msg-Id"] for h, _ in held] == [f"h:{seq}" for seq in range(1, n + 1)]
    assert [e["seq"] for _, e in held] == list(range(1, n + 1))


def test_on_a_stream_that_discards_new_messages_every_message_asks(nats_url: str) -> None:
    """Full, such a stream refuses one message and may take a smaller one after it: an
    acknowledgement there covers only its own message."""

    async def precreate() -> None:
        nc = await nats.connect(nats_url)
        config = StreamConfig(
            name="FRAMEOS", subjects=["frameos.*.events"], discard=DiscardPolicy.NEW
        )
        await nc.jetstream().add_stream(config)
        await nc.close()

    asyncio.run(precreate())
    link, answers = asyncio.run(send_all(nats_url, [envelope(seq) for seq in range(1, 301)]))
    assert (link.ack_every, link.acked, answers) == (1, 300, 300)


def test_a_line_over_the_streams_max_msg_size_is_not_sent_and_holds_nothing_up(
    nats_url: str,
) -> None:
    async def precreate() -> None:  # an operator's stream with a size limit
        nc = await nats.connect(nats_url)
        await nc.jetstream().add_stream(
            StreamConfig(name="FRAMEOS", subjects=["frameos.*.events"], max_msg_size=300)
        )
        await nc.close()

    asyncio.run(precreate())
    bodies = [envelope(1), envelope(2), envelope(3, pad=1000), envelope(4), envelope(5, pad=900)]
    link, _ = asyncio.run(send_all(nats_url, bodies))
    assert link.acked == 5 and link.in_flight == 0
    assert link.max_msg == 300
    assert link.too_large == [(3, len(bodies[2])), (5, len(bodies[4]))]
    held = read_subject(nats_url, "frameos.h.events")
    assert [e["seq"] for _, e in held] == [1, 2, 4]


def test_a_send_of_only_lines_too_large_is_acknowledged_at_once(nats_url: str) -> None:
    async def run() -> JetStreamLink:
        link = JetStreamLink(nats_config(nats_url), "h", lambda: None)
        await link.connect()
        link.start_after(0)
        link.max_msg = 100
        await link.send(1, lines_of([envelope(1, pad=200), envelope(2, pad=300)]))
        await link.close()
        return link

    link = asyncio.run(run())
    assert (link.acked, link.in_flight, [seq for seq, _ in link.too_large]) == (2, 0, [1, 2])


def test_the_sender_reports_a_line_it_could_not_forward(tmp_path: Path) -> None:
    """The sender's message names the seq, the size, the limit and the fix."""
    from frameos.forward.sender import Sender

    sent: list[dict[str, object]] = []
    sender = Sender.__new__(Sender)
    sender.nats = cast(
        NatsConfig, SimpleNamespace(url="nats://broker:4222", stream=SimpleNamespace(name="S"))
    )
    sender.link = cast(Any, SimpleNamespace(too_large=[(7, 5000)], max_msg=300))
    sender.report = lambda **record: sent.append(record)  # type: ignore[method-assign]
    sender._report_too_large()
    assert sent == [
        {
            "message": "NATS forwarder: event 7 is 5000 bytes, more than nats://broker:4222 "
            "takes (300: the stream's max_msg_size or the server's max_payload); not "
            "forwarded, it stays in the event log: raise max_msg_size of stream S or the "
            "server's max_payload",
            "severity": "error",
        }
    ]
    assert sender.link.too_large == []
