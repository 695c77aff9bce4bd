"""``modeconnect merge A B [C ...]``: align N checkpoints into one basis and average them."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main, parsed
from modeconnect_cli.format import format_merge


@o.command(main)
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@o.ARCHITECTURE
@o.output(
    "--out",
    "The merged checkpoint (.pt, .safetensors; for checkpoint directories, a directory).",
    required=True,
)
@o.weights_option()
@o.method(allow_none=True)
@o.METHOD_OPTIONS
@click.option("--reference", type=click.Path(),
              help="Align every model to this checkpoint instead of MergeMany.")  # fmt: skip
@click.option("--max-rounds", type=click.IntRange(min=1), default=20, show_default=True,
              help="MergeMany rounds at most.")  # fmt: skip
@o.data()
@o.TRAIN
@o.bn(("none", "reset"))
@o.SEED_OPTION
@o.BATCH_SIZE
@o.LARGE_MODELS
@o.OUTPUTS
def merge(checkpoints: tuple[str, ...], verbose: bool, quiet: bool, **opts: Any) -> None:
    """Align checkpoints A B [C ...] into one basis and write their weighted average.

    Checkpoints are files or Hugging Face directories (save_pretrained).
    """
    o.check_method_flags([opts["method"]], opts)
    merge_files, _ = library("modeconnect.commands.merge", "merge_files")
    from modeconnect.progress import ProgressBar

    with ProgressBar(quiet=quiet) as bar:
        options = parsed("MergeOptions", trust=o.trust(opts), progress=bar, **opts)
        report = merge_files(checkpoints, options)
    finish(format_merge(report), report.timings, verbose)
