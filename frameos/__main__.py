"""`python -m frameos`: the same entry point as the `frameos` console script."""

from frameos.cli import main

raise SystemExit(main())
