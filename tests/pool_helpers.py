"""What the in-process pool tests share: a config of fake VMs, polite fake children, and the
events one VM published."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, TypeVar

import trio

from frameos import events as ev
from frameos.config import FrameConfig, validate_config
from frameos.workers.testing import FakeSpawner, RecordingPublisher

QUICK = {"cooperative_ms": 1000, "sigterm_ms": 1000, "sigkill_ms": 1000}
E = TypeVar("E", bound=ev.Event)


def vm(name: str, **kw: object) -> dict[str, object]:
    """A VM entry whose fake child stops on SIGINT, with 1 s rungs."""
    return {
        "name": name,
        "command": ["x"],
        "cooperative": {"method": "signal"},
        "timeouts": QUICK,
        **kw,
    }


def frame(tmp_path: Path, vms: list[dict[str, object]], **kw: object) -> FrameConfig:
    config = validate_config({"state_dir": str(tmp_path), "vms": vms, **kw}, "test")
    return config.model_copy(update={"state_dir": tmp_path})


def polite(nursery: trio.Nursery, **kw: Any) -> FakeSpawner:
    """Fake VMs that exit 0.1 s after the cooperative signal (SIGINT)."""
    return FakeSpawner(nursery, {int(signal.SIGINT): 0.1}, **kw)


def of(pub: RecordingPublisher, cls: type[E], vm: str) -> list[E]:
    return [e for e, _ in pub.events if isinstance(e, cls) and getattr(e, "vm", None) == vm]
