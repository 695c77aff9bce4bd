"""``modeconnect curve A B``: a low-loss curve between two checkpoints (Garipov et al. 2018)."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, main, run_aligned_study
from modeconnect_cli.format import format_curve


@o.command(main)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@o.ARCHITECTURE
@o.train("Training data: the curve is trained on it (and --bn, --align).", required=True)
@o.data(required=True)
@o.curve_kind("bezier", "Curve family: a Bezier curve or a polygonal chain through the bends.")
@click.option("--bends", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trainable control points between A and B.")  # fmt: skip
@o.method("--align", allow_none=True, default=o.NO_ALIGNMENT)
@o.METHOD_OPTIONS
@o.SYMMETRY
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Passes over --train.")  # fmt: skip
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05,
              show_default=True, help="SGD learning rate (cosine decay to 0).")  # fmt: skip
@click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True,
              help="SGD momentum.")  # fmt: skip
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="SGD weight decay.")  # fmt: skip
@o.batch_size(128)
@o.SEED_OPTION
@o.STEPS
@o.DEFINITION
@o.bn(("auto", "reset", "none"), default="auto")
@o.EVALUATED_POINTS
@o.LOSS
@o.output("--bend", "Write the bend as a checkpoint (once per bend, in order).", multiple=True)
@o.output("--aligned", "Write B aligned to A (with --align).")
@o.DEVICE
@o.STUDY_OUTPUTS
def curve(a: str, b: str, verbose: bool, quiet: bool, **opts: Any) -> None:
    """Train a curve from A to B with fixed endpoints and compare it with the straight line.

    Each SGD step draws t ~ U[0, 1] and a batch of --train; line and curve are then
    evaluated at --steps values of t on --data and --train, with both barrier
    definitions (the JSON keys of `modeconnect barrier`).
    """
    report = run_aligned_study(
        "modeconnect.commands.curve", "curve_files", "CurveOptions", a, b, quiet=quiet, opts=opts
    )
    finish(format_curve(report), report.timings, verbose)
