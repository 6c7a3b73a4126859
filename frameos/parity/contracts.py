"""Renderer and driver contracts (SPEC §8): the pydantic models and every parity invariant.

Pure functions, no I/O: `compare(renderer_json, driver_json)` validates both raw JSON values and
checks the invariants, returning every violation as a message that names the fields and the
values that broke it (schema errors name their JSON path). It never raises for any JSON value.

Unknown keys in a contract are ignored, so either side may add fields without breaking the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from frameos.config import problems_from

Side = Literal["renderer", "driver"]
PARTIAL_REFRESH_KINDS = ("eink", "epd")
DROP_POLICIES = ("drop_oldest", "drop_newest")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1  # what the event stream can carry as an integer
MAX_SCHEMA_PROBLEMS = 20  # per side: a list of 10 000 wrong items is one problem, said once


def _valid_unicode(value: str) -> str:
    # JSON escapes can smuggle lone surrogates in; they cannot be re-encoded into an event
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("expected valid Unicode text, found a lone surrogate") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]


class _Contract(BaseModel):
    """Base of the contract models: strict types (no coercion), finite numbers, frozen."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, frozen=True, extra="ignore")


class RendererScheduling(_Contract):
    """`scheduling` of a renderer contract: how it paces frames."""

    target_fps: float
    tick_budget_ms: float
    drop_policy: Literal["drop_oldest", "drop_newest", "block"]


class RendererContract(_Contract):
    """What a renderer offers."""

    api_version: Text
    supports_layers: bool
    supported_color_formats: list[Text]
    max_fps: float
    scheduling: RendererScheduling


class DriverScheduling(_Contract):
    """`scheduling` of a driver contract: what it does when frames arrive faster than it draws."""

    backpressure_policy: Literal["drop", "queue", "block"]
    max_queue_depth: Annotated[int, Field(ge=I64_MIN, le=I64_MAX)]


class DriverContract(_Contract):
    """What a display driver needs."""

    api_version: Text
    device_kind: Text
    required_renderer_formats: list[Text]
    supports_partial_refresh: bool
    scheduling: DriverScheduling


MODELS: dict[Side, type[_Contract]] = {"renderer": RendererContract, "driver": DriverContract}


def validate(side: Side, data: Any) -> tuple[Any, list[str]]:
    """One side's contract model, or None and one message per schema error (with JSON path)."""
    model = MODELS[side]
    try:
        return model.model_validate(data), []
    except ValidationError as err:
        problems = problems_from(err, side, model)
        messages = [f"{side}.{p.path}: {p.message}" if p.path else str(p) for p in problems]
        if len(messages) > MAX_SCHEMA_PROBLEMS:
            more = len(messages) - MAX_SCHEMA_PROBLEMS
            messages = [*messages[:MAX_SCHEMA_PROBLEMS], f"{side}: … and {more} more schema errors"]
        return None, messages


def check(renderer: RendererContract | None, driver: DriverContract | None) -> list[str]:
    """Every broken invariant of §8 among the contracts that passed the schema.

    A violation that merely follows from another one (a version mismatch when one version is
    empty, target_fps ≤ max_fps when max_fps ≤ 0, …) is not reported twice.
    """
    violations: list[str] = []
    if renderer is not None:
        violations += check_renderer(renderer)
    if driver is not None:
        violations += check_driver(driver)
    if renderer is not None and driver is not None:
        violations += check_pair(renderer, driver)
    return violations


def check_renderer(r: RendererContract) -> list[str]:
    """The invariants that concern the renderer alone."""
    out: list[str] = []
    s = r.scheduling
    if not r.api_version.strip():
        out.append(f"renderer.api_version must be non-empty, found {r.api_version!r}")
    if not r.supported_color_formats:
        out.append("renderer.supported_color_formats must be non-empty, found []")
    for name, value in (
        ("max_fps", r.max_fps),
        ("scheduling.target_fps", s.target_fps),
        ("scheduling.tick_budget_ms", s.tick_budget_ms),
    ):
        if not value > 0:
            out.append(f"renderer.{name} must be > 0, found {_num(value)}")
    if r.max_fps > 0 and s.target_fps > r.max_fps:
        out.append(
            f"renderer.scheduling.target_fps ({_num(s.target_fps)}) must be ≤ "
            f"renderer.max_fps ({_num(r.max_fps)})"
        )
    if s.target_fps > 0 and s.tick_budget_ms > 0:
        frame_ms = 1000 / s.target_fps
        if math.isfinite(frame_ms) and s.tick_budget_ms > math.floor(frame_ms):
            out.append(
                f"renderer.scheduling.tick_budget_ms ({_num(s.tick_budget_ms)}) must be ≤ "
                f"floor(1000 / renderer.scheduling.target_fps ({_num(s.target_fps)})) "
                f"= {math.floor(frame_ms)}"
            )
    return out


def check_driver(d: DriverContract) -> list[str]:
    """The invariants that concern the driver alone."""
    out: list[str] = []
    s = d.scheduling
    if not d.api_version.strip():
        out.append(f"driver.api_version must be non-empty, found {d.api_version!r}")
    if not d.required_renderer_formats:
        out.append("driver.required_renderer_formats must be non-empty, found []")
    if d.supports_partial_refresh and d.device_kind not in PARTIAL_REFRESH_KINDS:
        out.append(
            f"driver.supports_partial_refresh is true but driver.device_kind is "
            f"{d.device_kind!r} (partial refresh is only allowed for 'eink' or 'epd')"
        )
    policy = f"driver.scheduling.backpressure_policy is {s.backpressure_policy!r}"
    if s.backpressure_policy == "queue" and s.max_queue_depth <= 0:
        out.append(
            f"driver.scheduling.max_queue_depth must be > 0 when {policy}, "
            f"found {s.max_queue_depth}"
        )
    elif s.backpressure_policy != "queue" and s.max_queue_depth != 0:
        out.append(
            f"driver.scheduling.max_queue_depth must be 0 when {policy}, found {s.max_queue_depth}"
        )
    return out


def check_pair(r: RendererContract, d: DriverContract) -> list[str]:
    """The invariants that relate the two contracts."""
    out: list[str] = []
    if r.api_version.strip() and d.api_version.strip() and r.api_version != d.api_version:
        out.append(
            f"renderer.api_version {r.api_version!r} must equal driver.api_version "
            f"{d.api_version!r}"
        )
    missing = sorted(set(d.required_renderer_formats) - set(r.supported_color_formats))
    if missing and r.supported_color_formats:
        out.append(
            f"driver.required_renderer_formats needs {missing}, which "
            f"renderer.supported_color_formats {r.supported_color_formats} does not offer"
        )
    drop = r.scheduling.drop_policy
    if d.scheduling.backpressure_policy == "drop" and drop not in DROP_POLICIES:
        out.append(
            f"driver.scheduling.backpressure_policy 'drop' needs renderer.scheduling."
            f"drop_policy 'drop_oldest' or 'drop_newest', found {drop!r}"
        )
    return out


def _num(value: float) -> str:
    return f"{value:.15g}"


@dataclass(frozen=True)
class Outcome:
    """The verdict: the contracts that passed the schema and every violation found."""

    renderer: RendererContract | None
    driver: DriverContract | None
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Both contracts passed the schema and no invariant is broken."""
        return not self.violations and self.renderer is not None and self.driver is not None


def compare(renderer_data: Any, driver_data: Any) -> Outcome:
    """Validate both raw contracts and check the invariants. Never raises for any JSON value."""
    renderer, r_problems = validate("renderer", renderer_data)
    driver, d_problems = validate("driver", driver_data)
    return Outcome(renderer, driver, tuple(r_problems + d_problems + check(renderer, driver)))
