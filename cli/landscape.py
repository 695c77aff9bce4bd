"""``modeconnect landscape CKPT``: loss along filter-normalised directions (Li et al. 2018)."""

from __future__ import annotations

import math
from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, main, run_study
from modeconnect_cli.format import format_landscape


def _span(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        low, high = (float(s) for s in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected two numbers LOW,HIGH like -1,1, got {value!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise click.BadParameter(f"expected finite LOW < HIGH like -1,1, got {value!r}")
    return low, high


@o.command(main)
@click.argument("checkpoint", type=click.Path())
@o.MODEL
@o.data(required=True)
@o.train("Training data: BatchNorm statistics at every point (--bn reset).")
@click.option("--dims", type=click.IntRange(1, 2), default=2, show_default=True,
              help="1: a slice along one direction; 2: a surface over two.")  # fmt: skip
@click.option("--span", callback=_span, default="-1,1", show_default=True, metavar="LOW,HIGH",
              help="Range of the step along each direction (1: one filter-norm).")  # fmt: skip
@o.resolution(None, "Points along each direction [default: 51 in 1-D, 21 in 2-D].")
@o.SEED_OPTION
@o.bn(("none", "reset"))
@o.GRID_STUDY
def landscape(checkpoint: str, verbose: bool, quiet: bool, **opts: Any) -> None:
    """Loss and error around CHECKPOINT along random filter-normalised directions.

    Each direction is Gaussian, rescaled filter by filter to the model's filter
    norms; biases and normalisation parameters stay put. --seed draws them.
    """
    report = run_study(
        "modeconnect.commands.landscape", "landscape_files", "LandscapeOptions",
        checkpoint, quiet=quiet,
        **opts,
    )  # fmt: skip
    finish(format_landscape(report), report.timings, verbose)
