"""The envelope: an event serialized once, with its sequence number and time (SPEC §3.1).

The `line` bytes (JSON + newline) are what stdout, the event log, websocket clients and HTTP
polls all carry; nothing re-serializes an event after `encode`. An envelope published in this
process also carries its model (`event`), so observers `match` on classes without decoding;
one read back from the log decodes its model on demand (`model()`).
"""

from __future__ import annotations

import re

import orjson

from frameos.events import ENVELOPE_VERSION, REGISTRY, SEVERITIES, Event, Severity

_HEAD = b'{"v":%d,"seq":%d,"timestamp":%.6f,"event":"%s","severity":"%s","fields":'


class Envelope:
    """One published event: its seq, name, severity, time, serialized line and (maybe) model."""

    __slots__ = ("event", "line", "name", "seq", "severity", "timestamp")

    def __init__(
        self,
        seq: int,
        name: str,
        severity: str,
        timestamp: float,
        line: bytes,
        event: Event | None = None,
    ) -> None:
        self.seq = seq
        self.name = name
        self.severity = severity
        self.timestamp = timestamp
        self.line = line
        self.event = event  # the model, for events published in this process

    @property
    def json(self) -> bytes:
        """The envelope JSON without the trailing newline."""
        return self.line[:-1]

    def fields(self) -> dict[str, object]:
        """Decode the fields (for renderers; the hot path never calls this)."""
        data = orjson.loads(self.line)
        fields: dict[str, object] = data["fields"]
        return fields

    def model(self) -> Event:
        """The event model: the published instance, or decoded (once) from the line.

        Raises ValueError when the name is not a declared event (e.g. an `ext.*` event) or the
        fields do not fit its model.
        """
        if self.event is None:
            cls = REGISTRY.get(self.name)
            if cls is None:
                raise ValueError(f"event {self.name!r} is not declared in frameos.events")
            self.event = cls.model_validate(self.fields())  # ValidationError is a ValueError
        return self.event


def encode(event: Event, seq: int, timestamp: float, severity: Severity | None = None) -> Envelope:
    """Serialize an event into its envelope, once."""
    sev = severity or event.SEVERITY
    head = _HEAD % (ENVELOPE_VERSION, seq, timestamp, event.NAME.encode(), sev.encode())
    return Envelope(seq, event.NAME, sev, timestamp, head + event.to_json() + b"}\n", event)


# `ext.NAME` (SPEC §7.3): what an external producer may call its events; nothing to escape.
EXT_NAME = r"^ext\.[a-z0-9][a-z0-9_.:-]{0,99}$"
_EXT_NAME = re.compile(EXT_NAME)


def encode_ext(
    name: str, severity: Severity, fields_json: bytes, seq: int, timestamp: float
) -> Envelope:
    """The envelope of an external producer's `ext.NAME` event (not a model: `event` is None,
    and `model()` raises). `fields_json` is one compact JSON object, as orjson writes it (the
    API validated it). Raises ValueError for any other name, severity or fields."""
    if not _EXT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an ext.NAME event name ({EXT_NAME})")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, found {severity!r}")
    if not fields_json.startswith(b"{") or not fields_json.endswith(b"}") or b"\n" in fields_json:
        raise ValueError("fields must be one JSON object on one line")
    head = _HEAD % (ENVELOPE_VERSION, seq, timestamp, name.encode(), severity.encode())
    return Envelope(seq, name, severity, timestamp, head + fields_json + b"}\n")


def decode(line: bytes) -> Envelope:
    """Parse one log line back into an Envelope (raises ValueError when it is not one)."""
    try:
        data = orjson.loads(line)
        seq, name, severity, ts = data["seq"], data["event"], data["severity"], data["timestamp"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an event envelope: {exc}") from None
    if not isinstance(seq, int) or not isinstance(name, str):
        raise ValueError("not an event envelope: seq or event has the wrong type")
    body = line if line.endswith(b"\n") else line + b"\n"
    return Envelope(seq, name, str(severity), float(ts), body)
