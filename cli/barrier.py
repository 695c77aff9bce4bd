"""``modeconnect barrier A B``: loss and error barriers, naive and aligned, with a report."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, main, run_aligned_study
from modeconnect_cli.format import format_barrier


@o.command(main)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@o.ARCHITECTURE
@o.data(required=True)
@o.train("Training data: a second split, and the statistics for --bn and alignment.")
@o.method("--align", allow_none=True)
@o.METHOD_OPTIONS
@o.SYMMETRY
@click.option("--layerwise", is_flag=True, help="Layer-wise barriers (Adilova et al. 2024).")
@o.names_option(
    "--layer-groups",
    "P1,P2+P3",
    "Layer groups as module prefixes (default: one per module); join with +.",
)
@o.bn()
@o.EVALUATED_POINTS
@o.STEPS
@o.DEFINITION
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="N",
              help="Bootstrap resamples of the test examples (e.g. 1000).")  # fmt: skip
@o.LOSS
@o.SEED_OPTION
@o.BATCH_SIZE
@o.RAY
@o.DEVICE
@o.STUDY_OUTPUTS
def barrier(a: str, b: str, verbose: bool, quiet: bool, **opts: Any) -> None:  # fmt: skip
    """Measure loss and error barriers between checkpoints A and B (naive and aligned)."""
    report = run_aligned_study(
        "modeconnect.commands.barrier",
        "barrier_files",
        "BarrierOptions",
        a,
        b,
        quiet=quiet,
        opts=opts,
    )
    finish(format_barrier(report), report.timings, verbose)
