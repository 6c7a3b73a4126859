"""How a person reads an event: one line with time, severity colour and the event's sentence.

The sentence is the event model's `TEMPLATE`, filled from the model; a few events read better
than a template can say (a reload with or without an error, a failed check with its problems one
per line), and `sentence` matches on their classes. Two format specs make numbers readable:
`{rss_bytes:size}` → "58.8 MiB", `{restarts:count restart}` → "1 restart" / "4 restarts".
"""

from __future__ import annotations

import string
import time
from typing import TYPE_CHECKING, Any

from frameos.envelope import Envelope
from frameos.events import (
    CommandAccepted,
    Event,
    RuntimeCheckFailed,
    RuntimeReload,
    VmLaunched,
    VmRestartScheduled,
)

if TYPE_CHECKING:
    from rich.text import Text

SEVERITY_STYLE = {
    "debug": "dim",
    "info": "cyan",
    "progress": "blue",
    "warn": "yellow",
    "error": "bold red",
    "blocker": "bold white on red",
}
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(count: float) -> str:
    """Bytes as a person reads them: `512 B`, `1.5 KiB`, `58.8 MiB`."""
    value, unit = float(count), 0
    while abs(value) >= 1024 and unit < len(UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {UNITS[unit]}"


def plural(count: int, noun: str) -> str:
    """`1 restart`, `0 restarts`, `4 restarts`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class _Formatter(string.Formatter):
    """str.format plus the `size` and `count NOUN` specs; None reads as "none"."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        if value is None:
            return "none"
        if format_spec == "size" and isinstance(value, int | float):
            return size(value)
        if format_spec.startswith("count ") and isinstance(value, int):
            return plural(value, format_spec.removeprefix("count "))
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()


def sentence(event: Event) -> str:
    """The event's sentence."""
    match event:
        case RuntimeReload(changed=changed, error=None, vms=vms):
            done = [
                f"{what} {', '.join(names)}"
                for what, names in vms.model_dump().items()
                if names and what != "unchanged"
            ]
            if not changed:
                return "reload: nothing changed"
            return f"reload: changed {', '.join(changed)}" + (
                f" ({'; '.join(done)})" if done else ""
            )
        case CommandAccepted(run_id=run_id, op=op, target=None):
            return f"run {run_id}: {op} accepted"
        case RuntimeReload(error=error):
            return f"reload failed: {error}"
        case RuntimeCheckFailed(problems=problems) if len(problems) > 1:
            return "\n".join(
                [f"check failed: {len(problems)} problems", *(f"- {p}" for p in problems)]
            )
        # `attempt` numbers every launch of the VM, an operator's `start` included: it is not
        # the policy's restart count (RESTARTS, vm.gave_up), so the line says attempt (D2)
        case VmLaunched(vm=vm, pid=pid, attempt=attempt) if attempt > 1:
            return f"{vm}: launched again (pid {pid}, attempt {attempt})"
        case VmRestartScheduled(vm=vm, attempt=attempt, backoff_ms=backoff_ms):
            return f"{vm}: restarting in {backoff_ms} ms (attempt {attempt})"
    if not event.TEMPLATE:
        return ""
    fields = {
        info.alias or name: getattr(event, name) for name, info in type(event).model_fields.items()
    }
    return _FORMATTER.vformat(event.TEMPLATE, (), fields)


def describe(envelope: Envelope) -> str:
    """The sentence, or `key=value` pairs for an event this version does not know."""
    try:
        return sentence(envelope.model())
    except (ValueError, KeyError, TypeError, IndexError):
        return " ".join(f"{k}={v}" for k, v in envelope.fields().items())


def render(envelope: Envelope) -> Text:
    """One rich line, `HH:MM:SS.mmm SEVERITY event  sentence`; a sentence's further lines (a
    list of problems) are indented under its first."""
    from rich.text import Text  # here: the sentences (and `plural`) are needed without rich

    stamp = time.strftime("%H:%M:%S", time.localtime(envelope.timestamp))
    millis = int((envelope.timestamp % 1) * 1000)
    style = SEVERITY_STYLE.get(envelope.severity, "")
    line = Text()
    line.append(f"{stamp}.{millis:03d} ", style="dim")  # not Text(style=): the whole line dim
    line.append(f"{envelope.severity.upper():<9}", style=style)
    line.append(f"{envelope.name:<26} ", style="bold")
    first, *rest = describe(envelope).split("\n")
    line.append(first)
    indent = " " * (13 + 9 + 27)
    for more in rest:
        line.append(f"\n{indent}{more}")
    return line
