"""The start order of the VMs (`vms[].depends_on`, SPEC §5.2): its problems and its levels.

    problems   what makes the graph unusable: a name no VM has, a VM naming itself, a cycle
               (`a → b → a`); one (JSON path, message) per problem
    levels     the VMs level by level: level 0 depends on nothing, level n only on lower levels
               (what `check --plan` prints; the pool does not walk levels, each VM waits on
               exactly its own dependencies)
    dependants VM → the VMs that depend on it (the pool stops those first)
    start_order the levels as lines for `check --plan`

Pure functions of the config (no trio); the models call `problems`, the pool and `check` the
rest.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from frameos.config.models import VmConfig

# What a dependant waits for: `started` (the process runs) or `ready` (VmWorker.ready).
Condition = Literal["started", "ready"]


def _path(index: int, name: str) -> str:
    from frameos.config.problems import json_path

    return json_path(("vms", index, "depends_on", name))


class Node(Protocol):
    """What the graph reads of a VM: a VmConfig, or a `RawNode` of a config that failed."""

    @property
    def name(self) -> str: ...
    @property
    def depends_on(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class RawNode:
    """`vms[i]` as written, for `check` when the models refuse the config (issue 13: the graph's
    problems are reported with the others). An entry with no string name is named "" (no VM
    can depend on it: "" is not a VM name)."""

    name: str
    depends_on: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, entry: Any) -> RawNode:
        if not isinstance(entry, dict):
            return cls("")
        name = entry.get("name")
        ons = entry.get("depends_on", entry.get("dependsOn"))
        if not isinstance(ons, dict):
            ons = {}
        from frameos.config.models import VM_NAME  # models import this module

        # a key that is no VM name has its problem from the models already
        ons = {on: c for on, c in ons.items() if re.fullmatch(VM_NAME, on)}
        return cls(name if isinstance(name, str) else "", ons)


def problems(vms: Sequence[Node]) -> list[tuple[str, str]]:
    """(JSON path, message) for every unknown name, self-dependency and cycle, in config order."""
    names = {vm.name: index for index, vm in enumerate(vms) if vm.name}
    out: list[tuple[str, str]] = []
    for index, vm in enumerate(vms):
        for on in vm.depends_on:
            if on == vm.name:
                out.append((_path(index, on), "a VM cannot depend on itself; remove this entry"))
            elif on not in names:
                close = difflib.get_close_matches(on, list(names), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "name one of the VMs in `vms`"
                known = ", ".join(sorted(names)) if len(names) <= 10 else f"{len(names)} VMs"
                out.append((_path(index, on), f"no VM is named {on!r}; {hint} (known: {known})"))
    for cycle in cycles(vms):
        first = cycle[0]
        out.append(
            (
                _path(names[first], cycle[1]),
                f"dependency cycle {' → '.join(cycle)}: none of them could ever launch; "
                "remove one of these dependencies",
            )
        )
    return out


def _edges(vms: Sequence[Node]) -> dict[str, list[str]]:
    """VM → the VMs it depends on that exist (unknown names and itself left out)."""
    names = {vm.name for vm in vms}
    return {vm.name: [on for on in vm.depends_on if on in names and on != vm.name] for vm in vms}


def cycles(vms: Sequence[Node]) -> list[list[str]]:
    """One cycle per back edge of a depth-first walk in config order, each as its members in
    order with the first repeated at the end (`[a, b, a]`)."""
    edges = _edges(vms)
    done: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root}
        stack = [iter(edges[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(edges[nxt]))
    return found


def levels(vms: Sequence[VmConfig]) -> list[list[str]]:
    """The VMs by level (config order within one): level 0 depends on nothing, each VM sits one
    level above its highest dependency. A VM on a cycle is in no level (the models refuse
    cycles, so a validated config places every VM)."""
    edges = _edges(vms)
    order = {name: index for index, name in enumerate(edges)}
    waiting_on = {name: len(set(ons)) for name, ons in edges.items()}
    after = dependants(vms)
    out: list[list[str]] = []
    current = [name for name, count in waiting_on.items() if count == 0]
    while current:
        out.append(current)
        following: list[str] = []
        for name in current:
            for dependant in after[name]:
                waiting_on[dependant] -= 1
                if waiting_on[dependant] == 0:
                    following.append(dependant)
        current = sorted(following, key=order.__getitem__)
    return out


def dependants(vms: Sequence[VmConfig]) -> dict[str, list[str]]:
    """VM → the VMs that depend on it (in config order)."""
    out: dict[str, list[str]] = {vm.name: [] for vm in vms}
    for vm, ons in _edges(vms).items():
        for on in dict.fromkeys(ons):
            out[on].append(vm)
    return out


def start_order(vms: Sequence[VmConfig]) -> list[str]:
    """`start level 1: db, x`, `start level 2: app (after db started)`, …; stop runs in
    reverse."""
    by_name = {vm.name: vm for vm in vms}
    lines = []
    for number, names in enumerate(levels(vms), 1):
        shown = []
        for name in names:
            after = by_name[name].depends_on
            waits = ", ".join(f"{on} {condition}" for on, condition in after.items())
            shown.append(f"{name} (after {waits})" if after else name)
        lines.append(f"start level {number}: {', '.join(shown)}")
    if len(lines) > 1:
        lines.append("stop runs in reverse order, level by level (independent VMs in parallel)")
    return lines
