"""The `frameos parity` command: load both sources, judge them, emit one event, exit 0, 1 or 2.

The verdict lists load problems first, then schema problems, then broken invariants, each side in
order; `runtime:parity_failed` joins them with "; ".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

from frameos.emit import SyncEmitter, choose_output
from frameos.events import Event, RuntimeParityFailed, RuntimeParityOk
from frameos.parity.contracts import Outcome, check, validate
from frameos.parity.sources import Loaded, Source, load_both, preview, probe_timeout, sources_from


def judge(sources: tuple[Source, Source], loaded: tuple[Loaded, Loaded]) -> Outcome:
    """The outcome of loaded sources: load problems, schema problems, then invariants."""
    violations: list[str] = []
    models: list[Any] = []
    for source, result in zip(sources, loaded, strict=True):
        violations += result.problems
        model = None
        if not result.problems:
            model, problems = validate(source.side, result.data)
            if problems and result.printed is not None:
                violations.append(
                    f"{source.describe()}: printed JSON that is not a "
                    f"{source.side} contract: {preview(result.printed)}"
                )
            violations += problems
        models.append(model)
    return Outcome(models[0], models[1], tuple(violations + check(models[0], models[1])))


def ok_event(outcome: Outcome, sources: tuple[Source, Source]) -> RuntimeParityOk:
    """`runtime:parity_ok` for a passing outcome."""
    r, d = outcome.renderer, outcome.driver
    assert r is not None, "only a passing outcome has an ok event"
    assert d is not None, "only a passing outcome has an ok event"
    shared = sorted(set(r.supported_color_formats) & set(d.required_renderer_formats))
    return RuntimeParityOk(
        renderer_api_version=r.api_version,
        driver_api_version=d.api_version,
        driver_device_kind=d.device_kind,
        shared_formats=shared,
        renderer_target_fps=r.scheduling.target_fps,
        renderer_tick_budget_ms=r.scheduling.tick_budget_ms,
        renderer_drop_policy=r.scheduling.drop_policy,
        driver_backpressure_policy=d.scheduling.backpressure_policy,
        driver_max_queue_depth=d.scheduling.max_queue_depth,
        renderer_contract_source=sources[0].kind,
        driver_contract_source=sources[1].kind,
    )


def failed_event(
    outcome: Outcome, sources: tuple[Source, Source], duration_ms: int
) -> RuntimeParityFailed:
    """`runtime:parity_failed` carrying every violation, joined by "; "."""
    error = "; ".join(outcome.violations) or "no contract could be checked"
    # argv and file names may hold undecodable bytes (surrogate escapes): keep them visible
    error = error.encode("utf-8", "backslashreplace").decode("utf-8")
    return RuntimeParityFailed(
        error=error,
        duration_ms=duration_ms,
        renderer_contract_source=sources[0].kind,
        driver_contract_source=sources[1].kind,
    )


async def run(sources: tuple[Source, Source], limit_s: float) -> Outcome:
    """Load both sides and judge them."""
    return judge(sources, await load_both(sources, limit_s))


def main(args: argparse.Namespace) -> int:
    """`frameos parity`: emit parity_ok (exit 0) or parity_failed (exit 1); UsageError → 2."""
    started = time.monotonic()
    sources = sources_from(args)
    timeout = probe_timeout(getattr(args, "probe_timeout", None))
    outcome = trio.run(run, sources, timeout)
    event: Event
    if outcome.ok:
        event = ok_event(outcome, sources)
    else:
        event = failed_event(outcome, sources, int((time.monotonic() - started) * 1000))
    output = choose_output(getattr(args, "output", "auto"))
    log_path = getattr(args, "event_log", None)
    emitter = SyncEmitter(output, Path(log_path) if log_path else None)
    try:
        emitter.emit(event)
    finally:
        emitter.close()
    if isinstance(event, RuntimeParityFailed) and output == "json":
        print(f"frameos: parity failed: {event.error}", file=sys.stderr)
    return 0 if outcome.ok else 1
