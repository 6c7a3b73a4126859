"""frameos.parity: invariants, schema errors, sources (files and real probe commands), events."""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frameos import events as ev
from frameos.cli import build_parser
from frameos.envelope import encode
from frameos.parity import compare, main
from frameos.parity.command import failed_event, judge, ok_event
from frameos.parity.contracts import Side
from frameos.parity.sources import Loaded, Source, load, load_both

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
VALID = FIXTURES / "valid"


def read_pair(case: str) -> tuple[Any, Any]:
    folder = FIXTURES / case
    renderer = json.loads((folder / "renderer.json").read_text())
    driver = json.loads((folder / "driver.json").read_text())
    return renderer, driver


def file_sources(case: str = "valid") -> tuple[Source, Source]:
    folder = FIXTURES / case
    return (
        Source("renderer", "fixture", str(folder / "renderer.json")),
        Source("driver", "fixture", str(folder / "driver.json")),
    )


# --- one fixture per invariant ----------------------------------------------------------------

INVARIANT_CASES = {
    "api_version_mismatch": "renderer.api_version '1.0' must equal driver.api_version '2.0'",
    "api_version_empty": "renderer.api_version must be non-empty, found ''",
    "renderer_formats_empty": "renderer.supported_color_formats must be non-empty, found []",
    "driver_formats_empty": "driver.required_renderer_formats must be non-empty, found []",
    "format_not_offered": (
        "driver.required_renderer_formats needs ['gray4'], which "
        "renderer.supported_color_formats ['rgba8888', 'rgb565', 'gray8'] does not offer"
    ),
    "partial_refresh_not_eink": (
        "driver.supports_partial_refresh is true but driver.device_kind is 'lcd' "
        "(partial refresh is only allowed for 'eink' or 'epd')"
    ),
    "max_fps_not_positive": "renderer.max_fps must be > 0, found 0",
    "target_fps_not_positive": "renderer.scheduling.target_fps must be > 0, found 0",
    "tick_budget_not_positive": "renderer.scheduling.tick_budget_ms must be > 0, found -5",
    "target_fps_above_max": "renderer.scheduling.target_fps (90) must be ≤ renderer.max_fps (60)",
    "tick_budget_too_long": (
        "renderer.scheduling.tick_budget_ms (34) must be ≤ "
        "floor(1000 / renderer.scheduling.target_fps (30)) = 33"
    ),
    "queue_without_depth": (
        "driver.scheduling.max_queue_depth must be > 0 when "
        "driver.scheduling.backpressure_policy is 'queue', found 0"
    ),
    "depth_without_queue": (
        "driver.scheduling.max_queue_depth must be 0 when "
        "driver.scheduling.backpressure_policy is 'block', found 4"
    ),
    "drop_without_drop_policy": (
        "driver.scheduling.backpressure_policy 'drop' needs renderer.scheduling.drop_policy "
        "'drop_oldest' or 'drop_newest', found 'block'"
    ),
}


def test_valid_pair_passes() -> None:
    outcome = compare(*read_pair("valid"))
    assert outcome.ok
    assert outcome.violations == ()


@pytest.mark.parametrize(("case", "expected"), sorted(INVARIANT_CASES.items()))
def test_each_invariant_fixture_reports_exactly_its_violation(case: str, expected: str) -> None:
    outcome = compare(*read_pair(case))
    assert not outcome.ok
    assert outcome.violations == (expected,)


def test_every_fixture_folder_is_tested() -> None:
    folders = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert folders == {*INVARIANT_CASES, "valid", "schema_errors", "many_violations"}


def test_several_violations_are_all_reported_joined() -> None:
    outcome = compare(*read_pair("many_violations"))
    assert outcome.violations == (
        "renderer.scheduling.target_fps (30) must be ≤ renderer.max_fps (24)",
        "renderer.scheduling.tick_budget_ms (40) must be ≤ "
        "floor(1000 / renderer.scheduling.target_fps (30)) = 33",
        "driver.supports_partial_refresh is true but driver.device_kind is 'lcd' "
        "(partial refresh is only allowed for 'eink' or 'epd')",
        "driver.scheduling.max_queue_depth must be 0 when "
        "driver.scheduling.backpressure_policy is 'drop', found 4",
        "renderer.api_version '1.1' must equal driver.api_version '1.0'",
        "driver.required_renderer_formats needs ['yuv420'], which "
        "renderer.supported_color_formats ['rgba8888', 'rgb565', 'gray8'] does not offer",
        "driver.scheduling.backpressure_policy 'drop' needs renderer.scheduling.drop_policy "
        "'drop_oldest' or 'drop_newest', found 'block'",
    )
    event = failed_event(outcome, file_sources("many_violations"), 5)
    assert event.error == "; ".join(outcome.violations)


def test_schema_errors_name_the_json_path() -> None:
    outcome = compare(*read_pair("schema_errors"))
    assert outcome.renderer is None
    assert outcome.driver is None
    assert outcome.violations == (
        "renderer.supports_layers: required key is missing",
        'renderer.max_fps: expected a number, found "60"',
        "renderer.scheduling.drop_policy: expected one of 'drop_oldest', 'drop_newest' or "
        "'block', found \"lifo\"",
        'driver.supports_partial_refresh: expected true or false, found "yes"',
        "driver.scheduling.max_queue_depth: required key is missing",
    )


def test_one_side_invalid_still_checks_the_other_side() -> None:
    renderer, driver = read_pair("partial_refresh_not_eink")
    outcome = compare([renderer], driver)
    assert len(outcome.violations) == 2
    assert outcome.violations[0].startswith("renderer: expected an object, found [")
    assert outcome.violations[1] == (
        "driver.supports_partial_refresh is true but driver.device_kind is 'lcd' "
        "(partial refresh is only allowed for 'eink' or 'epd')"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"max_fps": True}, "renderer.max_fps: expected a number, found true"),
        ({"max_fps": float("nan")}, "renderer.max_fps: Input should be a finite number, found NaN"),
        ({"max_fps": 10**400}, "renderer.max_fps: expected a number, found 1000000000"),
        ({"api_version": 1}, "renderer.api_version: expected a string, found 1"),
        ({"api_version": "\ud800"}, "renderer.api_version: expected valid Unicode text"),
        (
            {"supported_color_formats": "rgb565"},
            "renderer.supported_color_formats: expected a list",
        ),
        ({"scheduling": None}, "renderer.scheduling: expected an object, found null"),
    ],
)
def test_wrong_types_are_violations(change: dict[str, Any], expected: str) -> None:
    renderer, driver = read_pair("valid")
    outcome = compare({**renderer, **change}, driver)
    assert len(outcome.violations) == 1
    assert outcome.violations[0].startswith(expected)


def test_queue_depth_beyond_int64_is_a_schema_error() -> None:
    renderer, driver = read_pair("valid")
    driver["scheduling"]["max_queue_depth"] = 2**63
    (message,) = compare(renderer, driver).violations
    assert message.startswith("driver.scheduling.max_queue_depth: expected a value ≤ ")


def test_schema_errors_are_bounded_per_side() -> None:
    renderer, driver = read_pair("valid")
    renderer["supported_color_formats"] = list(range(1000))
    outcome = compare(renderer, driver)
    assert len(outcome.violations) == 21
    assert (
        outcome.violations[0] == "renderer.supported_color_formats[0]: expected a string, found 0"
    )
    assert outcome.violations[-1] == "renderer: … and 980 more schema errors"


def test_unknown_keys_are_ignored() -> None:
    renderer, driver = read_pair("valid")
    assert compare({**renderer, "vendor": "x"}, {**driver, "extra": [1]}).ok


def test_partial_refresh_allowed_for_eink() -> None:
    renderer, driver = read_pair("partial_refresh_not_eink")
    assert compare(renderer, {**driver, "device_kind": "eink"}).ok


def test_tiny_target_fps_has_no_budget_limit() -> None:
    renderer, driver = read_pair("valid")
    renderer["scheduling"]["target_fps"] = 5e-324  # 1000 / target overflows to inf
    renderer["scheduling"]["tick_budget_ms"] = 1e300
    assert compare(renderer, driver).ok


# --- the ok event (golden) --------------------------------------------------------------------


GOLDEN_OK = {
    "renderer_api_version": "1.0",
    "driver_api_version": "1.0",
    "driver_device_kind": "epd",
    "shared_formats": ["rgb565", "rgba8888"],
    "renderer_target_fps": 30.0,
    "renderer_tick_budget_ms": 33.0,
    "renderer_drop_policy": "drop_oldest",
    "driver_backpressure_policy": "queue",
    "driver_max_queue_depth": 4,
    "renderer_contract_source": "fixture",
    "driver_contract_source": "fixture",
}


async def test_golden_ok_event_for_the_valid_pair() -> None:
    sources = file_sources()
    outcome = judge(sources, await load_both(sources, 5.0))
    event = ok_event(outcome, sources)
    assert event.NAME == ev.RuntimeParityOk.NAME
    fields = json.loads(event.to_json())
    assert fields == GOLDEN_OK
    assert list(fields) == list(GOLDEN_OK)


async def test_probe_source_is_discovered() -> None:
    sources = (
        Source("renderer", "discovered", f"cat {shlex.quote(str(VALID / 'renderer.json'))}"),
        Source("driver", "fixture", str(VALID / "driver.json")),
    )
    outcome = judge(sources, await load_both(sources, 5.0))
    fields = json.loads(ok_event(outcome, sources).to_json())
    assert fields == {**GOLDEN_OK, "renderer_contract_source": "discovered"}


def test_failed_event_fields() -> None:
    sources = file_sources("api_version_mismatch")
    event = failed_event(compare(*read_pair("api_version_mismatch")), sources, 12)
    assert json.loads(event.to_json()) == {
        "error": "renderer.api_version '1.0' must equal driver.api_version '2.0'",
        "duration_ms": 12,
        "renderer_contract_source": "fixture",
        "driver_contract_source": "fixture",
    }


# --- sources: files ---------------------------------------------------------------------------


async def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    loaded = await load(Source("driver", "fixture", str(path)), 1.0)
    assert loaded.problems == (f"driver contract file {path}: file not found",)


async def test_invalid_json_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"api_version": ')
    loaded = await load(Source("renderer", "fixture", str(path)), 1.0)
    assert loaded.problems == (
        f"renderer contract file {path}: invalid JSON at line 1 column 17: Expecting value",
    )


async def test_directory_instead_of_file(tmp_path: Path) -> None:
    loaded = await load(Source("renderer", "fixture", str(tmp_path)), 1.0)
    assert loaded.problems == (
        f"renderer contract file {tmp_path}: is a directory, expected a JSON file",
    )


# --- sources: real probe commands -------------------------------------------------------------


def probe(command: str, side: Side = "renderer") -> Source:
    return Source(side, "discovered", command)


async def test_probe_success() -> None:
    loaded = await load(probe(f"cat {shlex.quote(str(VALID / 'driver.json'))}", "driver"), 5.0)
    assert loaded.problems == ()
    assert loaded.data == read_pair("valid")[1]


async def test_probe_nonzero_exit_names_probe_and_output() -> None:
    command = "echo partial; echo 'no device found' >&2; exit 3"
    loaded = await load(probe(command), 5.0)
    assert loaded.problems == (
        f"renderer probe `{command}`: exited with status 3 (stdout: 'partial', "
        "stderr (tail): 'no device found')",
    )


async def test_probe_killed_by_signal() -> None:
    loaded = await load(probe("kill -TERM $$"), 5.0)
    (message,) = loaded.problems
    assert "was killed by SIGTERM" in message


async def test_probe_timeout_kills_the_whole_group() -> None:
    # a background grandchild holds stdout open: only killing the group ends the wait
    command = "sleep 30 & sleep 30"
    started = time.monotonic()
    loaded = await load(probe(command, "driver"), 0.3)
    assert time.monotonic() - started < 5
    assert loaded.problems == (
        f"driver probe `{command}`: timed out after 0.3 s and was killed "
        "(raise --probe-timeout if it needs longer)",
    )


async def test_probe_garbage_output() -> None:
    loaded = await load(probe("echo 'renderer ready, 60 fps'"), 5.0)
    assert loaded.problems == (
        "renderer probe `echo 'renderer ready, 60 fps'`: printed something that is not JSON "
        "(Expecting value at line 1 column 1): 'renderer ready, 60 fps'",
    )


async def test_probe_empty_output() -> None:
    loaded = await load(probe("echo warming up >&2; true", "driver"), 5.0)
    assert loaded.problems == (
        "driver probe `echo warming up >&2; true`: printed nothing on stdout, but it must "
        "print the driver contract as JSON (stderr (tail): 'warming up')",
    )


async def test_probe_long_output_is_bounded() -> None:
    command = f"{shlex.quote(sys.executable)} -c \"print('x' * 5000)\""
    (message,) = (await load(probe(command), 5.0)).problems
    assert message.endswith("… (5000 chars)")
    assert len(message) < 600


async def test_probe_json_that_is_not_a_contract() -> None:
    sources = (probe("echo '[1, 2]'"), Source("driver", "fixture", str(VALID / "driver.json")))
    outcome = judge(sources, await load_both(sources, 5.0))
    assert outcome.violations == (
        "renderer probe `echo '[1, 2]'`: printed JSON that is not a renderer contract: '[1, 2]'",
        "renderer: expected an object, found [1, 2]",
    )


async def test_both_sides_failing_are_reported_together() -> None:
    sources = (probe("exit 1"), probe("true", "driver"))
    outcome = judge(sources, await load_both(sources, 5.0))
    assert len(outcome.violations) == 2
    assert outcome.violations[0].startswith("renderer probe `exit 1`: exited with status 1")
    assert outcome.violations[1].startswith("driver probe `true`: printed nothing on stdout")


def test_loaded_defaults() -> None:
    assert Loaded() == Loaded(data=None, printed=None, problems=())


# --- main, in process -------------------------------------------------------------------------


def test_main_ok_writes_event_and_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.jsonl"
    renderer, driver = file_sources()
    args = build_parser().parse_args(
        [
            "parity",
            "--renderer-contract",
            renderer.value,
            "--driver-contract",
            driver.value,
            "--event-log",
            str(log),
            "--output",
            "json",
        ]
    )
    assert main(args) == 0
    line = capsys.readouterr().out
    envelope = json.loads(line)
    assert envelope["event"] == ev.RuntimeParityOk.NAME
    assert envelope["fields"] == GOLDEN_OK
    assert log.read_text() == line


def test_main_failed(capsys: pytest.CaptureFixture[str]) -> None:
    renderer, driver = file_sources("queue_without_depth")
    args = build_parser().parse_args(
        [
            "parity",
            "--renderer-contract",
            renderer.value,
            "--driver-contract",
            driver.value,
            "--output",
            "json",
        ]
    )
    assert main(args) == 1
    out, err = capsys.readouterr()
    envelope = json.loads(out)
    assert envelope["event"] == ev.RuntimeParityFailed.NAME
    assert envelope["severity"] == "error"
    assert set(envelope["fields"]) == {
        "error",
        "duration_ms",
        "renderer_contract_source",
        "driver_contract_source",
    }
    assert "max_queue_depth must be > 0" in err


# --- property: any pair passes or fails with messages, never an exception ---------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FORMATS = ["rgba8888", "rgb565", "gray8", "gray4", ""]
well_typed_numbers = (
    st.integers(-5, 200)
    | st.floats(-10, 1000, allow_nan=False)
    | st.sampled_from([0, 1, 24, 30, 33, 60, 1e-300, 5e-324, 1e300])
)


Field = Any  # (valid value, strategy) -> strategy
POLICIES = st.sampled_from(["drop", "queue", "block"])


def typed(valid: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (7 in 8) the valid fixture's value, so that passing pairs are common, else a
    random one. (`one_of` would not do: it weighs distinct strategies, not repeated ones.)"""
    return st.sampled_from(range(8)).flatmap(lambda n: strategy if n == 3 else st.just(valid))


def junk(valid: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Like `typed`, but sometimes any JSON at all."""
    return st.one_of(typed(valid, strategy), json_values)


def renderers(field: Field) -> st.SearchStrategy[dict[str, Any]]:
    """Renderer contracts: the valid fixture with values replaced through `field`."""
    valid, _ = read_pair("valid")
    sched = valid["scheduling"]
    pacing = st.fixed_dictionaries(
        {
            "target_fps": field(sched["target_fps"], well_typed_numbers),
            "tick_budget_ms": field(sched["tick_budget_ms"], well_typed_numbers),
            "drop_policy": st.sampled_from(["drop_oldest", "drop_newest", "block"]),
        }
    )
    return st.fixed_dictionaries(
        {
            "api_version": field("1.0", st.sampled_from(["1.0", "2.0", "", " "])),
            "supports_layers": field(True, st.booleans()),
            "supported_color_formats": field(
                valid["supported_color_formats"], st.lists(st.sampled_from(FORMATS), max_size=4)
            ),
            "max_fps": field(valid["max_fps"], well_typed_numbers),
            "scheduling": st.one_of(pacing, field(sched, pacing)),
        }
    )


def drivers(field: Field) -> st.SearchStrategy[dict[str, Any]]:
    """Driver contracts: the valid fixture with values replaced through `field`."""
    _, valid = read_pair("valid")
    queues_any = POLICIES.flatmap(queues)
    return st.fixed_dictionaries(
        {
            "api_version": field("1.0", st.sampled_from(["1.0", "2.0", ""])),
            "device_kind": field("epd", st.sampled_from(["eink", "epd", "lcd", "EPD"])),
            "required_renderer_formats": field(
                valid["required_renderer_formats"], st.lists(st.sampled_from(FORMATS), max_size=3)
            ),
            "supports_partial_refresh": field(True, st.booleans()),
            "scheduling": st.one_of(queues_any, field(valid["scheduling"], queues_any)),
        }
    )


def queues(policy: str) -> st.SearchStrategy[dict[str, Any]]:
    """A driver `scheduling` for a policy: mostly with a fitting depth, else any depth."""
    fitting = st.just(4 if policy == "queue" else 0)
    depth = st.one_of(fitting, fitting, st.integers(-1, 5), st.integers())
    return st.fixed_dictionaries({"backpressure_policy": st.just(policy), "max_queue_depth": depth})


def oracle(r: dict[str, Any], d: dict[str, Any]) -> bool:
    """An independent reading of §8 for contracts that passed the schema."""
    rs, ds = r["scheduling"], d["scheduling"]
    fps, budget = rs["target_fps"], rs["tick_budget_ms"]
    frame_ms = 1000 / fps if fps > 0 else math.inf
    return all(
        [
            r["api_version"].strip() != "" and r["api_version"] == d["api_version"],
            bool(r["supported_color_formats"]) and bool(d["required_renderer_formats"]),
            set(d["required_renderer_formats"]) <= set(r["supported_color_formats"]),
            not d["supports_partial_refresh"] or d["device_kind"] in ("eink", "epd"),
            r["max_fps"] > 0 and fps > 0 and budget > 0 and fps <= r["max_fps"],
            not math.isfinite(frame_ms) or budget <= math.floor(frame_ms),
            (ds["max_queue_depth"] > 0)
            if ds["backpressure_policy"] == "queue"
            else ds["max_queue_depth"] == 0,
            ds["backpressure_policy"] != "drop" or rs["drop_policy"] != "block",
        ]
    )


def assert_reported(renderer: Any, driver: Any) -> None:
    outcome = compare(renderer, driver)
    assert all(isinstance(v, str) and v for v in outcome.violations)
    assert outcome.ok == (not outcome.violations)
    sources = file_sources()
    if outcome.ok:
        encode(ok_event(outcome, sources), 1, 0.0)
    else:
        encode(failed_event(outcome, sources, 0), 1, 0.0)
    if outcome.renderer is not None and outcome.driver is not None:
        assert outcome.ok == oracle(renderer, driver)


@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(renderer=json_values, driver=json_values)
def test_property_arbitrary_json_never_raises(renderer: Any, driver: Any) -> None:
    assert_reported(renderer, driver)


@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(renderer=renderers(junk), driver=drivers(junk))
def test_property_contracts_with_junk_values_never_raise(
    renderer: dict[str, Any], driver: dict[str, Any]
) -> None:
    assert_reported(renderer, driver)


@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(renderer=renderers(typed), driver=drivers(typed))
def test_property_well_formed_contracts_match_the_oracle(
    renderer: dict[str, Any], driver: dict[str, Any]
) -> None:
    assert_reported(renderer, driver)
