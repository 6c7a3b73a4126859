"""`frameos events --from nats://…`: the forwarded events of every host (or one), in each
host's seq order, every line naming its host. Runs nats-py on asyncio in this process (the
client has nothing else to do); every wait has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from frameos.client.discover import ClientError
from frameos.envelope import Envelope, decode
from frameos.forward.jetstream import CONNECT_S, REQUEST_S, BrokerError, open_connection

PREFIX = "frameos"  # the forwarder's default (forward.nats.subject_prefix)
IDLE_S = 1.0  # --follow: how often the wait for the next message wakes up


def show_with_host(*, json: bool) -> Callable[[str, Envelope], None]:
    """JSON: the envelope with `"host"` first; human: the host, then the rendered line."""
    if json:

        def show_json(host: str, envelope: Envelope) -> None:
            sys.stdout.buffer.write(b'{"host":"%s",%s' % (host.encode(), envelope.line[1:]))
            sys.stdout.buffer.flush()

        return show_json
    from rich.console import Console
    from rich.text import Text

    from frameos.render import render

    console = Console(highlight=False, soft_wrap=True)

    def show_human(host: str, envelope: Envelope) -> None:
        if envelope.severity != "debug":
            console.print(Text.assemble((host, "bold"), " ", render(envelope)))

    return show_human


async def held(js: JetStreamContext, subject: str) -> int:
    """How many messages the stream holds on `subject` (a wildcard too). Asked before
    subscribing: a push consumer's own `num_pending` may already be 0 when it is read."""
    stream = await js.find_stream_name_by_subject(subject)
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def hosts_held(js: JetStreamContext, prefix: str) -> list[str]:
    """The hosts whose events the stream holds (from its subjects)."""
    subject = f"{prefix}.*.events"
    stream = await js.find_stream_name_by_subject(subject)
    info = await js.stream_info(stream, subjects_filter=subject)
    return sorted(name.split(".")[-2] for name in info.state.subjects or {})


async def answers(url: str) -> bool:
    """Whether something accepts a TCP connection at the URL's host:port (told apart: nothing
    there, and a server that is not NATS, which never sends its INFO line)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 4222), CONNECT_S
        )
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def follow(
    url: str,
    show: Callable[[str, Envelope], None],
    *,
    host: str | None,
    since: int,
    follow: bool,
    prefix: str = PREFIX,
    on_live: Callable[[], None] | None = None,
) -> int:
    """Print what the broker holds (every host, or `host`), then with `follow` what comes.
    `on_live` is called once subscribed (the fleet view says "connected")."""

    try:
        nc = await open_connection(url, None, "frameos events --from")
    except BrokerError as exc:
        if "timeout" in str(exc).lower() and await answers(url):
            raise ClientError(
                f"{url} answered, but not as a NATS server (no INFO within {CONNECT_S:g} s): "
                "pass --from with the NATS server's address (its client port, 4222 by default)"
            ) from None
        raise ClientError(f"cannot reach the NATS server {url}: {exc}") from None
    try:
        js = nc.jetstream(timeout=REQUEST_S)
        subject = f"{prefix}.{host or '*'}.events"
        try:
            pending = await held(js, subject)
            if host is not None and not pending:
                await no_such_host(js, url, host, prefix, follow=follow)
            sub = await js.subscribe(
                subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
        except ClientError:
            raise
        except (ServiceUnavailableError, NoRespondersError):
            raise ClientError(
                f"{url}: JetStream is not enabled on that NATS server; start it with "
                "`nats-server -js` (forward.nats needs a stream to write to)"
            ) from None
        except NotFoundError:
            raise ClientError(
                f"{url}: no JetStream stream holds {subject}; is a frameos forwarding there "
                "(forward.nats)?"
            ) from None
        except (TimeoutError, NatsTimeout):
            raise ClientError(
                f"{url}: JetStream did not answer within {REQUEST_S:g} s; is the server "
                "overloaded? try again"
            ) from None
        except Exception as exc:  # anything else the server refuses: its words, once
            raise ClientError(
                f"{url}: JetStream refused to read {subject} ({type(exc).__name__}: "
                f"{getattr(exc, 'description', None) or exc}); is a frameos forwarding there "
                "(forward.nats)?"
            ) from None
        if on_live is not None:
            on_live()
        while follow or pending:
            try:
                msg = await sub.next_msg(timeout=IDLE_S if follow else REQUEST_S)
            except NatsTimeout:
                if follow:
                    continue
                raise ClientError(f"{url}: the stream stopped answering") from None
            pending = msg.metadata.num_pending
            envelope = decode(msg.data)
            if envelope.seq > since:
                show(msg.subject.split(".")[-2], envelope)
        return 0
    finally:
        await asyncio.wait_for(nc.close(), CONNECT_S)


async def no_such_host(
    js: JetStreamContext, url: str, host: str, prefix: str, *, follow: bool
) -> None:
    """--host names a host the stream holds nothing of: without --follow that is an error
    (exit 2, naming the hosts it holds); with --follow a note on stderr, then the wait (the
    host may start forwarding)."""
    hosts = ", ".join(await hosts_held(js, prefix)) or "none"
    what = f"{url}: no events from host {host!r} were found (the stream holds hosts: {hosts})"
    if not follow:
        raise ClientError(f"{what}; pass --host with one of them")
    print(f"{what}; waiting for its events", file=sys.stderr, flush=True)
