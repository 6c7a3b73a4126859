"""The watch view's model and rendering, without a terminal: a recording rich Console
(force_terminal, fixed width) and Live(auto_refresh=False) driven from a trio task."""

from __future__ import annotations

import io
import itertools
import time
from typing import Any

import trio
import trio.testing
from rich.console import Console
from rich.live import Live
from rich.style import Style

from frameos import events as ev
from frameos.client.api import Api
from frameos.client.discover import Target
from frameos.envelope import Envelope, encode
from frameos.watch.app import App
from frameos.watch.keys import parse
from frameos.watch.model import Model, Run
from frameos.watch.view import STATE_STYLE, screen, vm_table

LONG = "v" * 59 + "Z"  # a VM name of 60 characters; its last one shows whether it was cut


def snap(name: str, state: str = "running", pid: int | None = 100, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "pid": pid,
        "uptime_s": 5.0,
        "restarts": 0,
        "last_exit": None,
        "bootstrap": {"status": "ok", "steps": []},
        "config": {"command": ["sleep", "600"]},
        **more,
    }


def model(*snaps: dict[str, Any]) -> Model:
    m = Model("http://127.0.0.1:8787")
    m.set_health({"version": "9.9", "started_at": time.time() - 60}, {"status": "ready"})
    m.set_vms(list(snaps))
    m.set_connection("connected")
    return m


class Feed:
    """Envelopes with increasing seqs, as the stream hands them on."""

    def __init__(self, m: Model, seq: int = 0) -> None:
        self.m, self.seq = m, seq

    def __call__(self, event: ev.Event, severity: Any = None) -> Envelope:
        self.seq += 1
        envelope = encode(event, self.seq, time.time(), severity)
        self.m.apply(envelope)
        return envelope


def recording(width: int, height: int = 40) -> Console:
    return Console(
        width=width, height=height, force_terminal=True, record=True, file=io.StringIO(),
        color_system="truecolor", legacy_windows=False,
    )  # fmt: skip


def text_of(m: Model, width: int, height: int = 40) -> str:
    console = recording(width, height)
    console.print(screen(m, width, height))
    return console.export_text()


def styles_of(console: Console, renderable: Any, text: str) -> list[Style]:
    return [
        s.style for s in console.render(renderable) if s.text.strip() == text.strip() and s.style
    ]


def test_every_vm_state_has_its_colour() -> None:
    assert len(set(STATE_STYLE.values())) == len(STATE_STYLE)  # each state tells itself apart
    m = model(*(snap(f"vm-{state}", state) for state in STATE_STYLE))
    console = recording(140)
    table = vm_table(m, time.time())
    for state, style in STATE_STYLE.items():
        assert Style.parse(style) in styles_of(console, table, state), state


def test_repeated_progress_is_one_line_with_a_count() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    for _ in range(5):
        feed(ev.VmCooperativeAttempted(vm="alpha", method="signal", timeout_ms=100))
    feed(ev.Message(text="something else"))
    feed(ev.VmCooperativeAttempted(vm="alpha", method="signal", timeout_ms=100))
    assert [(msg.name, msg.count) for msg in m.messages] == [
        ("vm.cooperative_attempted", 5),
        ("message", 1),
        ("vm.cooperative_attempted", 1),
    ]
    text = text_of(m, 120)
    assert "(×5)" in text


def test_two_bootstrap_steps_are_two_lines_and_a_step_again_one() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    for step in ("prepare", "check", "check"):
        feed(ev.BootstrapStep(vm="alpha", step=step, status="success", duration_ms=5, attempt=1))
    assert [(msg.step, msg.count) for msg in m.messages] == [("prepare", 1), ("check", 2)]
    text = text_of(m, 120)
    assert "step prepare success" in text and "step check success in 5 ms (attempt 1) (×2)" in text


def test_a_problem_is_dimmed_once_resolved() -> None:
    m = model(snap("alpha"), snap("beta"))
    feed = Feed(m)
    feed(ev.VmExited(vm="alpha", pid=100, exit_code=3, signal=None, uptime_ms=5, expected=False))
    feed(ev.VmRestartScheduled(vm="alpha", attempt=2, backoff_ms=100))
    feed(ev.VmRestartScheduled(vm="beta", attempt=2, backoff_ms=100))
    assert m.vms["alpha"].state == "backoff" and m.vms["alpha"].pid is None
    assert m.vms["alpha"].last_exit == "exit 3"
    feed(ev.VmLaunched(vm="alpha", pid=200, attempt=2))
    resolved = {(msg.name, msg.vm): msg.resolved for msg in m.messages}
    assert resolved[("vm.restart_scheduled", "alpha")] is True
    assert resolved[("vm.restart_scheduled", "beta")] is False  # not beta's recovery
    assert m.vms["alpha"].pid == 200 and m.vms["alpha"].state == "running"
    lines = [line for line in text_of(m, 120).splitlines() if "WARN" in line]
    assert len(lines) == 2
    assert "(resolved)" in next(line for line in lines if "alpha" in line)
    assert "(resolved)" not in next(line for line in lines if "beta" in line)


def test_blocker_and_error_messages_have_their_colours() -> None:
    from frameos.render import SEVERITY_STYLE
    from frameos.watch.view import message_line

    m = model()
    feed = Feed(m)
    for severity in ("info", "progress", "warn", "error", "blocker"):
        feed(ev.Message(text=f"a {severity} message"), severity)
    console = recording(100)
    for msg in m.messages:
        expected = Style.parse(SEVERITY_STYLE[msg.severity])
        assert expected in styles_of(console, message_line(msg), f"{msg.severity.upper():<8} ")


def test_events_older_than_the_snapshot_do_not_undo_it() -> None:
    """At a (re)connect the snapshots are newer than the events replayed for the messages."""
    m = model(snap("alpha", pid=200))
    m.snapshot_seq = 10
    feed = Feed(m, seq=5)
    feed(ev.VmLaunched(vm="alpha", pid=100, attempt=1))  # seq 6: before the snapshot
    assert m.vms["alpha"].pid == 200
    assert [msg.seq for msg in m.messages] == [6]  # still a message
    feed.seq = 10
    feed(ev.VmLaunched(vm="alpha", pid=300, attempt=2))
    assert m.vms["alpha"].pid == 300
    feed.seq = 3
    feed(ev.Message(text="seen twice"))  # a seq already passed is ignored
    assert [msg.seq for msg in m.messages] == [6, 11]


def test_bootstrap_progress_names_the_current_step() -> None:
    steps = [{"name": n, "status": "pending"} for n in ("copy", "ssh-keys", "packages", "reboot")]
    m = model(snap("alpha", bootstrap={"status": "pending", "steps": steps}))
    feed = Feed(m)
    feed(ev.BootstrapStarted(vm="alpha", trigger="auto"))
    feed(ev.BootstrapStep(vm="alpha", step="copy", status="success", duration_ms=5, attempt=1))
    assert m.vms["alpha"].progress() == (1, 4, "ssh-keys")
    text = text_of(m, 140)
    assert "1/4 ssh-keys" in text
    assert "━" in text


def test_a_60_character_name_narrow_and_wide() -> None:
    m = model(snap(LONG, pid=4242), snap("b", "gave_up", pid=None))
    feed = Feed(m)
    feed(ev.Message(text="x" * 300))
    for width in (60, 80, 200):
        text = text_of(m, width)
        lines = text.splitlines()
        assert all(len(line) <= width for line in lines), width
        assert "4242" in text and "gave_up" in text
        assert ("Z" in text.split("running")[0]) is (width >= 200)  # cut when it does not fit
        assert "…" in text  # the long message is cut, not wrapped
    assert LONG in text_of(m, 200)


def test_the_filter_keeps_matching_messages() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    feed(ev.Message(text="disk almost full"))
    feed(ev.Message(text="all good"))
    m.filter = "DISK"
    assert [msg.text for msg in m.visible_messages()] == ["disk almost full"]
    assert "all good" not in text_of(m, 100)


def test_a_worker_event_asks_for_the_workers_again() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    feed(ev.Message(text="not about workers"))
    assert not m.workers_stale
    feed(ev.WorkerRegistered(worker_id="renderer-1", owner="ops"))
    assert m.workers_stale
    m.workers_stale = False
    feed(
        ev.WorkerStatus.model_validate(
            {"worker_id": "renderer-1", "from": "starting", "to": "running"}
        )
    )
    assert m.workers_stale


def test_a_failed_run_says_why_on_a_line_of_its_own() -> None:
    m = model(snap("alpha"))
    feed = Feed(m)
    m.run = Run("bootstrap", "alpha", run_id="r1", state="accepted")
    why = "vm alpha: bootstrap failed: step 'check' failed after 1 attempt(s): exited with status 1"
    feed(ev.CommandFailed(run_id="r1", error=why))
    assert (m.run.state, m.run.detail) == ("failed", why)
    lines = text_of(m, 120).splitlines()
    assert f"bootstrap alpha: failed — {why}" in lines  # whole, not cut by the keys after it
    assert lines[-1].startswith("↑/↓ j/k select")
    console = recording(120)
    assert Style.parse("bold red") in styles_of(console, screen(m, 120, 40), f"— {why}")


def test_keys_parse_arrows_escape_enter_and_text() -> None:
    assert parse(b"\x1b[Ajk\x1b[B\r\x1b/q\x7f") == [
        "up", "j", "k", "down", "enter", "esc", "/", "q", "backspace"
    ]  # fmt: skip
    assert parse(b"\x1b[1;5A") == []  # an escape the view does not use is skipped whole
    assert parse("é".encode()) == ["é"]


def app_with(m: Model, console: Console) -> App:
    target = Target("http://127.0.0.1:1", None, None, (), None, None)
    app = App(Api(target), console)
    app.model = m
    return app


def test_keys_ask_before_acting_and_pick_start_for_a_stopped_vm() -> None:
    m = model(snap("alpha"), snap("beta", "stopped", pid=None))
    app = app_with(m, recording(100))
    app.key("s")
    assert m.confirm == ("stop", "alpha")
    app.key("n")
    assert m.confirm is None and m.run is None
    app.key("j")
    app.key("j")  # stays on the last row
    assert m.selected == 1
    app.key("s")
    assert m.confirm == ("start", "beta")
    app.key("esc")
    app.key("r")
    assert m.confirm == ("restart", "beta")
    app.key("x")
    app.key("b")
    assert m.confirm == ("bootstrap", "beta")
    app.key("n")
    app.key("/")
    for key in "ab":
        app.key(key)
    app.key("backspace")
    app.key("enter")
    assert m.filter == "a" and not m.editing_filter
    app.key("?")
    assert m.help
    app.key("k")
    assert not m.help and m.selected == 1  # the key that closed the help did nothing else
    app.key("q")
    assert app.quit.is_set()


async def test_live_redraws_at_most_10_times_a_second_and_shows_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = model(snap("alpha"))
    console = recording(120, 30)
    app = app_with(m, console)
    draws: list[float] = []
    feed = Feed(m)
    with Live(console=console, auto_refresh=False) as live:
        update = live.update

        def counting(renderable: Any, *, refresh: bool = False) -> None:
            draws.append(trio.current_time())
            update(renderable, refresh=refresh)

        live.update = counting  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.draw, live)
            start = trio.current_time()
            for _ in range(200):  # 10,000 events in 2 s: 50 each 10 ms
                for _ in range(50):
                    feed(ev.Message(text="burst"))
                await trio.sleep(0.01)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(draws)]
    assert len(draws) >= 20  # it kept drawing during the burst
    assert min(gaps) >= 0.1 - 1e-6  # never more often than 10 times a second
    assert draws[-1] - start <= 2.2  # and the last draw came right after the burst
    assert f"seq {feed.seq}" in console.export_text()
    assert m.messages[-1].seq == 10_000


def test_the_screenshots_are_made_from_the_scripted_session(tmp_path: Any) -> None:
    from frameos.watch.screenshots import save

    main, detail = save(tmp_path)
    assert [main.name, detail.name] == ["watch.svg", "watch-detail.svg"]
    text = main.read_text()
    assert text.startswith("<svg") and "kiosk-browser" in text and "(×14)" in text
    assert "output&#160;log&#160;(following)" in detail.read_text()


def test_the_health_column_follows_snapshots_and_events() -> None:
    m = model(snap("alpha", health={"status": "starting"}))
    assert m.vms["alpha"].health == "waiting"
    feed = Feed(m)
    feed(ev.VmReady(vm="alpha", after_ms=40))
    assert m.vms["alpha"].health == "ready"
    feed(ev.VmHealth(vm="alpha", probe="liveness", status="unhealthy", failures=3, detail="x"))
    assert m.vms["alpha"].health == "failing"
    assert "failing" in text_of(m, 120)
    feed(ev.VmExited(vm="alpha", pid=100, exit_code=None, signal="SIGTERM", uptime_ms=1,
                     expected=False))  # fmt: skip
    assert m.vms["alpha"].health == "down"
    feed(ev.VmLaunched(vm="alpha", pid=101, attempt=2))
    assert m.vms["alpha"].health == "waiting"


def test_runtime_ready_asks_readyz_instead_of_claiming_ready() -> None:
    """READY=1 also goes out degraded (a VM gave up with `stay`): the header believes /readyz."""
    m = model(snap("a"))
    m.set_health({"version": "1"}, {"status": "starting", "reasons": ["starting"]})
    Feed(m)(
        ev.RuntimeReady(
            server="127.0.0.1:1",
            health_endpoint="/healthz",
            event_stream_transport="websocket",
            metrics_interval_seconds=60,
            apps_loaded=0,
            scenes_loaded=0,
        )
    )
    assert m.health_stale and not m.ready
    m.set_health({"version": "1"}, {"status": "degraded", "reasons": ["vm a: gave up"]})
    assert not m.ready and m.reasons == ["vm a: gave up"]
