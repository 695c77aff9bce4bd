"""``modeconnect spec [CHECKPOINT]``: the permutation groups derived from the model's graph."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main, parsed
from modeconnect_cli.format import format_spec


@o.command(main)
@click.argument("checkpoint", required=False, type=click.Path())
@o.ARCHITECTURE
@o.JSON
@o.FORCE
@o.VERBOSE
def spec(checkpoint: str | None, verbose: bool, **opts: Any) -> None:
    """Print the permutation groups derived from the model's graph, and what stays fixed."""
    spec_files, _ = library("modeconnect.commands.spec", "spec_files")
    result = spec_files(checkpoint, parsed("SpecOptions", **opts))
    finish(format_spec(result), None, verbose)
