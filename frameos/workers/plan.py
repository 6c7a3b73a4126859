"""Bootstrap plans and stamps (SPEC §6), without trio: `frameos check --plan` uses this.

The stamp of a VM (`state_dir/bootstrap/NAME.stamp`) holds `sha256:HEX` of its last successful
bootstrap. The digest covers the plan (steps, ssh, env, cwd) and its inputs: the base image
(path, size, mtime) and every step argument that names an existing file, relative to the VM's
`cwd` (its contents; size and mtime beyond `HASH_LIMIT`). With `trigger: auto` a matching stamp
means `noop`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from frameos.config import FrameConfig, VmConfig
from frameos.events import BootstrapPlanned, SshInfo
from frameos.workers.paths import VmPaths

HASH_LIMIT = 64 * 1024 * 1024


def _file_input(path: Path) -> dict[str, Any] | None:
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if not path.is_file():
        return None
    entry: dict[str, Any] = {"size": stat.st_size}
    if stat.st_size > HASH_LIMIT:
        entry["mtime_ns"] = stat.st_mtime_ns
        return entry
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    entry["sha256"] = digest.hexdigest()
    return entry


def _inputs(vm: VmConfig) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if vm.base_image is not None:
        try:
            stat = vm.base_image.stat()
            inputs["base_image"] = [str(vm.base_image), stat.st_size, stat.st_mtime_ns]
        except OSError:
            inputs["base_image"] = [str(vm.base_image), None, None]
    assert vm.bootstrap is not None
    for step in vm.bootstrap.steps:
        for arg in step.command:
            if arg in inputs or arg.startswith("-") or len(arg) > 4096 or "\n" in arg:
                continue
            entry = _file_input(vm.cwd / arg if vm.cwd is not None else Path(arg))
            if entry is not None:
                inputs[arg] = entry
    return inputs


def digest(vm: VmConfig) -> str:
    """`sha256:HEX` of the VM's bootstrap plan and its inputs."""
    assert vm.bootstrap is not None, "only VMs with a bootstrap have a digest"
    plan = {
        "steps": [s.model_dump(mode="json") for s in vm.bootstrap.steps],
        "ssh": vm.bootstrap.ssh.model_dump(mode="json"),
        "env": vm.env,
        "cwd": str(vm.cwd) if vm.cwd else None,
        "inputs": _inputs(vm),
    }
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def read_stamp(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_stamp(path: Path, value: str) -> None:
    """Atomically record a successful bootstrap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(value + "\n", encoding="utf-8")
    os.replace(tmp, path)


def ssh_info(vm: VmConfig) -> SshInfo:
    ssh = vm.bootstrap.ssh if vm.bootstrap is not None else None
    if ssh is None:
        return SshInfo()
    return SshInfo(
        user=ssh.user,
        host=ssh.host,
        port=ssh.port,
        identity=ssh.identity,
        options=list(ssh.options),
    )


def decide(vm: VmConfig, stamp: str | None) -> tuple[bool, str, str | None]:
    """(run?, why, digest) for the VM's bootstrap given the stamp on disk."""
    if vm.bootstrap is None or not vm.bootstrap.steps:
        return False, "no bootstrap steps configured", None
    value = digest(vm)
    if vm.bootstrap.trigger == "always":
        return True, "trigger is always", value
    if stamp is None:
        return True, "no stamp of a successful run yet", value
    if stamp != value:
        return True, f"plan or inputs changed since the last successful run ({stamp[:19]}…)", value
    return False, f"stamp matches {value[:19]}…", value


def planned(vm: VmConfig, state_dir: Path) -> BootstrapPlanned:
    """The `bootstrap.planned` event of one VM; reads the stamp, changes nothing."""
    paths = VmPaths.of(vm, state_dir)
    run, why, _ = decide(vm, read_stamp(paths.stamp))
    boot = vm.bootstrap
    return BootstrapPlanned(
        vm=vm.name,
        steps=[s.name for s in boot.steps] if boot else [],
        trigger=boot.trigger if boot else "auto",
        ssh=ssh_info(vm),
        action="would_run" if run else "would_skip",
        reason=why,
    )


def plans(config: FrameConfig) -> list[BootstrapPlanned]:
    """`bootstrap.planned` for every configured VM (for `frameos check --plan`)."""
    assert config.state_dir is not None, "resolve() fills state_dir"
    return [planned(vm, config.state_dir) for vm in config.vms]
