"""schemathesis against the real running server (`nox -s schemathesis`, run by .ci/run).

Starts `python -m frameos run` on a throwaway config (two VMs that sleep, a token file), waits
for runtime:ready, runs `st run` on its /v1/openapi.json with every check but
positive_data_acceptance (a stop with target null is schema-valid JSON that the run model
refuses with 422, by design), then stops frameos with SIGTERM. Fails when schemathesis finds a
problem, when frameos logged an internal error for a request, or when frameos does not exit 0.
Extra arguments go to `st run` (e.g. `--max-examples 50`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from frameos.events import Message, RuntimeReady

TOKEN = "schemathesis-" + os.urandom(12).hex()
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
SLEEPER = [sys.executable, "-c", "import time\ntime.sleep(100000)"]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="frameos-st-") as tmp:
        root = Path(tmp)
        token = root / "token"
        token.write_text(TOKEN)
        token.chmod(0o600)
        ladder = {"cooperative_ms": 0, "sigterm_ms": 2000, "sigkill_ms": 1000}
        config = {
            "frame_port": 0,
            "state_dir": str(root / "state"),
            "auth": {"token_file": str(token)},
            "vms": [
                {"name": name, "command": SLEEPER, "timeouts": ladder} for name in ("alpha", "beta")
            ],
        }
        (root / "frame.json").write_text(json.dumps(config))
        out = (root / "out.jsonl").open("w+b")
        frameos = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "frameos",
                "run",
                "--config",
                str(root / "frame.json"),
                "--output",
                "json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = _wait_ready(root / "out.jsonl", frameos)
            st = subprocess.run(
                [
                    "st",
                    "run",
                    f"{url}/v1/openapi.json",
                    "-H",
                    f"Authorization: Bearer {TOKEN}",
                    "--checks",
                    "all",
                    "--exclude-checks",
                    "positive_data_acceptance",
                    "--max-examples",
                    "40",
                    "--workers",
                    "2",
                    "--seed",
                    "1",
                    *argv,
                ],
                check=False,
                cwd=root,  # its .schemathesis/ cache stays in the throwaway directory
            )
        finally:
            frameos.send_signal(signal.SIGTERM)
            try:
                status = frameos.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                frameos.kill()
                status = frameos.wait()
        events = [json.loads(line) for line in (root / "out.jsonl").read_bytes().splitlines()]
        faults = [
            e["fields"]["text"]
            for e in events
            if e["event"] == Message.NAME and e["severity"] == "error"
        ]
        for text in faults:
            print(f"frameos logged an error: {text}", file=sys.stderr)
        if status != 0:
            print(f"frameos exited {status} after SIGTERM", file=sys.stderr)
        return 1 if st.returncode or faults or status else 0


def _wait_ready(path: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in path.read_bytes().splitlines():
            event = json.loads(line)
            if event["event"] == RuntimeReady.NAME:
                return str(event["fields"]["server"])
        if proc.poll() is not None:
            raise SystemExit(
                f"frameos exited {proc.returncode} before it was ready:\n{path.read_text()}"
            )
        time.sleep(0.1)
    raise SystemExit(f"frameos was not ready within {READY_TIMEOUT_S} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
