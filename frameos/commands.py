"""The command line, declared once: `cli` builds argparse from it, `contract` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Flag:
    """One command-line flag."""

    name: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    switch: bool = False  # a store_true flag
    default: str | float | None = None
    kind: type = str
    positional: bool = False


@dataclass(frozen=True)
class Command:
    """One subcommand: its flags and the events it may emit."""

    name: str
    help: str
    flags: tuple[Flag, ...] = ()
    events: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())


CONFIG = Flag("--config", "config file (else $FRAMEOS_CONFIG, else ./frame.json)", "PATH")
SCENES = Flag("--scenes", "scene manifest to validate and load", "PATH")
APPS = Flag("--apps", "app manifest to validate and load", "PATH")
EVENT_LOG = Flag("--event-log", "event log path (overrides log_to_file and event_log.path)", "PATH")
OUTPUT = Flag(
    "--output",
    "json lines, rich human lines, or auto (human on a terminal)",
    choices=("auto", "json", "human"),
    default="auto",
)

RUN_EVENTS = (
    "runtime:start",
    "runtime:ready",
    "runtime:heartbeat",
    "runtime:metrics_tick",
    "runtime:stopping",
    "runtime:stop",
    "runtime:reload",
    "message",
    "vm.overlay_prepared",
    "vm.layer_discarded",
    "vm.launched",
    "vm.exited",
    "vm.restart_scheduled",
    "vm.gave_up",
    "vm.shutdown_requested",
    "vm.cooperative_attempted",
    "vm.cooperative_succeeded",
    "vm.cooperative_timed_out",
    "vm.shutdown_escalated",
    "vm.shutdown_complete",
    "bootstrap.started",
    "bootstrap.step",
    "bootstrap.completed",
    "bootstrap.failed",
    "cleanup.progress",
    "command.accepted",
    "command.rejected",
    "command.completed",
    "command.failed",
    "worker.registered",
    "worker.status",
    "worker.stale",
    "summary",
)

COMMANDS: tuple[Command, ...] = (
    Command(
        "run",
        "run the supervisor until SIGTERM/SIGINT (SIGHUP reloads the config)",
        (
            CONFIG,
            SCENES,
            APPS,
            EVENT_LOG,
            OUTPUT,
            Flag(
                "--demo", "use the embedded demo config (no root, no qemu, no network)", switch=True
            ),
            Flag("--verbose", "show debug events (heartbeats) in human output", switch=True),
        ),
        RUN_EVENTS,
    ),
    Command(
        "check",
        "validate config and manifests, print the result, exit 0 or 1",
        (
            CONFIG,
            SCENES,
            APPS,
            EVENT_LOG,
            OUTPUT,
            Flag(
                "--plan", "also print bootstrap.planned for every VM (changes nothing)", switch=True
            ),
        ),
        ("runtime:check_ok", "runtime:check_failed", "bootstrap.planned", "message"),
    ),
    Command("contract", "print the machine-readable command and event contract (JSON)"),
    Command(
        "parity",
        "check a renderer contract against a driver contract (SPEC §8)",
        (
            Flag("--renderer-contract", "renderer contract JSON file", "PATH"),
            Flag("--renderer-probe-cmd", "shell command printing the renderer contract", "CMD"),
            Flag("--driver-contract", "driver contract JSON file", "PATH"),
            Flag("--driver-probe-cmd", "shell command printing the driver contract", "CMD"),
            Flag(
                "--probe-timeout",
                "seconds a probe command may take",
                "SECONDS",
                default=10.0,
                kind=float,
            ),
            EVENT_LOG,
            OUTPUT,
        ),
        ("runtime:parity_ok", "runtime:parity_failed"),
    ),
)


def command(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)
