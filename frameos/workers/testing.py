"""Fakes for driving workers in tests on trio's autojump clock (like `trio.testing`).

`FakeChild` behaves like a process group: it records the signals it gets and exits a given
delay after the ones it honours; `RecordingPublisher` keeps every event published.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from frameos.events import Event, Severity

SIGKILL = int(signal.SIGKILL)


class FakeChild:
    """A fake process: `exits_on` maps a signal to the delay (s) after which it then exits.

    SIGKILL ends it at once unless `unkillable`. `kill_leftovers` is counted.
    """

    _next_pid = 90_000_000  # above any real pid_max: /proc never has these

    def __init__(
        self,
        nursery: trio.Nursery,
        exits_on: Mapping[int, float] | None = None,
        *,
        unkillable: bool = False,
    ) -> None:
        FakeChild._next_pid += 1
        self._pid = FakeChild._next_pid
        self.nursery = nursery
        self.exits_on = dict(exits_on or {})
        self.unkillable = unkillable
        self.signals: list[int] = []
        self.leftover_kills = 0
        self._returncode: int | None = None
        self._exit = trio.Event()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exited(self) -> bool:
        return self._returncode is not None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> None:
        await self._exit.wait()

    def exit(self, code: int) -> None:
        """Exit now with `code` (negative: by that signal)."""
        if self._returncode is None:
            self._returncode = code
            self._exit.set()

    def exit_later(self, delay: float, code: int) -> None:
        async def later() -> None:
            await trio.sleep(delay)
            self.exit(code)

        self.nursery.start_soon(later)

    def signal_group(self, sig: int) -> None:
        self.signals.append(int(sig))
        if self.exited:
            return
        if sig == SIGKILL and not self.unkillable:
            self.exit(-SIGKILL)
        elif sig in self.exits_on:
            self.exit_later(self.exits_on[sig], 0 if sig != signal.SIGTERM else -int(sig))

    def kill_leftovers(self) -> None:
        self.leftover_kills += 1


class RecordingPublisher:
    """Keeps (event, severity) pairs; `names()` lists what was published, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, Severity | None]] = []

    async def publish(self, event: Event, severity: Severity | None = None) -> object:
        return self.publish_nowait(event, severity)

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> object:
        self.events.append((event, severity))
        return None

    def names(self) -> list[str]:
        return [event.NAME for event, _ in self.events]

    def of(self, name: str) -> list[Event]:
        return [event for event, _ in self.events if name == event.NAME]

    def vm_names(self, vm: str) -> list[str]:
        """The event names about one VM (`vm` field), in order."""
        return [e.NAME for e, _ in self.events if getattr(e, "vm", None) == vm]


class FakeSpawner:
    """Stands in for process creation: each launch makes a FakeChild that exits on its own
    after `lifetime` (with `code`) or on the signals of `exits_on`; or fails with `fail_with`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        exits_on: Mapping[int, float] | None = None,
        *,
        lifetime: float | None = None,
        code: int = 1,
        fail_with: OSError | None = None,
    ) -> None:
        self.nursery, self.exits_on, self.fail_with = nursery, exits_on, fail_with
        self.lifetime, self.code = lifetime, code
        self.children: list[FakeChild] = []
        self.launches: list[tuple[list[str], dict[str, str], Path | None, float]] = []

    async def __call__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path | None,
        log: Path,
        record: Callable[[FakeChild], None],
    ) -> FakeChild:
        self.launches.append((argv, dict(env), cwd, trio.current_time()))
        if self.fail_with is not None:
            raise self.fail_with
        child = FakeChild(self.nursery, self.exits_on)
        record(child)  # synchronously: no thread, so the autojump clock stays exact
        if self.lifetime is not None:
            child.exit_later(self.lifetime, self.code)
        self.children.append(child)
        return child
