"""The contract is derived from the models, and a golden file makes changes deliberate.

frameos/contract.json is that golden file, shipped in the package: `frameos contract` prints it
without importing pydantic (BARS B4), and this test keeps it equal to what the models say.

To accept an intended change: `FRAMEOS_UPDATE_GOLDEN=1 pytest tests/test_contract.py` (or
`nox -s docs`), then review the diff of tests/golden/contract.json and docs/events.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from frameos.commands import COMMANDS
from frameos.contract import build, events_markdown
from frameos.events import REGISTRY, field_names
from tests.conftest import frameos_argv

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "frameos" / "contract.json"  # shipped: `frameos contract` prints it
EVENTS_DOC = ROOT / "docs" / "events.md"
UPDATE = os.environ.get("FRAMEOS_UPDATE_GOLDEN") == "1"

SPEC_NAMES = {
    "runtime:start",
    "runtime:ready",
    "runtime:heartbeat",
    "runtime:metrics_tick",
    "runtime:stopping",
    "runtime:stop",
    "runtime:reload",
    "runtime:check_ok",
    "runtime:check_failed",
    "runtime:parity_ok",
    "runtime:parity_failed",
    "message",
    "vm.overlay_prepared",
    "vm.layer_discarded",
    "vm.launched",
    "vm.exited",
    "vm.restart_scheduled",
    "vm.gave_up",
    "vm.shutdown_requested",
    "vm.cooperative_attempted",
    "vm.cooperative_succeeded",
    "vm.cooperative_timed_out",
    "vm.shutdown_escalated",
    "vm.shutdown_complete",
    "bootstrap.planned",
    "bootstrap.started",
    "bootstrap.step",
    "bootstrap.completed",
    "bootstrap.failed",
    "cleanup.progress",
    "command.accepted",
    "command.rejected",
    "command.completed",
    "command.failed",
    "worker.registered",
    "worker.status",
    "worker.stale",
    "summary",
}


def test_every_spec_event_is_declared_once() -> None:
    assert set(REGISTRY) == SPEC_NAMES


def test_shipped_contract_is_what_the_models_say() -> None:
    if UPDATE:
        GOLDEN.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    assert json.loads(GOLDEN.read_text()) == build(), (
        "the contract changed: if intended, run `nox -s docs` (FRAMEOS_UPDATE_GOLDEN=1 pytest "
        "tests/test_contract.py) and review the diff of frameos/contract.json"
    )


def test_contract_command_prints_the_shipped_contract() -> None:
    result = subprocess.run(
        frameos_argv("contract"), capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout == GOLDEN.read_text()


def test_command_event_fields_come_from_the_models() -> None:
    contract = build()
    for command in COMMANDS:
        for name in command.events:
            assert contract["command_event_fields"][command.name][name] == field_names(
                REGISTRY[name]
            )
    assert contract["events"]["worker.status"]["fields"] == ["worker_id", "from", "to"]


def test_events_doc_is_generated_from_the_models() -> None:
    if UPDATE:
        EVENTS_DOC.write_text(events_markdown())
    assert EVENTS_DOC.read_text() == events_markdown(), "run `nox -s docs` to regenerate"
