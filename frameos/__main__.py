"""`python -m frameos`: the same entry point as the `frameos` console script."""

import signal

# Before anything else is imported: a SIGHUP/SIGTERM/SIGINT sent while frameos starts stays
# pending until `run` has its handlers in (supervisor.signal_inbox), instead of killing it.
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGHUP, signal.SIGTERM, signal.SIGINT))

from frameos.cli import main  # noqa: E402

raise SystemExit(main())
