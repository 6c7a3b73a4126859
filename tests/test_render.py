"""The human renderer: templates use only real fields, and a line reads as a sentence."""

from __future__ import annotations

import string

from rich.console import Console

from frameos.envelope import encode
from frameos.events import REGISTRY, Message, VmExited, field_names
from frameos.render import describe, render


def test_every_template_names_only_fields_of_its_model() -> None:
    for name, cls in REGISTRY.items():
        placeholders = {f for _, f, _, _ in string.Formatter().parse(cls.TEMPLATE) if f}
        assert placeholders <= set(field_names(cls)), name


def test_a_line_has_time_severity_name_and_sentence() -> None:
    console = Console(width=200, force_terminal=True, record=True)
    envelope = encode(
        VmExited(vm="alpha", pid=42, exit_code=None, signal="SIGTERM", uptime_ms=5, expected=True),
        7,
        1_700_000_000.5,
        "warn",
    )
    console.print(render(envelope))
    text = console.export_text()
    assert "WARN" in text and "vm.exited" in text
    assert "alpha: pid 42 exited (code none, signal SIGTERM) after 5 ms" in text
    assert ".500 " in text  # milliseconds


def test_unknown_events_fall_back_to_key_value_pairs() -> None:
    assert describe("future.event", {"a": 1, "b": "x"}) == "a=1 b=x"
    assert describe("message", {"text": "hello"}) == "hello"
    assert describe(Message.NAME, {}) == "?"
