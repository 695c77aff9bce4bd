"""``modeconnect merge A B [C ...]``: align N checkpoints into one basis and average them."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main
from modeconnect_cli.format import format_merge


@o.command(main)
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@o.ARCHITECTURE
@o.output("--out", "The merged checkpoint (.pt, .safetensors).", required=True)
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
@o.JSON
@o.FORCE
@o.VERBOSE
def merge(checkpoints: tuple[str, ...], verbose: bool, **opts: Any) -> None:
    """Align checkpoints A B [C ...] into one basis and write their weighted average."""
    merge_files, _ = library("modeconnect.files.merge", "merge_files")
    report = merge_files(checkpoints, trust=o.trust(opts), **opts)
    finish(format_merge(report), report.timings, verbose)
