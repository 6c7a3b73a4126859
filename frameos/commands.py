"""The command line, declared once: `cli` builds argparse from it, `contract` prints it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from frameos.events import Event


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

    @property
    def events(self) -> tuple[type[Event], ...]:
        """The event models this command can emit (imports them: argparse does not need this)."""
        return emitted_by(self.name)


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
    ),
)


def emitted_by(command: str) -> tuple[type[Event], ...]:
    """The events `command` can emit. Declared events nothing emits yet (worker.*: the control
    API's) are listed under no command until one emits them."""
    from frameos import events as ev

    match command:
        case "run":
            return (
                ev.RuntimeStart,
                ev.RuntimeReady,
                ev.RuntimeHeartbeat,
                ev.RuntimeMetricsTick,
                ev.RuntimeStopping,
                ev.RuntimeStop,
                ev.RuntimeReload,
                ev.Message,
                ev.VmOverlayPrepared,
                ev.VmLayerDiscarded,
                ev.VmLaunched,
                ev.VmExited,
                ev.VmRestartScheduled,
                ev.VmGaveUp,
                ev.VmShutdownRequested,
                ev.VmCooperativeAttempted,
                ev.VmCooperativeSucceeded,
                ev.VmCooperativeTimedOut,
                ev.VmShutdownEscalated,
                ev.VmShutdownComplete,
                ev.BootstrapStarted,
                ev.BootstrapStep,
                ev.BootstrapCompleted,
                ev.BootstrapFailed,
                ev.CleanupProgress,
                ev.CommandAccepted,
                ev.CommandRejected,
                ev.CommandCompleted,
                ev.CommandFailed,
                ev.CommandCanceled,
                ev.Summary,
            )
        case "check":
            return (ev.RuntimeCheckOk, ev.RuntimeCheckFailed, ev.BootstrapPlanned, ev.Message)
        case "parity":
            return (ev.RuntimeParityOk, ev.RuntimeParityFailed)
    return ()


def command(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)
