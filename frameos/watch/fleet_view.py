"""The fleet screen, drawn from a FleetModel with rich: a header, one row per host, a footer.
`fleet_screen(model, width, height, now)` is the whole of it (called with `model.lock` held)."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.text import Text

from frameos.render import SEVERITY_STYLE, describe
from frameos.watch.fleet import FleetModel, Host
from frameos.watch.status import duration
from frameos.watch.view import fit

KEYS = "↑/↓ j/k select · enter the host's own view (esc back) · q quit"
COLUMNS = (("READY", 9), ("STATE", 9), ("VMS", 6), ("SEEN", 9))  # after the host's name


def header(model: FleetModel) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("frameos fleet ", style="bold")
    text.append(f"{model.url}  ")
    count = len(model.hosts)
    text.append(f"{count} host{'s' if count != 1 else ''}  ")
    connected = model.connection == "connected"
    text.append(model.connection, style="green" if connected else "bold yellow")
    return text


def ready_cell(host: Host) -> tuple[str, str]:
    if host.ready is None:
        return "-", "dim"
    return ("ready", "bold green") if host.ready else ("not ready", "bold red")


def host_table(model: FleetModel, width: int, now: float) -> Text:
    """The host rows as one Text; the name gives way first when the terminal is narrow."""
    fixed = sum(size + 1 for _, size in COLUMNS) + 1 + 20  # the last event gets 20 at least
    longest = max((len(name) for name in model.hosts), default=4)
    name_width = max(6, min(longest + 2, width - fixed))
    table = Text(no_wrap=True, overflow="ellipsis")
    table.append(fit("HOST", name_width), style="bold")
    for title, size in COLUMNS:
        table.append(" " + fit(title, size), style="bold")
    table.append(" LAST EVENT", style="bold")
    selected = model.selected_host
    for host in model.hosts.values():
        table.append("\n")
        mine = host is selected
        table.append(
            ("> " if mine else "  ") + fit(host.name, name_width - 2), "reverse" if mine else ""
        )
        word, style = ready_cell(host)
        table.append(" ")
        table.append(fit(word, COLUMNS[0][1]), style)
        table.append(" " + fit(host.state, COLUMNS[1][1]))
        table.append(" " + fit(f"{host.running}/{len(host.vms)}", COLUMNS[2][1]))
        seen = f"{duration(max(0.0, now - host.seen))} ago" if host.seen else "-"
        table.append(" " + fit(seen, COLUMNS[3][1]), "dim")
        table.append(" ")
        if host.last is not None:
            stamp = time.strftime("%H:%M:%S", time.localtime(host.last.timestamp))
            table.append(f"{stamp} ", "dim")
            table.append(describe(host.last), SEVERITY_STYLE.get(host.last.severity, ""))
        else:
            table.append("-", "dim")
    return table


def fleet_screen(model: FleetModel, width: int, now: float) -> RenderableType:
    """The whole screen for a terminal `width` wide."""
    parts: list[RenderableType] = [header(model), Text("")]
    if model.hosts:
        parts.append(host_table(model, width, now))
    else:
        parts.append(
            Text(
                "no host has forwarded an event to this broker yet (forward.nats in their config)",
                style="dim",
            )
        )
    parts.append(Text(""))
    if model.note:
        parts.append(Text(model.note, style="bold yellow", no_wrap=True, overflow="ellipsis"))
    else:
        parts.append(Text(KEYS, style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)
