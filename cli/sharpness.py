"""``modeconnect sharpness CKPT...``: Hessian spectrum, trace and adaptive sharpness."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, main, run_study
from modeconnect_cli.format import format_sharpness

SPECTRUM_METHODS = ("lanczos", "power")
NORMS = ("l2", "linf")
"""The names of ``modeconnect.curvature.SPECTRUM_METHODS`` and ``NORMS`` (it imports torch)."""
MERGES = ("none", "naive", *o.METHOD_NAMES)
POSITIVE = click.FloatRange(min=0, min_open=True)


@o.command(main)
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@o.MODEL
@o.data(required=True, help="Data the loss is measured on (usually the training split).")
@o.names_option("--names", "A,B", "Labels of the checkpoints [default: A,B,C,...].")
@click.option("--merge", type=click.Choice(MERGES), default="none", show_default=True,
              help="Add the merge of the first two: averaged as they are (naive) or aligned "
                   "first by this method.")  # fmt: skip
@o.ALPHA
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Largest Hessian eigenvalues to find.")  # fmt: skip
@click.option("--spectrum", type=click.Choice(SPECTRUM_METHODS), default="lanczos",
              show_default=True, help="Eigenvalue method: Lanczos or power iteration.")  # fmt: skip
@click.option("--iterations", type=click.IntRange(min=1), metavar="N",
              help="Lanczos steps [default: 30], or power iterations per eigenvalue "
                   "[default: 100].")  # fmt: skip
@click.option("--trace-samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="Hutchinson probes for the Hessian trace.")  # fmt: skip
@click.option("--rho", type=POSITIVE, default=0.5, show_default=True,
              help="Adaptive sharpness radius, relative to |weights|.")  # fmt: skip
@click.option("--plain-rho", type=POSITIVE, default=0.05, show_default=True,
              help="Plain (worst-case) sharpness radius, absolute.")  # fmt: skip
@click.option("--norm", type=click.Choice(NORMS), default="l2", show_default=True,
              help="Ball of the worst-case perturbations.")  # fmt: skip
@click.option("--ascent-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Gradient ascent steps for each worst case.")  # fmt: skip
@o.SEED_OPTION
@click.option("--batches-per-pass", "--max-batches", "max_batches", type=click.IntRange(min=1),
              metavar="N", help="Batches of --data per pass (each Hessian-vector product) "
              "[default: all]; --max-batches is its 0.2.0 name.")  # fmt: skip
@o.LOSS
@o.BATCH_SIZE
@o.DEVICE
@o.STUDY_OUTPUTS
def sharpness(checkpoints: tuple[str, ...], verbose: bool, quiet: bool, **opts: Any) -> None:
    """Sharpness of each checkpoint (and of a merge): eigenvalues, trace, worst cases.

    Raw measures (top Hessian eigenvalues, trace, plain worst-case sharpness)
    change under rescalings that keep a ReLU net's function; adaptive sharpness
    does not.
    """
    report = run_study(
        "modeconnect.commands.sharpness", "sharpness_files", "SharpnessOptions",
        checkpoints, quiet=quiet,
        **opts,
    )  # fmt: skip
    finish(format_sharpness(report), report.timings, verbose)
