"""The screen, drawn from a Model with rich: header, VMs, messages, workers, a footer of keys;
the detail of one VM; the help. `screen(model, width, height)` is the whole of it, cut to fit."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from frameos.render import SEVERITY_STYLE
from frameos.watch.model import Model, Msg, Vm
from frameos.watch.status import duration

STATE_STYLE = {
    "running": "bold green",
    "starting": "cyan",
    "idle": "dim",
    "backoff": "yellow",
    "stopping": "magenta",
    "stopped": "dim white",
    "finished": "blue",
    "gave_up": "bold red",
}
RUN_STYLE = {"succeeded": "green", "failed": "bold red", "canceled": "yellow"}
KEYS = (
    "↑/↓ j/k select · enter detail · s stop/start · r restart · b bootstrap · / filter · "
    "? help · q quit"
)
HELP = (
    ("↑ ↓  j k", "select a VM"),
    ("enter", "the VM's detail: config, its events, its output log (following)"),
    ("esc", "back (or cancel a question, or the filter)"),
    ("s", "stop the selected VM, or start it when it is stopped (asks y/n)"),
    ("r", "restart the selected VM (asks y/n)"),
    ("b", "run the selected VM's bootstrap again (asks y/n)"),
    ("/", "filter the messages (type, enter keeps it, esc clears it)"),
    ("?", "this help"),
    ("q", "quit the view; frameos and its VMs keep running"),
)


def header(model: Model, now: float) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("frameos ", style="bold")
    text.append(f"{model.version} ", style="bold")
    text.append(f"{model.host}  ")
    uptime = model.uptime(now)
    text.append(f"up {duration(uptime) if uptime is not None else '-'}  ")
    connected = model.connection == "connected"
    text.append(model.connection, style="green" if connected else "bold yellow")
    text.append(f"  seq {model.seq}  ", style="dim" if connected else "")
    if model.ready is None:
        text.append("readiness unknown", style="dim")
    elif model.ready:
        text.append("ready", style="bold green")
    else:
        text.append("NOT READY: " + "; ".join(model.reasons or ["?"]), style="bold red")
    return text


def bootstrap_cell(vm: Vm, width: int = 10) -> Text:
    """`━━━━━╺──── 2/4 ssh`: a bar of the steps done, then the step running (or the outcome)."""
    done, total, current = vm.progress()
    if vm.bootstrap in ("none", "ok") or total == 0:
        return Text(vm.bootstrap if vm.bootstrap != "none" else "-", style="dim")
    style = "red" if vm.bootstrap == "failed" else "blue"
    filled = width * done // total
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("━" * filled, style=style)
    text.append("─" * (width - filled), style="dim")
    text.append(f" {done}/{total} {vm.bootstrap if current is None else current}", style=style)
    return text


OTHER_COLUMNS = 76  # what the columns after the name need, with their spaces
COLUMNS = (  # (title, width, right-aligned): the columns between the name and the bootstrap
    ("STATE", 8, False),
    ("PID", 7, True),
    ("UPTIME", 7, False),
    ("RESTARTS", 8, True),
    ("LAST EXIT", 9, False),
    ("HEALTH", 7, False),
)


def fit(text: str, width: int, right: bool = False) -> str:
    """`text` in exactly `width` cells: cut with … or padded."""
    if len(text) > width:
        return text[: max(0, width - 1)] + "…"
    return text.rjust(width) if right else text.ljust(width)


def vm_table(model: Model, now: float, width: int = 120) -> Text:
    """The VM rows, as one Text (a rich Table measures every cell at every draw: too slow at
    10 draws a second); the name gives way first when the terminal is narrow."""
    longest = max((len(name) for name in model.vms), default=2)
    name_width = max(6, min(longest + 2, width - OTHER_COLUMNS))
    table = Text(no_wrap=True, overflow="ellipsis")
    table.append(fit("VM", name_width), style="bold")
    for title, size, right in COLUMNS:
        table.append(" " + fit(title, size, right), style="bold")
    table.append(" BOOTSTRAP", style="bold")
    for index, vm in enumerate(model.vms.values()):
        uptime = vm.uptime(now)
        selected = index == model.selected
        table.append("\n")
        mark = "> " if selected else "  "
        table.append(mark + fit(vm.name, name_width - 2), style="reverse" if selected else "")
        cells = (
            vm.state,
            str(vm.pid) if vm.pid else "-",
            duration(uptime) if uptime is not None else "-",
            str(vm.restarts),
            vm.last_exit,
            vm.health,
        )
        for (_, size, right), cell in zip(COLUMNS, cells, strict=True):
            table.append(" ")
            if cell is vm.state:  # only the word coloured, not its padding
                table.append(fit(cell, size).rstrip(), style=STATE_STYLE.get(cell, ""))
                table.append(" " * (size - min(len(cell), size)))
            else:
                table.append(fit(cell, size, right))
        table.append(" ")
        table.append_text(bootstrap_cell(vm))
    return table


def message_line(msg: Msg) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(msg.timestamp))
    line = Text(no_wrap=True, overflow="ellipsis", style="dim" if msg.resolved else "")
    line.append(f"{stamp} ", style="dim")
    line.append(
        f"{msg.severity.upper():<8} ",
        style="" if msg.resolved else SEVERITY_STYLE.get(msg.severity, ""),
    )
    line.append(msg.text)
    if msg.count > 1:
        line.append(f" (×{msg.count})", style="bold")
    if msg.resolved:
        line.append(" (resolved)")
    return line


def workers_table(model: Model) -> Table:
    table = Table(title="external workers", title_justify="left", box=None, expand=True)
    for column in ("ID", "OWNER", "STATUS", "LAST HEARTBEAT"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    now = time.time()
    for worker in model.workers:
        stale = bool(worker.get("stale"))
        table.add_row(
            str(worker.get("id")),
            str(worker.get("owner")),
            Text(
                str(worker.get("status")) + (" (stale)" if stale else ""),
                style="yellow" if stale else "",
            ),
            f"{duration(now - float(worker.get('last_heartbeat_at') or now))} ago",
        )
    return table


def run_line(model: Model) -> Text | None:
    """The run the keys started, on a line of its own (a failure's reason needs the room)."""
    run = model.run
    if run is None:
        return None
    style = RUN_STYLE.get(run.state, "cyan")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{run.op} {run.vm}: {run.state}", style=style)
    if run.detail:
        text.append(f" — {run.detail}", style=style if run.state == "failed" else "")
    return text


def footer(model: Model) -> Text:
    """The last line: a question, the filter being typed, or the keys."""
    if model.confirm is not None:
        op, vm = model.confirm
        return Text(f"{op} {vm}? y/n", style="bold reverse")
    if model.editing_filter:
        return Text(f"filter: {model.filter}▏", style="bold")
    text = Text(no_wrap=True, overflow="ellipsis")
    if model.filter:
        text.append(f"[filter: {model.filter}] ", style="bold")
    text.append(KEYS, style="dim")
    return text


def screen(model: Model, width: int, height: int) -> RenderableType:
    """The whole screen for a terminal of `width` × `height`."""
    now = time.time()
    if model.help:
        table = Table(title="frameos watch: keys", box=None, title_justify="left")
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("does")
        for key, does in HELP:
            table.add_row(key, does)
        return Group(
            header(model, now), Text(""), table, Text(""), Text("any key: back", style="dim")
        )
    if model.detail and model.selected_vm is not None:
        return detail(model, model.selected_vm, now, height)
    parts: list[RenderableType] = [header(model, now), Text(""), vm_table(model, now, width)]
    used = 3 + len(model.vms) + 1 + 1  # header, gap, table, the messages' title, footer
    if model.workers:
        used += len(model.workers) + 3
    run = run_line(model)
    if run is not None:
        used += 1
    parts.append(
        Text(
            "messages" + (f" (filter: {model.filter})" if model.filter else ""),
            style="bold underline",
        )
    )
    room = max(1, height - used - 1)
    lines = [message_line(m) for m in model.visible_messages()[-room:]]
    if lines:  # one Text of many lines renders several times faster than many Texts
        parts.append(Text("\n", no_wrap=True, overflow="ellipsis").join(lines))
    if model.workers:
        parts += [Text(""), workers_table(model)]
    if run is not None:
        parts.append(run)
    parts.append(footer(model))
    return Group(*parts)


def detail(model: Model, vm: Vm, now: float, height: int) -> RenderableType:
    config = vm.config
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    uptime = vm.uptime(now)
    summary.add_row("state", Text(vm.state, style=STATE_STYLE.get(vm.state, "")))
    summary.add_row(
        "pid",
        f"{vm.pid or '-'}  up {duration(uptime) if uptime is not None else '-'}  "
        f"restarts {vm.restarts}  last exit {vm.last_exit}",
    )
    for key in ("kind", "command", "image", "restart", "bootstrap"):
        if config.get(key) not in (None, [], {}):
            value = config[key]
            if isinstance(value, dict) and key != "bootstrap":
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            elif key == "command" and isinstance(value, list):
                value = " ".join(str(v) for v in value)
            elif key == "bootstrap" and isinstance(value, dict):
                value = (
                    ", ".join(
                        str(s.get("name", s)) if isinstance(s, dict) else str(s)
                        for s in value.get("steps", [])
                    )
                    or "-"
                )
            summary.add_row(key, str(value))
    if vm.steps:
        summary.add_row("bootstrap", bootstrap_cell(vm))
    events = list(vm.events)[-8:]
    run = run_line(model)
    room = max(3, height - 10 - len(events) - summary.row_count - (run is not None))
    log = [Text(line, no_wrap=True, overflow="ellipsis") for line in list(model.log)[-room:]]
    return Group(
        header(model, now),
        Text(f"VM {vm.name}", style="bold underline"),
        summary,
        Text("recent events", style="bold underline"),
        *(message_line(m) for m in events),
        Text("output log (following)", style="bold underline"),
        *log,
        *([run] if run is not None else []),
        footer(model)
        if model.confirm
        else Text("esc back · s/r/b act on this VM · q quit", style="dim"),
    )
