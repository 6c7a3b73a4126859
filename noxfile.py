"""Developer and CI sessions. `nox -s tests` is the whole test suite (what .ci/run runs)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
# The interpreter nox runs with, if it is one pyproject allows; CI and laptops have one Python.
PYTHON = None
# `[tool.coverage.run] patch` (subprocess, _exit) appeared in coverage 7.10
COVERAGE = "coverage[toml]>=7.10"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite: unit, end-to-end, QEMU and systemd tests (the last two skip on a
    laptop without them and fail under CI=true), with branch coverage of the test process and
    of every `frameos` process the e2e tests start (pyproject's [tool.coverage.run]: `patch`
    makes the children measure themselves, `parallel` gives each its data file)."""
    session.install("-e", ".[test]", COVERAGE)
    # One absolute data file prefix, whatever the cwd a test gives its subprocess, in a
    # directory that a subprocess which dropped root (tests/test_config.py) can write too.
    data = Path(".nox", "coverage").resolve()
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o1777)
    session.env["COVERAGE_FILE"] = str(data / ".coverage")
    session.run("coverage", "erase")
    # One worker per core; a test file stays on one worker (the systemd harness boots once
    # per module). Under 5 minutes on 2 cores instead of ~8 serially.
    args = session.posargs or ["--numprocesses=auto", "--dist=loadfile"]
    session.run("coverage", "run", "-m", "pytest", *args)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report", "--skip-covered", "--sort=cover")


@nox.session(python=PYTHON, default=False)
def chaos(session: nox.Session) -> None:
    """R7 faults (bench/chaos.py): SIGKILLs under load, a full disk, 2,000 held connections, a
    reload that blocks. JSON lines; fails when an invariant breaks. The disk part needs root
    (it mounts a tmpfs) and says so when skipped. `-- --quick` runs 5 SIGKILL rounds."""
    session.install("-e", ".")
    session.run("python", "bench/chaos.py", *session.posargs)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """Only the tests with real processes: frameos, QEMU, the real systemd."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "e2e or qemu or systemd", *session.posargs)


@nox.session(python=PYTHON)
def schemathesis(session: nox.Session) -> None:
    """schemathesis against the real `frameos run` (its /v1/openapi.json, with a token): no
    server error, every response conforms to the document. ~1 minute; `-- --max-examples N`."""
    session.install("-e", ".[schemathesis]")
    session.run("python", ".ci/schemathesis.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "frameos", "tests", "bench", "noxfile.py")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    session.install("-e", ".", "mypy")
    session.run("mypy", "--strict", "frameos")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """`frameos run --demo`: two simulated VMs and a bootstrap, no root, no qemu. Ctrl-C stops."""
    session.install("-e", ".")
    # Ctrl-C reaches frameos directly; give its stop ladder time (the demo bounds it at 15 s)
    # before nox would send its own SIGTERM, which frameos would take as "force the stop".
    session.run("frameos", "run", "--demo", *session.posargs, interrupt_timeout=20)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The bars of shared/BARS.md, with peers measured in the same run (JSON lines)."""
    session.install("-e", ".", "websockets", "supervisor", "circus")
    session.run("python", "bench/run_all.py", *session.posargs)


@nox.session(python=PYTHON, default=False)
def docs(session: nox.Session) -> None:
    """Regenerate docs/events.md and the contract golden file from the event models, and the
    SVG screenshots of `frameos watch` (docs/watch.svg, docs/watch-detail.svg) from a scripted
    session (frameos/watch/screenshots.py)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_contract.py", env={"FRAMEOS_UPDATE_GOLDEN": "1"})
    session.run("python", "-m", "frameos.watch.screenshots", "docs")
