"""``modeconnect plane A B C``: loss and error on the plane through three checkpoints."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, main, run_study
from modeconnect_cli.format import format_plane


@o.command(main)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.argument("c", type=click.Path())
@o.MODEL
@o.data(required=True)
@o.train("Training data: BatchNorm statistics at every grid point (--bn).")
@o.resolution(21, "Grid points along each axis of the plane.")
@click.option("--margin", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="The grid extends past the models by this fraction of their "
                   "extent.")  # fmt: skip
@o.curve_kind(None, "C is the bend of this one-bend curve from A to B (modeconnect curve "
                    "--bend): draw the curve too.")  # fmt: skip
@o.names_option("--names", "A,B,C", "Labels of the three models [default: A,B,C or A,B,bend].")
@o.bn(("auto", "reset", "none"), default="auto")
@o.GRID_STUDY
def plane(a: str, b: str, c: str, verbose: bool, quiet: bool, **opts: Any) -> None:
    """Loss and error on a grid over the plane through A, B and C, with the line A-B drawn.

    The plane's basis is orthonormal (Gram-Schmidt, origin A, x towards B); with
    --curve, C is a curve's bend and the curve is drawn as well.
    """
    report = run_study(
        "modeconnect.commands.landscape", "plane_files", "PlaneOptions",
        a, b, c, quiet=quiet,
        **opts,
    )  # fmt: skip
    finish(format_plane(report), report.timings, verbose)
