"""The contract is derived from the models, and a golden file makes changes deliberate.

frameos/contract.json is that golden file, shipped in the package: `frameos contract` prints it
without importing pydantic (BARS B4), and this test keeps it equal to what the models say.

To accept an intended change: `FRAMEOS_UPDATE_GOLDEN=1 pytest tests/test_contract.py` (or
`nox -s docs`), then review the diff of tests/golden/contract.json and docs/events.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from frameos import events as ev
from frameos.commands import COMMANDS
from frameos.contract import build, events_markdown
from frameos.events import REGISTRY, field_names
from tests.conftest import frameos_argv

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "frameos" / "contract.json"  # shipped: `frameos contract` prints it
EVENTS_DOC = ROOT / "docs" / "events.md"
UPDATE = os.environ.get("FRAMEOS_UPDATE_GOLDEN") == "1"

# Declared for the external workers (SPEC §7.3); nothing emits them yet.
NOT_EMITTED_YET = {ev.WorkerRegistered, ev.WorkerStatus, ev.WorkerStale}
# How an event name would look restated as a string literal: its families, and `summary`.
NAME_LITERAL = re.compile(
    r"""["'](runtime:|vm\.|bootstrap\.|cleanup\.|command\.|worker\.|summary["'])"""
)


def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


def test_shipped_contract_is_what_the_models_say() -> None:
    if UPDATE:
        GOLDEN.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    assert golden() == build(), (
        "the contract changed: if intended, run `nox -s docs` (FRAMEOS_UPDATE_GOLDEN=1 pytest "
        "tests/test_contract.py) and review the diff of frameos/contract.json"
    )


def test_contract_command_prints_the_shipped_contract() -> None:
    result = subprocess.run(
        frameos_argv("contract"), capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout == GOLDEN.read_text()


def test_command_event_fields_are_the_models_fields() -> None:
    shipped = golden()
    for command in COMMANDS:
        listed = shipped["command_event_fields"][command.name]
        assert listed == {cls.NAME: field_names(cls) for cls in command.events}
    assert shipped["events"][ev.WorkerStatus.NAME]["fields"] == [
        "worker_id",
        "from",
        "to",
        "run_id",
    ]


def test_declared_events_nothing_emits_are_under_no_command() -> None:
    shipped = golden()
    emitted = {name for c in shipped["commands"].values() for name in c["events"]}
    assert set(shipped["events"]) == set(REGISTRY)
    assert {REGISTRY[name] for name in set(REGISTRY) - emitted} == NOT_EMITTED_YET


def test_no_event_name_is_restated_outside_events_py() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "frameos").rglob("*.py"))
        if path.name != "events.py" or path.parent.name != "frameos"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if NAME_LITERAL.search(line)
    ]
    assert found == [], "name the model class (ev.VmLaunched, ev.VmLaunched.NAME) instead"


def test_events_doc_is_generated_from_the_models() -> None:
    if UPDATE:
        EVENTS_DOC.write_text(events_markdown())
    assert EVENTS_DOC.read_text() == events_markdown(), "run `nox -s docs` to regenerate"
