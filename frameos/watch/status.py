"""`frameos status [URL]`: one table, then exit 0 ready, 1 not ready, 2 unreachable (SPEC §10).

It asks /healthz, /readyz and /v1/vms; a terminal gets a rich table, a pipe plain lines (no
escape codes), `--json` one JSON object holding the three answers.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from frameos.client.api import Api
from frameos.client.discover import Target


async def fetch(api: Api) -> dict[str, Any]:
    """{"url", "health", "ready", "vms"}: what the instance says about itself."""
    _, health = await api.call("GET", "/healthz")
    response = await api.send("GET", "/readyz")
    if response.status_code not in (200, 503):
        raise await api.refusal(response, "GET", "/readyz")
    ready = api.parse(response, "GET", "/readyz")
    _, vms = await api.call("GET", "/v1/vms")
    return {"url": api.target.url, "health": health, "ready": ready, "vms": vms.get("vms", [])}


def exit_status(data: dict[str, Any]) -> int:
    return 0 if data["ready"].get("status") == "ready" else 1


def duration(seconds: float) -> str:
    """`45s`, `12m03s`, `3h07m`, `2d04h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def last_exit(snapshot: dict[str, Any]) -> str:
    exit_ = snapshot.get("last_exit")
    if not exit_:
        return "-"
    if exit_.get("signal"):
        return str(exit_["signal"])
    return f"exit {exit_.get('exit_code')}"


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per VM: name, state, pid, uptime, restarts, last exit, bootstrap."""
    out: list[tuple[str, ...]] = []
    for vm in data["vms"]:
        pid = vm.get("pid")
        running = vm.get("state") == "running"
        out.append(
            (
                str(vm["name"]),
                str(vm.get("state", "?")),
                str(pid) if pid else "-",
                duration(vm.get("uptime_s") or 0) if running else "-",
                str(vm.get("restarts", 0)),
                last_exit(vm),
                str((vm.get("bootstrap") or {}).get("status", "-")),
            )
        )
    return out


HEADERS = ("VM", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "BOOTSTRAP")


def summary(data: dict[str, Any]) -> str:
    health, ready = data["health"], data["ready"]
    readiness = (
        "ready"
        if ready.get("status") == "ready"
        else "NOT READY: " + "; ".join(str(r) for r in ready.get("reasons", []))
    )
    return (
        f"frameos {health.get('version', '?')} at {data['url']}: {health.get('status', '?')}, "
        f"{readiness}, up {duration(health.get('uptime_seconds') or 0)}"
    )


def print_plain(data: dict[str, Any]) -> None:
    lines = [summary(data)]
    table = [HEADERS, *rows(data)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def print_rich(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from frameos.watch.view import STATE_STYLE

    table = Table(title=summary(data), title_justify="left", expand=False)
    for header in HEADERS:
        table.add_column(header, no_wrap=header != "VM")
    for row in rows(data):
        table.add_row(row[0], f"[{STATE_STYLE.get(row[1], '')}]{row[1]}[/]", *row[2:])
    Console(highlight=False).print(table)


async def status(target: Target, *, json: bool) -> int:
    async with Api(target) as api:
        data = await fetch(api)
    if json:
        sys.stdout.buffer.write(orjson.dumps(data) + b"\n")
        sys.stdout.flush()
    elif sys.stdout.isatty():
        print_rich(data)
    else:
        print_plain(data)
    return exit_status(data)
