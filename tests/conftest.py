"""Shared test helpers: real-parts requirements, free ports, and running the real `frameos`."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip when a real part (qemu, systemd, root) is missing on a laptop; fail in CI.

    In CI (`CI=true`) every real-parts test must run, so a missing part is a failure there.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {what} is missing: .ci/run must install it")
    pytest.skip(f"{what} is missing (install it to run this test)")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    require(not missing, "tool(s) " + ", ".join(missing))
