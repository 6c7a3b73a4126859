"""qcow2 overlays (SPEC §5): a fresh copy-on-write layer on `base_image` for every launch.

Made with the real `qemu-img create -f qcow2 -b BASE -F qcow2 OVERLAY`; discarded after the VM
has shut down (or, when a killed instance left one behind, as an orphan), reporting the bytes
it held on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import trio

from frameos.workers import LaunchError

QEMU_IMG = "qemu-img"
CREATE_TIMEOUT_S = 30.0


async def prepare(base: Path, overlay: Path) -> None:
    """Create `overlay` backed by `base`; LaunchError saying why when it cannot."""
    if not await trio.Path(base).is_file():
        raise LaunchError(f"base image {base} does not exist (or is not a file); fix base_image")
    tool = shutil.which(QEMU_IMG)
    if tool is None:
        raise LaunchError(f"{QEMU_IMG} is not installed; install qemu-utils to use base_image")
    await trio.Path(overlay.parent).mkdir(parents=True, exist_ok=True)
    argv = [tool, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)]
    try:
        with trio.fail_after(CREATE_TIMEOUT_S):
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
    except trio.TooSlowError:
        raise LaunchError(f"{QEMU_IMG} create took over {CREATE_TIMEOUT_S:g} s") from None
    if result.returncode != 0:
        why = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise LaunchError(f"{QEMU_IMG} create failed for {overlay}: {why}")


def discard(overlay: Path) -> int | None:
    """Remove `overlay`; returns the bytes it held on disk, or None when it was not there."""
    try:
        size = os.stat(overlay).st_blocks * 512
        os.unlink(overlay)
    except FileNotFoundError:
        return None
    return size
