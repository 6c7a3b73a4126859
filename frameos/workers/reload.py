"""Reload by diff (SPEC §5.1): what a new config changes, VM by VM (matched by name).

    removed    in the running config only: stopped through its ladder, overlay discarded
    added      in the new config only: launched (its bootstrap follows the launch)
    restarted  `command`, `env`, `cwd`, `base_image`, `overlay_dir` or `watchdog_ms` (the VM
               gets it as WATCHDOG_USEC) changed: the ladder, then a launch with the new config
    updated    anything else changed (restart policy, timeouts, cooperative, bootstrap, health:
               the probes start over with the new settings, ...):
               applied without touching the process; the running process keeps the ladder it
               was launched with (its timeouts, its stop method), the next launch uses the new
               ones; the restart policy decides the next exit
    unchanged  the same pid

`classify` is pure (no trio); `VmPool.apply` acts on it and may move a VM from `restarted` to
`updated` when it has no process to restart (an operator's stop holds across a reload).
`changed` lists JSON paths (`vms[0].env`, `vms[1].timeouts.sigterm_ms`, `heartbeat_interval`),
VMs indexed by their place in the new config (a removed one by its place in the old).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from frameos.config import FrameConfig, VmConfig

# A change to any of these needs a new process; any other VM key is applied live.
PROCESS_KEYS = ("command", "env", "cwd", "base_image", "overlay_dir", "watchdog_ms")


class ReloadDiff(BaseModel):
    """What `VmPool.apply` did, VM by VM (names in config order), and what changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    restarted: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list, description="JSON paths, e.g. vms[0].env")


def process_changed(old: VmConfig, new: VmConfig) -> bool:
    """True when `new` cannot be applied to `old`'s running process."""
    return any(getattr(old, key) != getattr(new, key) for key in PROCESS_KEYS)


def classify(old: FrameConfig, new: FrameConfig) -> ReloadDiff:
    """The diff of two configs by VM name (what a reload would do to a pool that runs them all)."""
    before = {vm.name: vm for vm in old.vms}
    after = {vm.name: vm for vm in new.vms}
    added, restarted, updated, unchanged = [], [], [], []
    for vm in new.vms:
        previous = before.get(vm.name)
        if previous is None:
            added.append(vm.name)
        elif process_changed(previous, vm):
            restarted.append(vm.name)
        elif previous != vm:
            updated.append(vm.name)
        else:
            unchanged.append(vm.name)
    return ReloadDiff(
        added=added,
        removed=[vm.name for vm in old.vms if vm.name not in after],
        restarted=restarted,
        updated=updated,
        unchanged=unchanged,
        changed=json_paths(old, new),
    )


def json_paths(old: FrameConfig, new: FrameConfig) -> list[str]:
    """The JSON paths whose values differ; VMs are matched by name, not by position."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        if key == "vms":
            _vm_paths(a.get("vms") or [], b.get("vms") or [], out)
        else:
            _walk(a.get(key), b.get(key), key, out)
    return list(dict.fromkeys(out))


def _vm_paths(old: list[dict[str, Any]], new: list[dict[str, Any]], out: list[str]) -> None:
    before = {vm["name"]: vm for vm in old}
    names = {vm["name"] for vm in new}
    for index, vm in enumerate(new):
        previous = before.get(vm["name"])
        if previous is None:
            out.append(f"vms[{index}]")
        else:
            _walk(previous, vm, f"vms[{index}]", out)
    out.extend(f"vms[{i}]" for i, vm in enumerate(old) if vm["name"] not in names)


def _walk(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _walk(a.get(key), b.get(key), f"{path}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            if isinstance(x, dict | list):
                _walk(x, y, f"{path}[{index}]", out)
            elif x != y:
                out.append(path)  # a list of scalars (an argv) changed: the list is the unit
                return
    elif a != b:
        out.append(path)
