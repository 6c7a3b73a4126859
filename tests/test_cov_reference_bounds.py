"""The configuration reference words every kind of bound (frameos/config/reference.py): a
strict upper bound, and a float bound that is a whole number shown without its `.0`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from frameos.config.reference import _allowed


class Bounds(BaseModel):
    below: int = Field(default=1, gt=0, lt=10)
    seconds: float = Field(default=1.0, ge=0.0, le=60.0)


def test_strict_bounds_and_whole_float_bounds() -> None:
    assert _allowed(Bounds.model_fields["below"], sizes=False) == "> 0; < 10"
    assert _allowed(Bounds.model_fields["seconds"], sizes=False) == "0–60"
