"""``modeconnect``: a thin click front end.

Each command parses its options (defined once in :mod:`modeconnect_cli.options`), calls
one library function, and formats the result (:mod:`modeconnect_cli.format`). User
errors print one line and exit with code 2. Nothing here imports torch until a
command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

from modeconnect_cli import (
    align,
    barrier,
    compare,
    curve,
    landscape,
    merge,
    plane,
    sharpness,
    spec,
    sweep,
)
from modeconnect_cli.commands import main

__all__ = ["main"]

_COMMANDS = (align, barrier, compare, curve, landscape, merge, plane, sharpness, spec, sweep)

if __name__ == "__main__":  # pragma: no cover
    main()
