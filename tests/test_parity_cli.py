"""`frameos parity` end to end: the real CLI in a subprocess, its exit codes, stdout and log."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from frameos import events as ev

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
RENDERER = str(FIXTURES / "valid" / "renderer.json")
DRIVER = str(FIXTURES / "valid" / "driver.json")


def parity(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frameos", "parity", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--renderer-contract", RENDERER, "--renderer-probe-cmd", "true",
             "--driver-contract", DRIVER],
            "give only one of --renderer-contract PATH or --renderer-probe-cmd CMD "
            "(both were given)",
        ),
        (
            ["--renderer-contract", RENDERER],
            "give one of --driver-contract PATH or --driver-probe-cmd CMD (neither was given)",
        ),
        (
            ["--driver-probe-cmd", "true", "--driver-contract", DRIVER],
            "give one of --renderer-contract PATH or --renderer-probe-cmd CMD "
            "(neither was given); give only one of --driver-contract PATH or "
            "--driver-probe-cmd CMD (both were given)",
        ),
        (
            [],
            "give one of --renderer-contract PATH or --renderer-probe-cmd CMD (neither was "
            "given); give one of --driver-contract PATH or --driver-probe-cmd CMD",
        ),
        (
            ["--renderer-contract", RENDERER, "--driver-contract", DRIVER,
             "--probe-timeout", "0"],
            "--probe-timeout must be a positive number of seconds, found 0.0",
        ),
    ],
)  # fmt: skip
def test_flag_combinations_are_usage_errors(args: list[str], expected: str) -> None:
    result = parity(*args, "--output", "json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_valid_pair_exits_0_with_parity_ok(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    result = parity(
        "--renderer-contract", RENDERER, "--driver-contract", DRIVER,
        "--event-log", str(log), "--output", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (envelope,) = events(result.stdout)
    assert envelope["event"] == ev.RuntimeParityOk.NAME
    assert envelope["fields"]["shared_formats"] == ["rgb565", "rgba8888"]
    assert envelope["fields"]["renderer_contract_source"] == "fixture"
    assert log.read_text() == result.stdout


def test_invalid_pair_exits_1_with_parity_failed() -> None:
    folder = FIXTURES / "many_violations"
    result = parity(
        "--renderer-contract", str(folder / "renderer.json"),
        "--driver-contract", str(folder / "driver.json"), "--output", "json",
    )  # fmt: skip
    assert result.returncode == 1
    (envelope,) = events(result.stdout)
    assert envelope["event"] == ev.RuntimeParityFailed.NAME
    fields = envelope["fields"]
    assert set(fields) == {
        "error", "duration_ms", "renderer_contract_source", "driver_contract_source"
    }  # fmt: skip
    assert fields["error"].count("; ") == 6
    assert fields["renderer_contract_source"] == fields["driver_contract_source"] == "fixture"
    assert "Traceback" not in result.stderr


def test_probes_are_discovered_sources() -> None:
    result = parity(
        "--renderer-probe-cmd", f"cat {shlex.quote(RENDERER)}",
        "--driver-probe-cmd", f"cat {shlex.quote(DRIVER)}", "--output", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (envelope,) = events(result.stdout)
    assert envelope["fields"]["renderer_contract_source"] == "discovered"
    assert envelope["fields"]["driver_contract_source"] == "discovered"


def test_failing_probe_and_missing_file_are_reported_without_traceback(tmp_path: Path) -> None:
    result = parity(
        "--renderer-probe-cmd", "sleep 20", "--probe-timeout", "0.5",
        "--driver-contract", str(tmp_path / "missing.json"), "--output", "json",
    )  # fmt: skip
    assert result.returncode == 1
    (envelope,) = events(result.stdout)
    assert envelope["fields"]["error"] == (
        "renderer probe `sleep 20`: timed out after 0.5 s and was killed (raise "
        f"--probe-timeout if it needs longer); driver contract file "
        f"{tmp_path / 'missing.json'}: file not found"
    )
    assert envelope["fields"]["renderer_contract_source"] == "discovered"
    assert "Traceback" not in result.stderr


def test_human_output() -> None:
    folder = FIXTURES / "api_version_mismatch"
    result = parity(
        "--renderer-contract", str(folder / "renderer.json"),
        "--driver-contract", str(folder / "driver.json"), "--output", "human",
    )  # fmt: skip
    assert result.returncode == 1
    assert ev.RuntimeParityFailed.NAME in result.stdout
    assert "parity failed: renderer.api_version '1.0' must equal driver.api_version" in (
        " ".join(result.stdout.split())
    )
