"""``modeconnect align A B``: B's units permuted into A's basis, verified, evaluated, written."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main
from modeconnect_cli.format import format_align


@o.command(main)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@o.ARCHITECTURE
@o.data()
@o.TRAIN
@o.output("--out", "Write B permuted into A's basis (.pt, .safetensors).")
@o.output("--merged", "Write (1-alpha)*A + alpha*aligned B (OT: the OT fusion).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of B in --merged.")  # fmt: skip
@o.STEPS
@o.method()
@o.METHOD_OPTIONS
@o.SEED_OPTION
@o.bn()
@o.BATCH_SIZE
@o.JSON
@o.FORCE
@o.VERBOSE
def align(a: str, b: str, verbose: bool, **opts: Any) -> None:
    """Align checkpoint B's units to A's, verify, evaluate and write the results."""
    from modeconnect.timing import Timings

    timings = Timings()
    align_files, seconds = library("modeconnect.files.align", "align_files")
    timings.add("imports", seconds)
    report = align_files(a, b, trust=o.trust(opts), timings=timings, **opts)
    finish(format_align(report), report.timings, verbose)
