"""What `frameos check` looks at beyond the models: can this config run on this host?

    argv[0]    of each VM's command, its cooperative stop command, its bootstrap steps and its
               `exec` probes: on
               the PATH (the VM's `env.PATH` when set, else frameos's), or, with a `/`, a file
               there (relative to the VM's `cwd`); either way executable by this user
    cwd        exists and is a directory
    base_image exists and is a readable file
    overlay_dir its parent exists (frameos makes the directory itself)

Each problem names its JSON path and the fix; all of them at once: `check_config` reports the
models' problems, the `depends_on` graph's and this host's together, even when the models refuse
the config (each `vms[i]` is then validated alone, and the host checks run on what validates).
Placeholders (`{qmp_socket}`, `{overlay}`, …) in argv[0] are not checked as paths. `run` does
not refuse these (a disk may be mounted later, a binary installed; the VM's launch then fails
with the same words and the other VMs run): `check` says them before a deploy turns them into a
restart loop.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from frameos.config import graph
from frameos.config.load import read_json, resolve, validate_config
from frameos.config.models import FrameConfig, VmConfig
from frameos.errors import ConfigError, Problem

PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
# Names listed per PATH directory for a "did you mean" (a bound: B4 keeps `check` fast).
MAX_LISTED = 20_000


def check_config(path: Path, env: Mapping[str, str]) -> FrameConfig:
    """The config at `path`, loaded as `run` loads it, or a ConfigError with every problem:
    the models', the `depends_on` graph's and this host's together (in that order, each once).

    A file that cannot be read or parsed is the one problem there is. When the models refuse
    the config, each `vms[i]` is validated alone; one that fails is validated again without the
    keys that failed (the host checks then skip its programs if `env`, `cwd` or `command` was
    among them), and the host checks run on every VM that validates either way. The graph is
    checked on the `depends_on` maps as written."""
    source = str(path)
    data = read_json(path)
    try:
        config = validate_config(data, source)
    except ConfigError as exc:
        found = list(exc.problems)
        raw = data.get("vms") if isinstance(data, dict) else None
        if isinstance(raw, list):
            nodes = [graph.RawNode.of(entry) for entry in raw]
            found += [Problem(source, at, message) for at, message in graph.problems(nodes)]
            for index, entry in enumerate(raw):
                alone = _vm_alone(entry)
                if alone is not None:
                    vm, programs = alone
                    found += _vm_problems(vm, f"vms[{index}]", source, env, programs=programs)
        raise ConfigError(list(dict.fromkeys(found))) from None
    found = []
    try:
        resolved = resolve(config, source, env)
    except ConfigError as exc:
        found, resolved = list(exc.problems), config
    found += problems(config, source, env)
    if found:
        raise ConfigError(list(dict.fromkeys(found)))
    return resolved


# Keys of `vms[i]` without which the host cannot check its programs as they will run.
_PROGRAM_KEYS = {"command", "env", "cwd"}


def _vm_alone(entry: Any) -> tuple[VmConfig, bool] | None:
    """`entry` as a VmConfig and whether its programs can be checked; or None.

    A round that fails drops what the model refused: first the key under a top-level object
    (`health.readiness`, so `health.liveness` is still checked), then the top-level key itself;
    `name` and `command`, which are required, get stand-ins (a stand-in command is not
    checked, nor are the programs of a VM whose `command`, `env` or `cwd` failed)."""
    if not isinstance(entry, dict):
        return None
    programs = True
    for depth in (2, 1, 1):
        try:
            return VmConfig.model_validate(entry), programs
        except ValidationError as err:
            failed = [tuple(item["loc"]) for item in err.errors() if item["loc"]]
        if not failed:
            return None
        entry = dict(entry)
        for loc in failed:
            top = loc[0]
            if top in _PROGRAM_KEYS:
                programs = False
            inner = entry.get(top)
            if depth == 2 and len(loc) > 1 and isinstance(inner, dict) and loc[1] in inner:
                entry[top] = {k: v for k, v in inner.items() if k != loc[1]}
            else:
                entry.pop(top, None)
        entry.setdefault("name", "unchecked")
        if not programs:
            entry["command"] = ["{unchecked}"]
        entry.setdefault("command", ["{unchecked}"])
    return None


def problems(config: FrameConfig, source: str, env: Mapping[str, str]) -> list[Problem]:
    """Every reason a VM of `config` could not launch on this host."""
    out: list[Problem] = []
    for index, vm in enumerate(config.vms):
        out += _vm_problems(vm, f"vms[{index}]", source, env)
    return out


def _vm_problems(
    vm: VmConfig, at: str, source: str, env: Mapping[str, str], programs: bool = True
) -> list[Problem]:
    out: list[Problem] = []
    cwd_ok = True
    if vm.cwd is not None:
        why = _not_a(vm.cwd, stat.S_ISDIR, "directory")
        if why:
            cwd_ok = False
            out.append(Problem(source, f"{at}.cwd", f"{why}; create it or fix `cwd`"))
    if vm.base_image is not None:
        why = _not_a(vm.base_image, stat.S_ISREG, "file")
        if why is None and not os.access(vm.base_image, os.R_OK):
            why = f"{vm.base_image} cannot be read by this user"
        if why:
            out.append(
                Problem(source, f"{at}.base_image", f"{why}; point it at the disk image to use")
            )
    if vm.overlay_dir is not None:
        parent = vm.overlay_dir.parent
        if not parent.is_dir():
            out.append(
                Problem(
                    source,
                    f"{at}.overlay_dir",
                    f"its parent {parent} does not exist (frameos creates {vm.overlay_dir.name} "
                    f"inside it, not above it); create {parent} or choose another overlay_dir",
                )
            )
    search = vm.env.get("PATH", env.get("PATH", os.defpath))
    argvs = [(f"{at}.command[0]", vm.command)]
    if vm.cooperative.command:
        argvs.append((f"{at}.cooperative.command[0]", vm.cooperative.command))
    for number, step in enumerate(vm.bootstrap.steps if vm.bootstrap else []):
        argvs.append((f"{at}.bootstrap.steps[{number}].command[0]", step.command))
    for kind in ("readiness", "liveness"):
        probe = getattr(vm.health, kind) if vm.health is not None else None
        if probe is not None and probe.exec is not None:
            argvs.append((f"{at}.health.{kind}.exec.command[0]", probe.exec.command))
    for where, argv in argvs if programs else []:
        program = argv[0]
        if PLACEHOLDER.search(program):
            continue  # filled in at launch
        why = _program_problem(program, search, vm.cwd if cwd_ok else None)
        if why:
            out.append(Problem(source, where, why))
    return out


def _not_a(path: Path, test: Callable[[int], bool], kind: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be reached ({exc.strerror or exc})"
    if not test(mode):
        return f"{path} is not a {kind}"
    return None


def _program_problem(program: str, search: str, cwd: Path | None) -> str | None:
    """Why `program` (argv[0]) cannot be executed, or None."""
    if "/" in program:
        path = Path(program)
        if not path.is_absolute():
            path = (cwd or Path.cwd()) / path
        if not path.exists():
            base = f" (relative to {cwd or Path.cwd()})" if not Path(program).is_absolute() else ""
            return f"{program!r} does not exist{base}; install it or fix the path"
        return _executable(path, program)
    dirs = [d for d in search.split(os.pathsep) if d]
    for directory in dirs:
        candidate = Path(directory) / program
        if candidate.exists():
            return _executable(candidate, program)
    close = _close_names(program, dirs)
    hint = f"did you mean {close!r}? " if close else ""
    shown = search if len(search) <= 200 else search[:197] + "..."
    return (
        f"{program!r} is not on the PATH ({shown}); {hint}install it, fix the name, or give "
        "its full path"
    )


def _executable(path: Path, program: str) -> str | None:
    if path.is_dir():
        return f"{program!r} is a directory ({path}), not a program; name the program"
    if not os.access(path, os.X_OK):
        return f"{program!r} ({path}) is not executable by this user; chmod +x it or fix the path"
    return None


def _close_names(program: str, dirs: list[str]) -> str | None:
    names: list[str] = []
    for directory in dirs:
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    names.append(entry.name)
                    if len(names) >= MAX_LISTED:
                        break
        except OSError:
            continue
        if len(names) >= MAX_LISTED:
            break
    close = difflib.get_close_matches(program, names, n=1, cutoff=0.75)
    return close[0] if close else None
