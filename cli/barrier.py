"""``modeconnect barrier A B``: loss and error barriers, naive and aligned, with a report."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main
from modeconnect_cli.format import command_line, format_barrier


@o.command(main)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@o.ARCHITECTURE
@o.data(required=True)
@click.option(
    "--train", metavar="FILE|MODULE:CALLABLE",
    help="Training data: a second split, and the statistics for --bn and alignment.",
)  # fmt: skip
@o.method("--align", allow_none=True)
@o.METHOD_OPTIONS
@click.option("--layerwise", is_flag=True, help="Layer-wise barriers (Adilova et al. 2024).")
@o.names_option(
    "--layer-groups",
    "P1,P2+P3",
    "Layer groups as module prefixes (default: one per module); join with +.",
)
@o.bn()
@o.STEPS
@click.option(
    "--definition",
    type=click.Choice(["lerp", "mean"]),
    default="lerp",
    show_default=True,
    help="Barrier definition reported first (the JSON has both).",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Bootstrap resamples of the test examples (e.g. 1000).",
)
@click.option(
    "--loss",
    default="ce",
    show_default=True,
    metavar="ce|mse|MODULE:CALLABLE",
    help="Loss: cross-entropy, squared error, or a callable of per-example losses.",
)
@o.SEED_OPTION
@o.BATCH_SIZE
@o.JSON
@o.REPORT
@o.QUIET
@o.FORCE
@o.VERBOSE
def barrier(a: str, b: str, verbose: bool, quiet: bool, **opts: Any) -> None:  # fmt: skip
    """Measure loss and error barriers between checkpoints A and B (naive and aligned)."""
    command = command_line(click.get_current_context())
    barrier_files, _ = library("modeconnect.files.barrier", "barrier_files")
    from modeconnect.progress import ProgressBar

    align_options = _method_options(opts)
    with ProgressBar(quiet=quiet) as bar:
        report = barrier_files(
            a, b, trust=o.trust(opts), command=command, progress=bar,
            align_options=align_options, **opts,
        )  # fmt: skip
    finish(format_barrier(report), report.timings, verbose)


def _method_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The method options given, for the alignment of the study."""
    names = ("restarts", "rtol", "statistic", "max_batches", "ot_solver", "reg", "cost")
    return {k: v for k in names if (v := opts.pop(k, None)) is not None}
