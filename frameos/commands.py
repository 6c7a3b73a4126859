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
    required: bool = False  # a positional that must be given


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

# The client commands (SPEC §10): how they find the instance, and what they print.
URL = Flag(
    "--url",
    "a running instance, e.g. http://127.0.0.1:8787 (else frame_host:frame_port of the config)",
    "URL",
)
TOKEN_FILE = Flag(
    "--token-file",
    "file holding the API token (else auth.token_file, the systemd credential frameos-token, "
    "or state_dir/api-token)",
    "PATH",
)
JSON = Flag(
    "--json", "print the events as JSON lines (the envelopes) instead of human lines", switch=True
)
DEMO = Flag(
    "--demo", "the instance `frameos run --demo` started (its port, state and token)", switch=True
)
CLIENT = (CONFIG, DEMO, URL, TOKEN_FILE, JSON)
WHERE = Flag("where", "the instance's URL (the same as --url)", "URL", positional=True)
VM = Flag("vm", "the VM's name (as in the config's vms)", "VM", positional=True, required=True)
CONTROL = {
    "start": "start a VM (also one that gave up, or was stopped by an operator)",
    "stop": "stop a VM through its shutdown ladder; it stays stopped until `frameos start`",
    "restart": "restart a VM through its shutdown ladder",
    "bootstrap": "run a VM's bootstrap pipeline again",
    "clean": "remove a stopped VM's overlay and bootstrap stamps",
}
CONTROL_TAIL = "; follows the run to its end: exit 0 succeeded, 1 failed, 2 unreachable/refused"

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
                "--plan",
                "also print bootstrap.planned for every VM and the start order (changes nothing)",
                switch=True,
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
    *(Command(op, help + CONTROL_TAIL, (VM, *CLIENT)) for op, help in CONTROL.items()),
    Command(
        "reload",
        "re-read the config and apply it VM by VM (SPEC §5.1), as SIGHUP does" + CONTROL_TAIL,
        CLIENT,
    ),
    Command(
        "logs",
        "print a VM's output (stdout and stderr of its process)",
        (
            VM,
            Flag("--follow", "keep printing output as it is written (until Ctrl-C)", switch=True),
            Flag("--lines", "how many of the last lines to print first", "N", default=50, kind=int),
            CONFIG,
            DEMO,
            URL,
            TOKEN_FILE,
        ),
    ),
    Command(
        "events",
        "print events from the event log file, or from a running instance with --url",
        (
            Flag(
                "--since",
                "only events after this seq (default 0: every event retained)",
                "SEQ",
                default=0,
                kind=int,
            ),
            Flag("--follow", "keep printing new events as they come (until Ctrl-C)", switch=True),
            Flag("--vm", "only the events of this VM", "NAME"),
            Flag(
                "--from",
                "the NATS server the hosts forward to (nats://HOST:PORT): every host's events",
                "URL",
            ),
            Flag("--host", "with --from: only this host's events", "HOST"),
            EVENT_LOG,
            *CLIENT,
        ),
    ),
    Command(
        "watch",
        "the interactive terminal view of a running instance (keys: ? for help, q quits and "
        "leaves it running); plain lines, one per event, when stdout is not a terminal",
        (
            WHERE,
            Flag(
                "--from",
                "the NATS server the hosts forward to (nats://HOST:PORT): one row per host; "
                "enter opens a host's own view",
                "URL",
            ),
            CONFIG,
            DEMO,
            URL,
            TOKEN_FILE,
        ),
    ),
    Command(
        "status",
        "one table of a running instance and its VMs; exit 0 ready, 1 not ready, 2 unreachable",
        (
            WHERE,
            CONFIG,
            DEMO,
            URL,
            TOKEN_FILE,
            Flag("--json", "print /healthz, /readyz and /v1/vms as one JSON object", switch=True),
        ),
    ),
)


def emitted_by(command: str) -> tuple[type[Event], ...]:
    """The events `command` can emit. The client commands list the events of a run they print
    (emitted by the instance, on their behalf). Declared events nothing emits yet (worker.*:
    the external workers') are listed under no command until one emits them."""
    from frameos import events as ev

    commands = (ev.CommandAccepted, ev.CommandCompleted, ev.CommandFailed, ev.CommandCanceled)
    start = (
        ev.VmWaiting,
        ev.VmOverlayPrepared,
        ev.VmLaunched,
        ev.VmReady,
        ev.BootstrapStarted,
        ev.BootstrapStep,
        ev.BootstrapCompleted,
        ev.BootstrapFailed,
        ev.Message,
    )
    stop = (
        ev.VmShutdownRequested,
        ev.VmCooperativeAttempted,
        ev.VmCooperativeSucceeded,
        ev.VmCooperativeTimedOut,
        ev.VmShutdownEscalated,
        ev.VmShutdownComplete,
        ev.VmExited,
        ev.VmLayerDiscarded,
        ev.Message,
    )
    bootstrap = start[3:]
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
                ev.VmWaiting,
                ev.VmShutdownRequested,
                ev.VmCooperativeAttempted,
                ev.VmCooperativeSucceeded,
                ev.VmCooperativeTimedOut,
                ev.VmShutdownEscalated,
                ev.VmShutdownComplete,
                ev.VmReady,
                ev.VmHealth,
                ev.VmStatus,
                ev.BootstrapStarted,
                ev.BootstrapStep,
                ev.BootstrapCompleted,
                ev.BootstrapFailed,
                ev.CleanupProgress,
                *commands,
                ev.CommandRejected,
                ev.Summary,
            )
        case "start":
            return (*commands, *start)
        case "stop":
            return (*commands, *stop)
        case "restart":
            return (*commands, *stop[:-1], *start)
        case "bootstrap":
            return (*commands, *bootstrap)
        case "clean":
            return (*commands, ev.CleanupProgress, ev.VmLayerDiscarded, ev.Message)
        case "reload":
            return (*commands, ev.RuntimeReload, *stop[:-1], *start)
        case "check":
            return (ev.RuntimeCheckOk, ev.RuntimeCheckFailed, ev.BootstrapPlanned, ev.Message)
        case "parity":
            return (ev.RuntimeParityOk, ev.RuntimeParityFailed)
    return ()


def command(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)
