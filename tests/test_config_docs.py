"""docs/configuration.md's key tables are generated from the config models.

To accept an intended change: `FRAMEOS_UPDATE_GOLDEN=1 pytest tests/test_config_docs.py`, then
review the diff of docs/configuration.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from frameos.config import FrameConfig
from frameos.config.reference import BEGIN, END, splice, tables

DOC = Path(__file__).parents[1] / "docs" / "configuration.md"
UPDATE = os.environ.get("FRAMEOS_UPDATE_GOLDEN") == "1"


def test_configuration_doc_is_generated_from_the_models() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "the markers of the generated part"
    if UPDATE:
        DOC.write_text(splice(text), encoding="utf-8")
        text = DOC.read_text(encoding="utf-8")
    assert text == splice(text), (
        "docs/configuration.md differs from the models: if intended, run "
        "`FRAMEOS_UPDATE_GOLDEN=1 pytest tests/test_config_docs.py` and review the diff"
    )


def walk(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    out = []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        out.append((key, info.description))
        for sub in _models(info.annotation):
            many = "list[" in str(info.annotation)
            out += walk(sub, f"{key}[]" if many else key)
    return out


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models(arg)]


def test_every_key_is_described_and_listed() -> None:
    generated = tables()
    keys = walk(FrameConfig)
    assert len(keys) > 50
    for key, description in keys:
        assert description, f"{key} has no Field(description=...)"
        assert f"| `{key}` |" in generated, key


def test_a_changed_default_shows_in_the_tables() -> None:
    """The check can fail: the tables follow the models, not the other way round."""
    field = FrameConfig.model_fields["frame_port"]
    before = tables()
    old = field.default
    try:
        field.default = 9999
        assert tables() != before and "`9999`" in tables()
    finally:
        field.default = old
    assert tables() == before
