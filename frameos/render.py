"""How a person reads an event: one line with time, severity colour and the event's template.

The template is the event model's `TEMPLATE`; the field list comes from the model, so the
renderer never repeats what events.py declares.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from frameos.envelope import Envelope
from frameos.events import REGISTRY

SEVERITY_STYLE = {
    "debug": "dim",
    "info": "cyan",
    "progress": "blue",
    "warn": "yellow",
    "error": "bold red",
    "blocker": "bold white on red",
}


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def describe(name: str, fields: dict[str, Any]) -> str:
    """The event's sentence, or `key=value` pairs for an event this version does not know."""
    cls = REGISTRY.get(name)
    if cls is not None and cls.TEMPLATE:
        try:
            shown = {k: "none" if v is None else v for k, v in fields.items()}
            return cls.TEMPLATE.format_map(_Fields(shown))
        except (ValueError, TypeError):
            pass
    return " ".join(f"{k}={v}" for k, v in fields.items())


def render(envelope: Envelope) -> Text:
    """One rich line: `HH:MM:SS.mmm SEVERITY event  sentence`."""
    stamp = time.strftime("%H:%M:%S", time.localtime(envelope.timestamp))
    millis = int((envelope.timestamp % 1) * 1000)
    style = SEVERITY_STYLE.get(envelope.severity, "")
    line = Text(f"{stamp}.{millis:03d} ", style="dim")
    line.append(f"{envelope.severity.upper():<9}", style=style)
    line.append(f"{envelope.name:<26} ", style="bold")
    line.append(describe(envelope.name, envelope.fields()))
    return line
