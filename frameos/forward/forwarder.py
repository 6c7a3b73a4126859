"""The forwarder: a sink that sends every logged event to NATS JetStream, in seq order.

The sending happens in a child process, the sender (sender.py): the event log is the hand-over,
so the NATS client's CPU never competes with the event loop for the GIL. This side owns the
sender's lifetime and speaks to it through two pipes:

- its own bounded bus subscription only tells the newest logged seq (a full subscription drops;
  nothing is lost: the sender reads the log); each new head is written to the sender's stdin
  without waiting (a full pipe already holds a wake-up);
- the sender's reports (stdout) keep `acked`, `forwarded` and `connected` true and become the
  `message` events: a broker outage is one warn, then one info when it is back.

The sender runs in its own process group (`start_new_session`: a terminal's ^C reaches frameos
only). It is restarted with backoff when it exits unexpectedly; at the end of the run, once the
bus closed, its stdin is closed: it forwards what the log holds (at most `DRAIN_S`), saves
its cursor and exits; past `STOP_S` the group is killed. When frameos dies, the sender sees the
end of its stdin with another parent and exits at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from pathlib import Path

import orjson
import trio

import frameos
from frameos.bus import Bus
from frameos.config.models import ForwardConfig
from frameos.events import Message, Severity
from frameos.forward import cursor
from frameos.workers.child import SPAWN_ERRORS, OwnChild, kill_group

DEPTH = 64  # batches: only the newest seq matters, so a small queue is plenty
RESTART_FIRST_S, RESTART_MAX_S = 0.5, 10.0
STABLE_S = 30.0  # a sender that ran this long starts the backoff afresh
DRAIN_S = 3.0  # at the end: how long the sender goes on forwarding what the log holds
STOP_S = DRAIN_S + 2.0  # then its group is killed
KILL_S = 2.0
LAST_WORDS = 300  # characters of the sender's last non-report line kept for its exit message
SEVERITIES: dict[str, Severity] = {"error": "error", "warn": "warn", "info": "info"}


def host_name(configured: str | None) -> str:
    """`forward.host`, else the hostname as a NATS subject token (`.`, spaces … become `_`)."""
    if configured:
        return configured
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "localhost"


class Forwarder:
    """Run `run` in the outer nursery beside the output sinks (it ends after `bus.aclose`)."""

    name = "NATS forwarder"

    def __init__(self, bus: Bus, config: ForwardConfig, state_dir: Path) -> None:
        self.bus = bus
        self.config = config
        self.host = host_name(config.host)
        self.url = config.nats.url
        self.cursor_file = cursor.cursor_path(state_dir, self.host)
        self.acked = cursor.load(self.cursor_file)  # the last seq the broker acknowledged
        self.head = bus.last_seq  # the newest logged seq this forwarder knows of
        self.forwarded = 0  # events acknowledged by the broker in this run
        self.connected = False
        self.restarts = 0  # sender processes started after the first
        self._told = 0  # the last head written to the sender
        self._stdin: int | None = None  # the write end of the sender's stdin
        self._closing = trio.Event()
        self._outage: str | None = None  # why the broker is unreachable, while it is
        self._crashing = False  # the sender exited unexpectedly and was not stable since

    @property
    def pending(self) -> int:
        return max(0, self.head - self.acked)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        subscription = self.bus.subscribe(self.name, DEPTH)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_sender)
                task_status.started()
                async for batch in subscription:
                    ready = subscription.take_ready()
                    self.head = max(self.head, (ready or batch)[-1].seq)
                    self._tell()
                self._closing.set()  # the bus closed: the sender forwards what is left, then ends
                self._end_stdin()
        finally:
            self.bus.unsubscribe(subscription)
            self._end_stdin()

    # --- the sender's lifetime -----------------------------------------------------------------

    async def _keep_sender(self) -> None:
        delay = RESTART_FIRST_S
        while not self._closing.is_set():
            started = trio.current_time()
            why = await self._run_sender()
            if self._closing.is_set():
                return
            if trio.current_time() - started >= STABLE_S:
                delay = RESTART_FIRST_S
            self.connected = False
            if not self._crashing and not self.bus.closed:
                self.bus.publish_nowait(
                    Message(
                        text=f"{self.name}: the sender process {why}; restarting it (in "
                        f"{delay:g} s, then with backoff); events wait in the event log"
                    ),
                    "error",
                )
            self._crashing = True
            with trio.move_on_after(delay):
                await self._closing.wait()
            delay = min(delay * 2, RESTART_MAX_S)
            self.restarts += 1

    def _argv(self) -> list[str]:
        spec = {
            "nats": self.config.nats.model_dump(mode="json"),
            "host": self.host,
            "log": str(self.bus.log.path),
            "keep": self.bus.log.keep,
            "cursor": str(self.cursor_file),
            "parent": os.getpid(),
            "drain_s": DRAIN_S,
        }
        return sender_argv(orjson.dumps(spec).decode())

    def _env(self) -> dict[str, str]:
        return sender_env()

    async def _run_sender(self) -> str:
        """Start the sender and follow it until it exits; what happened, in words."""
        stdin_read, stdin_write = os.pipe()
        out_read, out_write = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                self._argv(),
                env=self._env(),
                stdin=stdin_read,
                stdout=out_write,
                stderr=out_write,
                start_new_session=True,
            )
        except BaseException as exc:
            for fd in (stdin_write, out_read):
                os.close(fd)
            if isinstance(exc, SPAWN_ERRORS):
                return f"could not be started ({exc})"
            raise
        finally:
            os.close(stdin_read)
            os.close(out_write)
        child = OwnChild(process)
        os.set_blocking(stdin_write, False)
        self._stdin, self._told = stdin_write, 0
        if self._closing.is_set():
            self._end_stdin()
        else:
            self._tell()
        last_words: list[str] = []
        stopper = trio.CancelScope()
        try:
            async with trio.lowlevel.FdStream(out_read) as reports, trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports, reports, last_words)
                nursery.start_soon(self._stop_at_the_end, child, stopper)
                await child.wait()
                stopper.cancel()
                nursery.cancel_scope.deadline = trio.current_time() + KILL_S  # the last reports
        finally:
            self._end_stdin()
            await kill_group(child, KILL_S)
        code = child.returncode
        said = f": {last_words[-1]}" if last_words else ""
        return f"exited with status {code}{said}"

    async def _stop_at_the_end(self, child: OwnChild, scope: trio.CancelScope) -> None:
        with scope:
            await self._closing.wait()
            self._end_stdin()
            with trio.move_on_after(STOP_S):
                await child.wait()
            await kill_group(child, KILL_S, sigterm_s=KILL_S)

    def _tell(self) -> None:
        """Write the head to the sender's stdin, never waiting: a full pipe holds a wake-up
        already, and a sender that is gone is restarted (and reads the log from its cursor)."""
        if self._stdin is None or self.head <= self._told:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._stdin, b"%d\n" % self.head)
            self._told = self.head

    def _end_stdin(self) -> None:
        fd, self._stdin = self._stdin, None
        if fd is not None:
            os.close(fd)

    # --- the sender's reports ------------------------------------------------------------------

    async def _read_reports(self, stream: trio.lowlevel.FdStream, last_words: list[str]) -> None:
        rest = b""
        async for chunk in stream:
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                self._report(line, last_words)
        if rest:
            self._report(rest, last_words)

    def _report(self, line: bytes, last_words: list[str]) -> None:
        try:
            record = orjson.loads(line) if line.startswith(b"{") else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            text = line.decode(errors="replace").strip()
            if text:  # a traceback's last line says most
                last_words[:] = [text[:LAST_WORDS]]
            return
        if "acked" in record:
            self.acked = max(self.acked, int(record["acked"]))
            self.forwarded += int(record.get("n", 0))
            self.head = max(self.head, self.acked)
        elif "up" in record:
            self.acked = max(self.acked, int(record["up"]))
            self._up()
        elif "down" in record:
            self._down(str(record["down"]))
        elif "message" in record:
            self._say(str(record["message"]), SEVERITIES.get(str(record.get("severity")), "warn"))

    def _say(self, text: str, severity: Severity) -> None:
        if not self.bus.closed:
            self.bus.publish_nowait(Message(text=text), severity)

    def _down(self, why: str) -> None:
        self.connected = False
        if self._outage is None:
            self._say(
                f"{self.name}: broker {self.url} unreachable ({why}); events wait in the event "
                f"log from seq {self.acked + 1} and go out when it is back",
                "warn",
            )
        self._outage = why

    def _up(self) -> None:
        self.connected = True
        if self._outage is not None:
            self._say(
                f"{self.name}: broker {self.url} reachable again; forwarding from seq "
                f"{self.acked + 1}",
                "info",
            )
        elif self._crashing:
            self._say(f"{self.name}: the sender process runs again", "info")
        self._outage = None
        self._crashing = False


def sender_argv(*args: str) -> list[str]:
    """`python -P -m frameos.forward.sender ARGS`: -P, so the cwd is not put first on sys.path
    (a `frameos` directory there would be imported instead of this one)."""
    return [sys.executable, "-P", "-m", "frameos.forward.sender", *args]


def sender_env() -> dict[str, str]:
    """This environment, with this frameos first on PYTHONPATH (the one running now)."""
    env = dict(os.environ)
    root = str(Path(frameos.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env
