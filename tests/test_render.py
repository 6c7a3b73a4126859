"""The human renderer: templates use only real fields, and a line reads as a sentence."""

from __future__ import annotations

import string

import pytest
from rich.console import Console

from frameos import events as ev
from frameos.envelope import decode, encode
from frameos.events import REGISTRY, Event, field_names
from frameos.render import describe, plural, render, sentence, size


def test_every_template_names_only_fields_of_its_model() -> None:
    for name, cls in REGISTRY.items():
        placeholders = {f for _, f, _, _ in string.Formatter().parse(cls.TEMPLATE) if f}
        assert placeholders <= set(field_names(cls)), name


def printed(event: Event, severity: str | None = None) -> str:
    console = Console(width=200, force_terminal=True, record=True)
    console.print(render(encode(event, 7, 1_700_000_000.5, severity)))  # type: ignore[arg-type]
    return console.export_text()


def test_a_line_has_time_severity_name_and_sentence() -> None:
    text = printed(
        ev.VmExited(
            vm="alpha", pid=42, exit_code=None, signal="SIGTERM", uptime_ms=5, expected=True
        ),
        "warn",
    )
    assert "WARN" in text and ev.VmExited.NAME in text
    assert "alpha: pid 42 exited (code none, signal SIGTERM) after 5 ms" in text
    assert ".500 " in text  # milliseconds


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (61_661_184, "58.8 MiB"),
        (3 << 30, "3.0 GiB"),
    ],
)
def test_sizes_read_in_binary_units(count: int, text: str) -> None:
    assert size(count) == text


def test_metrics_say_rss_in_mib_and_count_right() -> None:
    tick = ev.RuntimeMetricsTick(
        uptime_seconds=60,
        metrics_interval_seconds=60,
        apps_loaded=0,
        scenes_loaded=0,
        rss_bytes=61_661_184,
        cpu_seconds=1.5,
        open_fds=12,
        events_published=1,
        events_dropped=0,
        ws_clients=1,
    )
    assert sentence(tick) == (
        "metrics: rss 58.8 MiB, cpu 1.50 s, 12 fds, 1 event (0 dropped), 1 ws client"
    )


def test_summary_counts_in_singular_and_plural() -> None:
    summary = ev.Summary(
        duration_ms=900,
        exit_status=0,
        vms=1,
        restarts=1,
        events_published=12,
        events_dropped=0,
        bytes_logged=2048,
    )
    assert sentence(summary) == (
        "summary: 900 ms, exit 0, 1 VM, 1 restart, 12 events (0 dropped), 2.0 KiB logged"
    )
    assert plural(2, "restart") == "2 restarts"


def test_a_good_reload_says_no_error() -> None:
    assert sentence(ev.RuntimeReload(changed=["metrics_interval", "vms.web"])) == (
        "reload: changed metrics_interval, vms.web"
    )
    assert sentence(ev.RuntimeReload(changed=[])) == "reload: nothing changed"
    assert sentence(ev.RuntimeReload(changed=[], error="frame.json: invalid JSON")) == (
        "reload failed: frame.json: invalid JSON"
    )


def test_a_launch_says_its_attempt_not_a_restart_count() -> None:
    """D2: `attempt` counts every launch, an operator's `start` included (RESTARTS is the
    policy's count): `frameos start` after a stop printed "restart 2" beside RESTARTS 1."""
    assert sentence(ev.VmRestartScheduled(vm="db", attempt=5, backoff_ms=800)) == (
        "db: restarting in 800 ms (attempt 5)"
    )
    assert sentence(ev.VmLaunched(vm="db", pid=9, attempt=5)) == (
        "db: launched again (pid 9, attempt 5)"
    )
    assert sentence(ev.VmLaunched(vm="db", pid=9, attempt=1)) == "db: launched (pid 9)"
    assert sentence(ev.VmGaveUp(vm="db", restarts=4, window_s=60)) == (
        "db: gave up after 4 restarts in 60 s"
    )
    for event in (
        ev.VmLaunched(vm="db", pid=9, attempt=3),
        ev.VmRestartScheduled(vm="db", attempt=3, backoff_ms=1),
    ):
        assert "restart 2" not in sentence(event)


def test_a_failed_check_prints_one_problem_per_line() -> None:
    problems = ["vms[0].name: field required", "frame_port: must be 1-65535, got 0"]
    text = printed(ev.RuntimeCheckFailed(error="; ".join(problems), problems=problems))
    lines = text.rstrip("\n").split("\n")
    assert lines[0].endswith("check failed: 2 problems")
    assert [line.strip() for line in lines[1:]] == [f"- {p}" for p in problems]


def test_unknown_events_fall_back_to_key_value_pairs() -> None:
    line = b'{"v":1,"seq":3,"timestamp":1.0,"event":"future.event","severity":"info",'
    assert describe(decode(line + b'"fields":{"a":1,"b":"x"}}')) == "a=1 b=x"
    message = encode(ev.Message(text="hello"), 1, 0.0)
    assert describe(decode(message.line)) == "hello"


def test_a_reload_says_what_it_did_to_the_vms() -> None:
    vms = ev.ReloadVms(added=["db"], restarted=["web"], unchanged=["cache"])
    event = ev.RuntimeReload(changed=["vms[1].env"], vms=vms)
    assert sentence(event) == "reload: changed vms[1].env (added db; restarted web)"


def test_a_reload_run_has_no_target() -> None:
    event = ev.CommandAccepted(run_id="r1", op="reload", target=None)
    assert sentence(event) == "run r1: reload accepted"
