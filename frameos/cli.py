"""The `frameos` command line. Parsers are built from commands.py; heavy imports stay lazy so
`check` and `contract` start fast (BARS B4). No path through here ends in a traceback for bad
input: every FrameosError becomes one clear message and an exit code.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frameos import __version__
from frameos.commands import COMMANDS, Flag
from frameos.errors import ConfigError, FrameosError, Problem


class _Parser(argparse.ArgumentParser):
    """Errors as `frameos: error: …` once, after the usage of the command that was given."""

    def error(self, message: str) -> Any:  # argparse's contract: never returns
        self.print_usage(sys.stderr)
        self.exit(2, f"frameos: error: {message}\n(see `{self.prog} --help`)\n")


class _TopParser(_Parser):
    """Flags a subcommand does not know are reported by that subcommand, with its usage
    (argparse leaves them to the top-level parser, which would print its own usage)."""

    commands: dict[str, _Parser]

    def parse_args(  # type: ignore[override]  # narrower than argparse's overloads, on purpose
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args)
        if extra:
            self.commands[parsed.command].error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser(only: str | None = None) -> _TopParser:
    """The whole command line; with `only` (a command's name), that command alone: argparse
    builds every parser it is given at once (~10 ms for all of them before `run` can start)."""
    parser = _TopParser(prog="frameos", description="A supervisor for device hosts, on Trio.")
    parser.add_argument("--version", action="version", version=f"frameos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    parser.commands = {}
    for cmd in COMMANDS:
        if only is not None and cmd.name != only:
            continue
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for flag in cmd.flags:
            _add_flag(p, flag)
        parser.commands[cmd.name] = p
    return parser


def _add_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    if flag.switch:
        parser.add_argument(flag.name, action="store_true", help=flag.help)
    elif flag.positional and flag.required:
        parser.add_argument(flag.name, help=flag.help, metavar=flag.metavar)
    elif flag.positional:
        parser.add_argument(
            flag.name, nargs="?", default=flag.default, help=flag.help, metavar=flag.metavar
        )
    else:
        parser.add_argument(
            flag.name,
            metavar=flag.metavar,
            choices=flag.choices,
            default=flag.default,
            type=flag.kind,
            help=flag.help,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `frameos` console script; returns the exit status."""
    # Stop signals wait (pending) until `run` handles them; other commands get them back now.
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGHUP, signal.SIGTERM, signal.SIGINT))
    # No cyclic collection while starting: the imports (pydantic's schemas above all) allocate
    # tens of thousands of objects that live as long as the process; ~100 collections passed
    # over them for ~2,600 freed, ~5 % of the CPU before `run` launches a VM (B6). `run` and
    # `check` collect again once their imports are done (`_started`), the other commands at
    # once (some follow a stream for hours).
    gc.disable()
    try:
        args = build_parser(_command_named(sys.argv[1:] if argv is None else argv)).parse_args(argv)
        if args.command != "run":
            signal.pthread_sigmask(
                signal.SIG_UNBLOCK, (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
            )
        if args.command not in ("run", "check"):
            _started()
        return _dispatch(args)
    finally:
        _started()


def _started() -> None:
    """Start-up is over: cyclic garbage is collected again (see `main`)."""
    gc.enable()


def _dispatch(args: argparse.Namespace) -> int:
    try:
        handler = globals()[f"cmd_{args.command}"]
        status: int = handler(args)
        return status
    except FrameosError as exc:
        _report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed by a reader such as `head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _command_named(argv: Sequence[str]) -> str | None:
    """The command `argv` starts with, when it is one. None otherwise (`--help`, a typo): the
    whole parser then prints the help or says what is wrong."""
    first = argv[0] if argv else None
    return first if any(cmd.name == first for cmd in COMMANDS) else None


def _report(exc: FrameosError) -> None:
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        print("frameos: configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
    else:
        print(f"frameos: {exc}", file=sys.stderr)


# --- commands ---------------------------------------------------------------------------------


def cmd_contract(args: argparse.Namespace) -> int:
    # contract.json is generated from the event models and kept equal to them by
    # tests/test_contract.py; printing it avoids building every schema at start-up (BARS B4).
    sys.stdout.write((Path(__file__).parent / "contract.json").read_text(encoding="utf-8"))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from frameos import events as ev
    from frameos.config import event_log_path, find_config, runnable
    from frameos.emit import SyncEmitter, choose_output

    output = choose_output(args.output)
    config_path: Path | None = None
    try:
        config_path = find_config(args.config, os.environ)
        # the models', the graph's and this host's problems together, then the manifests'
        # (issue 13: every problem at once)
        found: list[Problem] = []
        try:
            config = runnable.check_config(config_path, os.environ)
        except ConfigError as exc:
            found += exc.problems
        try:
            apps, scenes = _load_manifests(args)
        except ConfigError as exc:
            found += exc.problems
        if found:
            raise ConfigError(found)
    except ConfigError as exc:
        emitter = SyncEmitter(output, Path(args.event_log) if args.event_log else None)
        emitter.emit(ev.RuntimeCheckFailed(error=str(exc), problems=[str(p) for p in exc.problems]))
        emitter.close()
        if output == "json":
            _report(exc)
        return 1
    _started()
    explicit_log = args.event_log or config.log_to_file
    emitter = SyncEmitter(output, event_log_path(config, args.event_log) if explicit_log else None)
    emitter.emit(
        ev.RuntimeCheckOk(
            config=str(config_path),
            vms=len(config.vms),
            apps_loaded=len(apps),
            scenes_loaded=len(scenes),
        )
    )
    if args.plan:
        from frameos.config.graph import start_order
        from frameos.workers.plan import plans

        for planned in plans(config):
            emitter.emit(planned)
        for line in start_order(config.vms):
            emitter.emit(ev.Message(text=line))
    emitter.close()
    return 0


def _load_manifests(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Load `--apps` and `--scenes`, reporting the problems of both together."""
    problems = []
    apps: list[Any] = []
    scenes: list[Any] = []
    if not (args.apps or args.scenes):
        return apps, scenes  # and no need to build the manifest models
    from frameos.manifests import load_apps, load_scenes

    try:
        apps = load_apps(Path(args.apps)) if args.apps else []
    except ConfigError as exc:
        problems += exc.problems
    try:
        scenes = load_scenes(Path(args.scenes)) if args.scenes else []
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return apps, scenes


def cmd_run(args: argparse.Namespace) -> int:
    from frameos.config import find_config, load_config
    from frameos.emit import choose_output

    if args.demo and args.config:
        from frameos.errors import UsageError

        raise UsageError("--demo and --config exclude each other: the demo has its own config")
    if args.demo:
        from frameos.workers.demo import demo_config

        config, source = demo_config(), "demo"
    else:
        path = find_config(args.config, os.environ)
        config, source = load_config(path), str(path)
    apps, scenes = _load_manifests(args)

    from frameos.supervisor import Options, run_blocking

    _started()  # the imports are done and the config is valid; the launches come next

    options = Options(
        config=config,
        config_source=source,
        config_path=None if args.demo else Path(source),
        output=choose_output(args.output),
        verbose=args.verbose,
        event_log=args.event_log,
        apps_loaded=len(apps),
        scenes_loaded=len(scenes),
    )
    status = run_blocking(options)
    # Every child is gone and the event log is closed: skip the interpreter's teardown of the
    # server stack (~170 ms), so `systemctl stop` takes as long as the stop ladder and no more.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def cmd_parity(args: argparse.Namespace) -> int:
    from frameos.parity import main as parity_main

    return parity_main(args)


# --- client commands (SPEC §10): they talk to a running instance ----------------------------


def _client(args: argparse.Namespace) -> Any:
    """The instance named by --url/--token-file/--config (frameos.client.Target)."""
    from frameos.client.discover import discover

    return discover(config=args.config, url=args.url, token_file=args.token_file, demo=args.demo)


def _trio_run(fn: Any, *args: Any) -> int:
    """trio.run(fn, *args), with a FrameosError raised inside a nursery reported as itself."""
    import trio

    try:
        status: int = trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None
    return status


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a group (of groups) holds, or None when it holds several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


def _control(args: argparse.Namespace, op: str, vm: str | None) -> int:
    from frameos.client.control import control
    from frameos.client.output import Printer

    return _trio_run(control, _client(args), op, vm, Printer(json=args.json))


def cmd_start(args: argparse.Namespace) -> int:
    return _control(args, "start", args.vm)


def cmd_stop(args: argparse.Namespace) -> int:
    return _control(args, "stop", args.vm)


def cmd_restart(args: argparse.Namespace) -> int:
    return _control(args, "restart", args.vm)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    return _control(args, "bootstrap", args.vm)


def cmd_clean(args: argparse.Namespace) -> int:
    return _control(args, "clean", args.vm)


def cmd_reload(args: argparse.Namespace) -> int:
    return _control(args, "reload", None)


def cmd_logs(args: argparse.Namespace) -> int:
    from frameos.client.logs import logs
    from frameos.errors import UsageError

    if args.lines < 0:
        raise UsageError(f"--lines must be 0 or more, found {args.lines}")
    return _trio_run(
        functools.partial(logs, lines=args.lines, follow=args.follow), _client(args), args.vm
    )


def cmd_events(args: argparse.Namespace) -> int:
    from frameos.client import history
    from frameos.client.output import Printer
    from frameos.errors import UsageError

    if args.since < 0:
        raise UsageError(f"--since must be a seq (0 or more), found {args.since}")
    broker = getattr(args, "from")
    if broker is not None:
        return _events_from_broker(args, broker)
    if args.host is not None:
        raise UsageError("--host needs --from nats://…")
    handle = history.matcher(args.vm, Printer(json=args.json))
    if args.url is not None:
        if args.event_log:
            raise UsageError(
                "--event-log and --url exclude each other: pick the file or the instance"
            )
        return _trio_run(
            functools.partial(history.from_instance, follow=args.follow),
            _client(args),
            args.since,
            handle,
        )
    path, keep = _event_log(args)
    if not args.follow:
        history.require_log(path)
    return _trio_run(
        functools.partial(history.from_file, follow=args.follow), path, keep, args.since, handle
    )


def _events_from_broker(args: argparse.Namespace, broker: str) -> int:
    """`events --from nats://…`: every forwarding host's events (SPEC §12)."""
    import asyncio

    from frameos.errors import UsageError
    from frameos.forward.follow import follow, show_with_host

    if args.url is not None or args.event_log:
        raise UsageError("--from excludes --url and --event-log: pick the broker, or one host")
    if not broker.startswith(("nats://", "tls://")):
        raise UsageError(f"--from must be a nats:// or tls:// URL, found {broker!r}")
    show = show_with_host(json=args.json)
    if args.vm is not None:
        inner, vm = show, args.vm

        def show(host: str, envelope: Any) -> None:
            if envelope.fields().get("vm") == vm:
                inner(host, envelope)

    try:
        return asyncio.run(
            follow(broker, show, host=args.host, since=args.since, follow=args.follow)
        )
    except KeyboardInterrupt:
        return 130


def _where(args: argparse.Namespace) -> argparse.Namespace:
    """`watch URL` and `status URL`: the positional URL is --url."""
    from frameos.errors import UsageError

    if args.where is not None:
        if args.url is not None and args.url != args.where:
            raise UsageError("give the URL once: as the argument or as --url, not both")
        args.url = args.where
    return args


def cmd_watch(args: argparse.Namespace) -> int:
    from frameos.watch.app import watch

    broker = getattr(args, "from")
    if broker is not None:
        return _watch_fleet(args, broker)
    return _trio_run(watch, _client(_where(args)))


def _watch_fleet(args: argparse.Namespace, broker: str) -> int:
    """`watch --from nats://…`: one row per forwarding host (SPEC §12)."""
    from frameos.errors import UsageError
    from frameos.watch.fleet import host_opener, watch_fleet

    if args.where is not None or args.url is not None or args.demo:
        raise UsageError("--from excludes a URL and --demo: pick the broker, or one host")
    if not broker.startswith(("nats://", "tls://")):
        raise UsageError(f"--from must be a nats:// or tls:// URL, found {broker!r}")
    opener = host_opener(args.config, args.token_file)
    try:
        return _trio_run(watch_fleet, broker, opener)
    except KeyboardInterrupt:
        return 130


def cmd_status(args: argparse.Namespace) -> int:
    from frameos.watch.status import status

    return _trio_run(functools.partial(status, json=args.json), _client(_where(args)))


def _event_log(args: argparse.Namespace) -> tuple[Path, int]:
    """The log file `run` writes with this config (or --event-log), and its rotation count."""
    from frameos.client.discover import load_client_config
    from frameos.config import EventLogConfig, event_log_path

    if args.event_log:
        keep = EventLogConfig().keep
        return Path(args.event_log).absolute(), keep
    if args.demo:
        from frameos.workers.demo import demo_config

        config = demo_config(os.environ)
    else:
        config, _ = load_client_config(args.config, os.environ)
    return event_log_path(config, None), config.event_log.keep
