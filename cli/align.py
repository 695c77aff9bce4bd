"""``modeconnect align A B``: B's units permuted into A's basis, verified, evaluated, written."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main, parsed
from modeconnect_cli.format import format_align


@o.command(main)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@o.ARCHITECTURE
@o.data()
@o.TRAIN
@o.output(
    "--out",
    "Write B permuted into A's basis (.pt, .safetensors; for checkpoint directories, a directory).",
)
@o.output(
    "--merged",
    "Write (1-alpha)*A + alpha*aligned B (OT: the OT fusion); a file or, "
    "for checkpoint directories, a directory.",
)
@o.ALPHA
@o.STEPS
@o.method()
@o.SYMMETRY
@o.METHOD_OPTIONS
@o.SEED_OPTION
@o.bn()
@o.BATCH_SIZE
@o.LARGE_MODELS
@o.OUTPUTS
def align(a: str, b: str, verbose: bool, quiet: bool, **opts: Any) -> None:
    """Align checkpoint B's units to A's, verify, evaluate and write the results.

    A and B are checkpoint files or Hugging Face directories (save_pretrained).
    """
    o.check_method_flags([opts["method"]], opts)
    from modeconnect.timing import Timings

    timings = Timings()
    align_files, seconds = library("modeconnect.commands.align", "align_files")
    timings.add("imports", seconds)
    from modeconnect.progress import ProgressBar

    with ProgressBar(quiet=quiet) as bar:
        options = parsed("AlignOptions", timings=timings, progress=bar, **opts)
        report = align_files(a, b, options)
    finish(format_align(report), report.timings, verbose)
