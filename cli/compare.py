"""``modeconnect compare A B``: every alignment method on one pair, in one table."""

from __future__ import annotations

from typing import Any

import click

from modeconnect_cli import options as o
from modeconnect_cli.commands import finish, library, main, parsed
from modeconnect_cli.format import format_comparison


@o.command(main, name="compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@o.ARCHITECTURE
@o.data(required=True)
@o.TRAIN
@click.option("--methods", callback=o.choices_csv(o.METHOD_NAMES), metavar="NAME,...",
              help="Methods to run, comma-separated (default: all).")  # fmt: skip
@o.SYMMETRIES
@o.METHOD_OPTIONS
@o.STEPS
@o.SEED_OPTION
@o.BATCH_SIZE
@o.RAY
@o.DEVICE
@o.JSON
@o.FORCE
@o.VERBOSE
def compare(a: str, b: str, verbose: bool, methods: list[str] | None, **opts: Any) -> None:
    """Align B to A with every method and print time, objective and barriers."""
    o.check_method_flags(methods, opts)
    compare_files, _ = library("modeconnect.commands.compare", "compare_files")
    report = compare_files(a, b, parsed("CompareOptions", methods=methods, **opts))
    lines = [f"model      {report.model_ref}", format_comparison(report.comparison)]
    lines += [f"wrote      {what}: {path}" for what, path in report.written.items()]
    finish("\n".join(lines), report.timings, verbose)
