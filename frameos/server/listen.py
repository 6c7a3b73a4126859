"""Binding the HTTP port, kept apart from the server stack so it can happen first and cheaply:
a port in use fails the start before any VM launches, and the VMs do not wait for quart and
hypercorn to import."""

from __future__ import annotations

import errno

import trio

from frameos.errors import ServerError


async def bind(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on host:port (port 0: any free port); a ServerError says how to fix a failure."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        hint = {
            errno.EADDRINUSE: "another process is using it; stop it or choose another frame_port",
            errno.EACCES: "ports below 1024 need privileges; choose a port ≥ 1024",
            errno.EADDRNOTAVAIL: "that address is not on this host; check frame_host",
        }.get(exc.errno or 0, exc.strerror or "")
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
