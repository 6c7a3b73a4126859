"""`depends_on` (SPEC §5.2): the config's graph and the pool's scheduler, on the autojump clock.

Readiness here is `VmWorker.ready` with a test switch in place of a probe (`Readiness`): a VM is
ready once it runs and the test says so, and each change wakes the waiters (`_notify`), as the
probes do. Fake processes (frameos/workers/testing.py) exit 0.1 s after SIGINT.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from frameos import events as ev
from frameos.config import graph, validate_config
from frameos.errors import ConfigError
from frameos.events import Event, Severity
from frameos.workers import OperationFailed
from frameos.workers.pool import VmPool
from frameos.workers.testing import FakeSpawner, RecordingPublisher
from frameos.workers.vm import VmState, VmWorker
from tests.pool_helpers import frame, polite, vm


class TimedPublisher(RecordingPublisher):
    """Also keeps when each event was published (trio time)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def publish_nowait(self, event: Event, severity: Severity | None = None) -> object:
        self.times.append(trio.current_time())
        return super().publish_nowait(event, severity)

    def at(self, cls: type[Event], vm: str) -> list[float]:
        return [
            t
            for (e, _), t in zip(self.events, self.times, strict=True)
            if isinstance(e, cls) and getattr(e, "vm", None) == vm
        ]

    def order(self, cls: type[Event]) -> list[str]:
        return [e.vm for e, _ in self.events if isinstance(e, cls)]  # type: ignore[attr-defined]


class Readiness:
    """Stands in for a readiness probe: `set(worker)` makes a running VM ready."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def set(self, worker: VmWorker) -> None:
        self.names.add(worker.name)
        worker._notify()

    def clear(self, worker: VmWorker) -> None:
        self.names.discard(worker.name)
        worker._notify()


@pytest.fixture
def readiness(monkeypatch: pytest.MonkeyPatch) -> Readiness:
    switch = Readiness()

    def ready(self: VmWorker) -> bool:
        return self.state is VmState.RUNNING and self.name in switch.names

    monkeypatch.setattr(VmWorker, "ready", property(ready))
    return switch


def launched(pub: RecordingPublisher) -> list[str]:
    return [e.vm for e, _ in pub.events if isinstance(e, ev.VmLaunched)]


def waiting(pub: RecordingPublisher, name: str) -> list[tuple[str, str]]:
    return [
        (e.on, e.condition) for e, _ in pub.events if isinstance(e, ev.VmWaiting) and e.vm == name
    ]


# --- the config -------------------------------------------------------------------------------


def problems(vms: list[dict[str, object]]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config({"vms": vms}, "f.json")
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


def test_an_unknown_name_is_refused_naming_the_path_and_a_close_one() -> None:
    (line,) = problems([vm("db"), vm("web", depends_on={"dbb": "ready"})])
    assert line.startswith("vms[1].depends_on.dbb: no VM is named 'dbb'; did you mean 'db'?")


def test_a_vm_depending_on_itself_is_refused() -> None:
    (line,) = problems([vm("web", depends_on={"web": "started"})])
    assert line == "vms[0].depends_on.web: a VM cannot depend on itself; remove this entry"


def test_a_cycle_is_refused_naming_its_members_in_order() -> None:
    lines = problems(
        [
            vm("a", depends_on={"b": "ready"}),
            vm("b", depends_on={"c": "started"}),
            vm("c", depends_on={"a": "ready"}),
            vm("d"),
        ]
    )
    assert lines == [
        "vms[0].depends_on.b: dependency cycle a → b → c → a: none of them could ever launch; "
        "remove one of these dependencies"
    ]


def test_every_problem_of_the_graph_at_once() -> None:
    lines = problems(
        [
            vm("a", depends_on={"a": "ready", "zz": "ready", "b": "ready"}),
            vm("b", depends_on={"a": "ready"}),
            vm("my-db", depends_on={"nope": "started"}),
        ]
    )
    assert [line.split(":")[0] for line in lines] == [
        "vms[0].depends_on.a",
        "vms[0].depends_on.zz",
        "vms[2].depends_on.nope",
        "vms[0].depends_on.b",
    ]
    assert "dependency cycle a → b → a" in lines[-1]


def test_a_condition_other_than_started_or_ready_is_refused() -> None:
    (line,) = problems([vm("db"), vm("web", depends_on={"db": "up"})])
    assert line == "vms[1].depends_on.db: expected one of 'started' or 'ready', found \"up\""


def test_levels_place_each_vm_above_its_highest_dependency() -> None:
    config = validate_config(
        {
            "vms": [
                vm("web", depends_on={"app": "ready", "db": "ready"}),
                vm("app", depends_on={"db": "started"}),
                vm("db"),
                vm("x"),
            ]
        },
        "f",
    )
    assert graph.levels(config.vms) == [["db", "x"], ["app"], ["web"]]
    assert graph.dependants(config.vms) == {
        "web": [],
        "app": ["web"],
        "db": ["web", "app"],
        "x": [],
    }


def test_a_long_chain_is_no_problem_for_the_walks() -> None:
    vms = [vm(f"v{i}", depends_on={f"v{i + 1}": "started"}) for i in range(2000)] + [vm("v2000")]
    config = validate_config({"vms": vms}, "f")
    assert len(graph.levels(config.vms)) == 2001
    looped = [*vms[:-1], vm("v2000", depends_on={"v0": "ready"})]
    assert "dependency cycle v0 → v1 → " in problems(looped)[0]


# --- the scheduler ----------------------------------------------------------------------------


async def test_a_vm_launches_once_its_dependencies_are_started_and_ready(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    config = frame(
        tmp_path,
        [vm("web", depends_on={"db": "ready", "cache": "started"}), vm("db"), vm("cache")],
    )
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            web, db, cache = (pool.worker(n) for n in ("web", "db", "cache"))
            await cache.wait_until(lambda: cache.state is VmState.RUNNING)
            await trio.sleep(5)
            assert sorted(launched(pub)) == ["cache", "db"]  # db runs, but is not ready
            assert web.state is VmState.IDLE
            assert ("db", "ready") in waiting(pub, "web")
            assert pool.not_ready_reasons() == [
                "vm web: waiting for db (ready)",
                "vm db: not ready",
                "vm cache: not ready",
            ]
            assert pool.snapshot("web").waiting_for == "db (ready)"
            readiness.set(db)
            ready_at = trio.current_time()
            await web.wait_until(lambda: web.state is VmState.RUNNING)
            assert launched(pub) == ["db", "cache", "web"] or launched(pub) == [
                "cache",
                "db",
                "web",
            ]
            assert pub.at(ev.VmLaunched, "web") == [ready_at]  # at once, no polling
            assert pool.snapshot("web").waiting_for is None
            await pool.stop("test")
    assert len(waiting(pub, "web")) == len(set(waiting(pub, "web")))  # each said once


async def test_vms_without_dependencies_start_together_and_stop_together(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = TimedPublisher()
    config = frame(tmp_path, [vm(f"v{i}") for i in range(20)])
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env={})
        async with trio.open_nursery() as work:
            start = trio.current_time()
            await work.start(pool.run)
            assert len(launched(pub)) == 20
            await trio.sleep(1)
            stop = trio.current_time()
            await pool.stop("test")
    for i in range(20):
        assert pub.at(ev.VmLaunched, f"v{i}") == [start]
        assert pub.at(ev.VmShutdownRequested, f"v{i}") == [stop]
    assert not [e for e, _ in pub.events if isinstance(e, ev.VmWaiting)]


async def test_a_dependency_that_never_becomes_ready_holds_its_dependant_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    config = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "ready"})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            with trio.move_on_after(3600) as waited:
                await pool.wait_ready()
            assert waited.cancelled_caught  # READY=1 never goes out
            assert launched(pub) == ["db"]
            assert "vm web: waiting for db (ready)" in pool.not_ready_reasons()
            await pool.stop("test")
    web = pool.worker("web")
    assert web.state is VmState.STOPPED and len(spawner.launches) == 1
    assert waiting(pub, "web") == [("db", "ready")]


async def test_a_dependency_that_dies_while_its_dependant_waits_is_waited_for_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    config = frame(
        tmp_path,
        [vm("db", restart={"backoff_initial_ms": 2000}), vm("web", depends_on={"db": "ready"})],
    )
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            db, web = pool.worker("db"), pool.worker("web")
            spawner.children[0].exit(1)  # db crashes before it is ready
            await db.wait_until(lambda: db.state is VmState.BACKOFF)
            readiness.names.add("db")  # ready as soon as it runs again
            await trio.sleep(1)
            assert web.state is VmState.IDLE  # db is in backoff: not ready
            await web.wait_until(lambda: web.state is VmState.RUNNING)
            assert launched(pub) == ["db", "db", "web"]
            relaunched = pub.at(ev.VmLaunched, "db")[1]
            assert pub.at(ev.VmLaunched, "web") == [relaunched]
            await pool.stop("test")


async def test_stop_runs_in_reverse_order_independent_vms_in_parallel(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    readiness.names.update({"db", "app", "web", "x"})
    config = frame(
        tmp_path,
        [
            vm("web", depends_on={"app": "ready"}),
            vm("app", depends_on={"db": "started"}),
            vm("db"),
            vm("x"),
        ],
    )
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.wait_ready()
            assert launched(pub) in (["db", "x", "app", "web"], ["x", "db", "app", "web"])
            stop = trio.current_time()
            await pool.stop("test")
    names = ["web", "app", "db", "x"]
    requested = {name: pub.at(ev.VmShutdownRequested, name)[0] - stop for name in names}
    done = {name: pub.at(ev.VmShutdownComplete, name)[0] - stop for name in names}
    assert requested["web"] == requested["x"] == 0  # the top and the independent: at once
    assert done["web"] <= requested["app"] and done["app"] <= requested["db"]
    assert requested["db"] > 0
    reasons = {e.reason for e, _ in pub.events if isinstance(e, ev.VmShutdownRequested)}
    assert reasons == {"test"}


async def test_the_ordered_stop_fits_in_shutdown_timeout_s(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    """A dependant slow to stop (it ignores SIGINT and SIGTERM): its dependency does not wait
    past the moment its own ladder would no longer fit in shutdown_timeout_s."""
    pub = TimedPublisher()
    config = frame(
        tmp_path,
        [vm("db"), vm("web", depends_on={"db": "started"})],
        shutdown_timeout_s=4,
    )
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.worker("web").wait_until(lambda: pool.worker("web").state is VmState.RUNNING)
            spawner.children[1].exits_on = {}  # web: only SIGKILL ends it
            stop = trio.current_time()
            await pool.stop("test")
            end = trio.current_time()
    db_requested = pub.at(ev.VmShutdownRequested, "db")[0] - stop
    web_done = pub.at(ev.VmShutdownComplete, "web")[0] - stop
    assert db_requested == pytest.approx(4 - 3 - 0.5)  # budget - its ladder - slack
    assert db_requested < web_done
    assert end - stop <= 4


async def test_force_ends_the_wait_for_dependants(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pub = TimedPublisher()
    config = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "started"})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            web = pool.worker("web")
            await web.wait_until(lambda: web.state is VmState.RUNNING)
            spawner.children[1].exits_on = {}
            stop = trio.current_time()
            async with trio.open_nursery() as stopping:
                stopping.start_soon(pool.stop, "test")
                await trio.sleep(0.2)
                pool.force()
    assert pub.at(ev.VmShutdownRequested, "db")[0] - stop == pytest.approx(0.2)
    outcome = {e.vm: e.outcome for e, _ in pub.events if isinstance(e, ev.VmShutdownComplete)}
    assert outcome["web"] == "forced"


async def test_an_operator_start_waits_for_a_dependency_in_backoff(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    readiness.names.add("db")
    config = frame(
        tmp_path,
        [vm("db", restart={"backoff_initial_ms": 5000}), vm("web", depends_on={"db": "ready"})],
    )
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            db, web = pool.worker("db"), pool.worker("web")
            await web.wait_until(lambda: web.state is VmState.RUNNING)
            await pool.stop_vm("web")
            spawner.children[0].exit(1)
            await db.wait_until(lambda: db.state is VmState.BACKOFF)
            begun = trio.current_time()
            await pool.start_vm("web")  # waits the backoff out
            assert trio.current_time() - begun == pytest.approx(5)
            assert pub.at(ev.VmLaunched, "web")[-1] == pub.at(ev.VmLaunched, "db")[-1]
            await pool.stop("test")


async def test_an_operator_start_is_refused_while_a_dependency_is_stopped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    readiness.names.update({"db", "web"})
    config = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "ready"})])
    async with trio.open_nursery() as outer:
        spawner = polite(outer)
        pool = VmPool(config, pub, spawner=spawner, base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.wait_ready()
            await pool.stop_vm("web")
            await pool.stop_vm("db")
            with pytest.raises(OperationFailed) as refused:
                await pool.start_vm("web")
            assert str(refused.value) == (
                "vm web depends on db (ready); db is stopped: start db first"
            )
            assert pool.worker("web").state is VmState.STOPPED
            await pool.start_vm("db")
            await pool.start_vm("web")
            assert pool.worker("web").state is VmState.RUNNING
            await pool.stop("test")


async def test_an_operators_stop_of_a_waiting_vm_holds(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    config = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "ready"})])
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=polite(outer), base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await pool.stop_vm("web")  # while it waits for db
            readiness.set(pool.worker("db"))
            await trio.sleep(10)
            assert launched(pub) == ["db"]  # the gate was cancelled with the stop
            assert pool.not_ready_reasons() == []
            await pool.stop("test")


async def test_a_vm_added_by_a_reload_waits_on_its_gate_without_holding_the_reload(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    before = frame(tmp_path, [vm("db")])
    after = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "ready"})])
    async with trio.open_nursery() as outer:
        pool = VmPool(before, pub, spawner=polite(outer), base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            diff = await pool.apply(after)
            assert diff.added == ["web"]
            await trio.sleep(1)
            assert launched(pub) == ["db"] and waiting(pub, "web") == [("db", "ready")]
            readiness.set(pool.worker("db"))
            web = pool.worker("web")
            await web.wait_until(lambda: web.state is VmState.RUNNING)
            # a reload that drops the dependency of a waiting VM: its gate takes the new config
            await pool.stop_vm("web")
            await pool.start_vm("web")
            await pool.stop("test")


async def test_a_reload_that_changes_a_waiting_vms_dependencies_reopens_its_gate(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    pub = TimedPublisher()
    before = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "ready"})])
    after = frame(tmp_path, [vm("db"), vm("web", depends_on={"db": "started"})])
    async with trio.open_nursery() as outer:
        pool = VmPool(before, pub, spawner=polite(outer), base_env={})
        async with trio.open_nursery() as work:
            await work.start(pool.run)
            await trio.sleep(1)
            assert launched(pub) == ["db"]
            diff = await pool.apply(after)
            assert diff.updated == ["web"]
            web = pool.worker("web")
            await web.wait_until(lambda: web.state is VmState.RUNNING)  # db is started
            await pool.stop("test")


class PickySpawner(FakeSpawner):
    """Launches fail (ENOENT) for the VMs named in `broken`."""

    def __init__(self, nursery: trio.Nursery, broken: set[str]) -> None:
        super().__init__(nursery, {int(signal.SIGINT): 0.1})
        self.broken = broken

    async def __call__(self, argv, env, cwd, log, record):  # type: ignore[no-untyped-def]
        if env["FRAMEOS_VM"] in self.broken:
            raise FileNotFoundError(2, "No such file or directory")
        return await super().__call__(argv, env, cwd, log, record)


async def test_ready_waits_through_the_first_failed_launches_until_a_give_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, readiness: Readiness
) -> None:
    """READY (SPEC §9): never while a permanent VM is failing its first launches (backoff);
    once it gave up (`on_exhausted: stay`), yes. A VM that is not permanent does not count."""
    pub = TimedPublisher()
    readiness.names.add("db")
    config = frame(
        tmp_path,
        [
            vm("crashy", restart={"max_restarts": 2, "backoff_initial_ms": 1000}),
            vm("once", restart={"policy": "temporary"}),
            vm("db"),
        ],
    )
    async with trio.open_nursery() as outer:
        pool = VmPool(config, pub, spawner=PickySpawner(outer, {"crashy", "once"}), base_env={})
        async with trio.open_nursery() as work:
            begun = trio.current_time()
            await work.start(pool.run)
            await pool.wait_ready()
            assert pool.worker("crashy").state is VmState.GAVE_UP
            assert trio.current_time() - begun == pytest.approx(1 + 2)  # its two backoffs
            assert pub.at(ev.VmGaveUp, "crashy") == [trio.current_time()]
            assert pool.not_ready_reasons() == ["vm crashy: gave up"]
            await pool.stop("test")
