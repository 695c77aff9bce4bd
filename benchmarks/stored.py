"""``--out results/NAME.json``: every benchmark stores the numbers it prints, with provenance.

The file is written by :func:`modeconnect.provenance.write_result` (numbers, the exact
command, git commit, package versions, machine, seeds, date), so a speed or memory claim
in the README points at a stored run rather than at a terminal that scrolled away.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modeconnect.provenance import write_result


def add_out(parser: argparse.ArgumentParser) -> None:
    """The ``--out`` option: where the numbers go (default: printed only)."""
    parser.add_argument(
        "--out", type=Path, help="also store the numbers here, e.g. results/bench_NAME.json"
    )


def store(out: Path | None, numbers: Mapping[str, Any], seeds: Iterable[int] = ()) -> None:
    """Write ``numbers`` to ``out`` with provenance (nothing when ``out`` is None)."""
    if out is None:
        return
    write_result(out, numbers, seeds=seeds, command=["python", *sys.argv])
    print(f"# wrote {out}", file=sys.stderr)
