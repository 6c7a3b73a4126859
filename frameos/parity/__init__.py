"""`frameos parity`: check a renderer contract against a driver contract (SPEC §8).

    contracts.py  the contract models and the invariants (pure, no I/O)
    sources.py    where each side's contract comes from (a file or a probe command), under trio
    command.py    the verdict, its event (`runtime:parity_ok` / `runtime:parity_failed`), `main`

Both sources are loaded concurrently, validated, then checked against every invariant. Every
problem found (a source that cannot be read, a schema error naming its JSON path, a broken
invariant naming the fields and values) is reported together in one `runtime:parity_failed`,
joined by "; ". Exit 0 when the contracts agree, 1 when they do not, 2 for a usage error.
"""

from frameos.parity.command import main as main
from frameos.parity.contracts import Outcome as Outcome
from frameos.parity.contracts import compare as compare

__all__ = ["Outcome", "compare", "main"]
