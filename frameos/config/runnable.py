"""What `frameos check` looks at beyond the models: can this config run on this host?

    argv[0]    of each VM's command, its cooperative stop command, its bootstrap steps and its
               `exec` probes: on
               the PATH (the VM's `env.PATH` when set, else frameos's), or, with a `/`, a file
               there (relative to the VM's `cwd`); either way executable by this user
    cwd        exists and is a directory
    base_image exists and is a readable file
    overlay_dir its parent exists (frameos makes the directory itself)

Each problem names its JSON path and the fix; all of them at once. Placeholders (`{qmp_socket}`,
`{overlay}`, …) in argv[0] are not checked as paths. `run` does not refuse these (a disk may be
mounted later, a binary installed; the VM's launch then fails with the same words and the other
VMs run): `check` says them before a deploy turns them into a restart loop.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from frameos.config.models import FrameConfig, VmConfig
from frameos.errors import Problem

PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
# Names listed per PATH directory for a "did you mean" (a bound: B4 keeps `check` fast).
MAX_LISTED = 20_000


def problems(config: FrameConfig, source: str, env: Mapping[str, str]) -> list[Problem]:
    """Every reason a VM of `config` could not launch on this host."""
    out: list[Problem] = []
    for index, vm in enumerate(config.vms):
        out += _vm_problems(vm, f"vms[{index}]", source, env)
    return out


def _vm_problems(vm: VmConfig, at: str, source: str, env: Mapping[str, str]) -> list[Problem]:
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
    for where, argv in argvs:
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
