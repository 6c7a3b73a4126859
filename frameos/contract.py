"""The machine-readable contract (`frameos contract`), derived from events.py and commands.py."""

from __future__ import annotations

from typing import Any

from frameos import __version__
from frameos.commands import COMMANDS
from frameos.envelope import encode
from frameos.events import ENVELOPE_VERSION, REGISTRY, SEVERITIES, VmLaunched, field_names


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
                    {
                        "name": f.name,
                        "help": f.help,
                        "takes_value": not f.switch,
                        **({"choices": list(f.choices)} if f.choices else {}),
                        **({"default": f.default} if f.default is not None else {}),
                    }
                    for f in c.flags
                ],
                "events": [cls.NAME for cls in c.events],
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
            c.name: {cls.NAME: field_names(cls) for cls in c.events} for c in COMMANDS
        },
    }


def events_markdown() -> str:
    """docs/events.md, generated from the event models (a test keeps the file in step)."""
    out = [
        "# Event reference",
        "",
        "<!-- generated from frameos/events.py by `nox -s docs`; do not edit by hand -->",
        "",
        "Every event travels in one envelope, the same bytes on stdout (JSON mode), in the event",
        "log, on `/ws/events` and from `GET /v1/events`:",
        "",
        "```json",
        encode(VmLaunched(vm="alpha", pid=4242, attempt=1), 17, 1763763000.123).json.decode(),
        "```",
        "",
        "- `seq` increases strictly per instance and continues across restarts (from the log).",
        "- `severity` is one of " + ", ".join(f"`{s}`" for s in SEVERITIES) + "; the column below "
        "is the default, some events raise it (e.g. `message`, `summary` on failure).",
        "- Fields are only ever added; a rename or removal bumps `v`. Consumers ignore unknown "
        "events and fields.",
        "- `frameos contract` prints the same information as JSON Schema.",
        "",
        "| event | severity | fields |",
        "| --- | --- | --- |",
    ]
    for name, cls in sorted(REGISTRY.items()):
        schema = cls.model_json_schema(by_alias=True)
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = []
        for field in field_names(cls):
            kind = _type_of(props.get(field, {}))
            optional = "" if field in required else "?"
            fields.append(f"`{field}{optional}`: {kind}")
        out.append(f"| `{name}` | {cls.SEVERITY} | {'<br>'.join(fields) or '—'} |")
    out += ["", "`?` marks a field that may be null or absent in older logs.", ""]
    return "\n".join(out)


def _type_of(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(str(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "const" in prop:
        return str(prop["const"])
    return str(prop.get("type", "any"))
