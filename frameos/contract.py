"""The machine-readable contract (`frameos contract`), derived from events.py and commands.py."""

from __future__ import annotations

from typing import Any

from frameos import __version__
from frameos.commands import COMMANDS
from frameos.events import ENVELOPE_VERSION, REGISTRY, SEVERITIES, field_names


def build() -> dict[str, Any]:
    """The contract as plain data: commands with flags, every event's schema, field maps."""
    return {
        "contract": "frameos.contract.v1",
        "version": __version__,
        "envelope": {
            "v": ENVELOPE_VERSION,
            "keys": ["v", "seq", "timestamp", "event", "severity", "fields"],
            "severities": list(SEVERITIES),
        },
        "commands": {
            c.name: {
                "help": c.help,
                "flags": [
                    {"name": f.name, "help": f.help, "takes_value": not f.switch,
                     **({"choices": list(f.choices)} if f.choices else {}),
                     **({"default": f.default} if f.default is not None else {})}
                    for f in c.flags
                ],
                "events": list(c.events),
            }
            for c in COMMANDS
        },
        "events": {
            name: {
                "severity": cls.SEVERITY,
                "fields": field_names(cls),
                "schema": cls.model_json_schema(by_alias=True),
            }
            for name, cls in sorted(REGISTRY.items())
        },
        "command_event_fields": {
            c.name: {name: field_names(REGISTRY[name]) for name in c.events} for c in COMMANDS
        },
    }
