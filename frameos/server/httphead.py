"""The front door's reading of an HTTP/1.x request head (RFC 9112), before hypercorn sees it.

The front door reads every request head on a connection (not only the first), so it can answer
what hypercorn's parser would answer with an empty body, or not at all, in the documented JSON
shape, and so it knows where each request ends: a body is `Content-Length` bytes, and a request
with `Transfer-Encoding` is refused (411 for chunked, 501 for anything else; no route takes a
body of unknown length), which also rules out request smuggling with both headers (400, close).
`Upgrade` headers are never passed on: hypercorn must not switch protocols under the splice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 16 * 1024
WS_PATH = b"/ws/events"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_FIX_HEAD = "send one request line `METHOD /path HTTP/1.1`, `Name: value` header lines, CRLF"


class Rejected(Exception):
    """A request the front door answers itself: status, error body and extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        **details: object,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers
        self.details = details

    def body(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, "details": self.details}


@dataclass
class Head:
    """One parsed request head: what the front door needs to route and frame it."""

    method: bytes
    target: bytes
    path: bytes
    version: bytes
    content_length: int
    last: bool  # the connection ends after this request (HTTP/1.0, or Connection: close)
    upgrade: bytes  # lowercased Upgrade value, b"" without one
    headers: dict[bytes, bytes] = field(default_factory=dict)  # lowercased names
    forward: bytes = b""  # the head as hypercorn gets it (Upgrade lines removed)


def head_end(buffer: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1 (leading CRLFs are allowed)."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(raw: bytes) -> Head:
    """Parse and check one complete head (ending in CRLF CRLF); raise Rejected when it is bad."""
    if len(raw) > MAX_HEAD_BYTES:
        raise _too_large()
    lines = raw.lstrip(b"\r\n")[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise Rejected(400, "bad_request", f"malformed request line; {_FIX_HEAD}")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None:
        raise Rejected(400, "bad_request", f"malformed HTTP version; {_FIX_HEAD}")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise Rejected(
            505,
            "http_version_not_supported",
            f"{version.decode()} is not served here; send HTTP/1.1 (or HTTP/1.0)",
            version=version.decode(),
        )
    headers: dict[bytes, bytes] = {}
    content_lengths: set[bytes] = set()
    upgrade_lines = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise Rejected(400, "bad_request", f"malformed header line; {_FIX_HEAD}")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            content_lengths.update(v.strip(b" \t") for v in value.split(b","))
        elif name == b"upgrade":
            upgrade_lines = True
        headers[name] = headers[name] + b"," + value if name in headers else value
    if b"transfer-encoding" in headers:
        if content_lengths:
            raise Rejected(
                400,
                "bad_request",
                "both Content-Length and Transfer-Encoding; send only Content-Length",
            )
        if headers[b"transfer-encoding"].lower() == b"chunked":
            raise Rejected(
                411,
                "length_required",
                "chunked request bodies are not accepted; send Content-Length",
            )
        raise Rejected(
            501,
            "not_implemented",
            "unsupported Transfer-Encoding; send the body with Content-Length",
        )
    length = 0
    if content_lengths:
        value = next(iter(content_lengths))
        if len(content_lengths) > 1 or not value.isdigit() or len(value) > 18:
            raise Rejected(400, "bad_request", "invalid Content-Length; send one decimal length")
        length = int(value)
    if version == b"HTTP/1.1" and b"host" not in headers:
        raise Rejected(400, "bad_request", "HTTP/1.1 needs a Host header")
    tokens = {t.strip() for t in headers.get(b"connection", b"").lower().split(b",")}
    last = b"keep-alive" not in tokens if version == b"HTTP/1.0" else b"close" in tokens
    forward = raw
    if upgrade_lines:
        kept = [ln for ln in lines if not ln.lower().startswith(b"upgrade:")]
        forward = b"\r\n".join(kept) + b"\r\n\r\n"
    return Head(
        method=method,
        target=target,
        path=target.split(b"?", 1)[0],
        version=version,
        content_length=length,
        last=last,
        upgrade=headers.get(b"upgrade", b"").lower(),
        headers=headers,
        forward=forward,
    )


def _too_large() -> Rejected:
    return Rejected(
        431,
        "headers_too_large",
        f"the request head exceeds {MAX_HEAD_BYTES // 1024} KiB; send fewer or shorter headers",
        limit_bytes=MAX_HEAD_BYTES,
    )


def too_large() -> Rejected:
    """The rejection for a head that grew past MAX_HEAD_BYTES without ending."""
    return _too_large()


def route_event_stream(head: Head, first: bool) -> bool:
    """True when this head is the event stream's upgrade; Rejected for a misuse of the path.

    Any websocket upgrade elsewhere, or on a connection that already carried a request, gets
    404 (`/ws/events` must be the connection's first request); other methods get 405.
    """
    if head.path == WS_PATH:
        if head.method != b"GET":
            raise Rejected(
                405,
                "method_not_allowed",
                f"{head.method.decode()} is not allowed on /ws/events; use GET with a "
                "websocket upgrade",
                headers=(("allow", "GET"),),
                path="/ws/events",
                method=head.method.decode(),
            )
        if first:
            version = head.headers.get(b"sec-websocket-version")
            if head.upgrade == b"websocket" and version is not None and version.strip() != b"13":
                raise Rejected(
                    426,
                    "upgrade_required",
                    f"Sec-WebSocket-Version {version.decode('latin-1')!r} is not supported; "
                    "send Sec-WebSocket-Version: 13",
                    headers=(("sec-websocket-version", "13"),),
                )
            return True
        raise Rejected(
            404,
            "not_found",
            "/ws/events must be the first request on its connection; open a new connection",
            path="/ws/events",
        )
    if head.upgrade == b"websocket":
        raise Rejected(
            404,
            "not_found",
            f"no websocket at {head.path.decode('latin-1')}; the event stream is /ws/events",
            path=head.path.decode("latin-1"),
        )
    return False
