"""The ``modeconnect`` command group, and what every command shares when it runs."""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

import click

from modeconnect_cli.format import command_line, format_timings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modeconnect")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads for torch (default: torch's choice). On a busy machine, 1 is often "
    "fastest for small models.",
)  # fmt: skip
@click.pass_context
def main(ctx: click.Context, threads: int | None) -> None:
    """Mode connectivity and model merging: align permutations, measure barriers, merge."""
    ctx.obj = {"threads": threads}
    # Idle OpenMP threads sleep instead of spinning. With torch's default spinning, one
    # other busy process on a 2-core machine made `align` on the shipped pair take 10 s
    # instead of 2.6 s (evaluation 2.3 s against 0.47 s, measured beside a CPU hog).
    # Read when torch is first imported, which happens after this, in `library`.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def library(module: str, name: str) -> tuple[Any, float]:
    """``module.name`` imported now (torch and all), ``--threads`` applied; and the seconds."""
    start = time.perf_counter()
    value = getattr(importlib.import_module(module), name)
    threads = (click.get_current_context().find_root().obj or {}).get("threads")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return value, time.perf_counter() - start


def finish(text: str, timings: Any, verbose: bool) -> None:
    """Print a command's result, and with ``--verbose`` where the time went."""
    click.echo(text)
    if verbose and timings is not None:
        click.echo(format_timings(timings), err=True)


def run_study(module: str, name: str, *args: Any, quiet: bool, **kwargs: Any) -> Any:
    """``module.name(*args, command=..., progress=..., **kwargs)`` under progress bars.

    ``command`` is the command line as typed (for reports); the bars are drawn on a
    terminal unless ``quiet``.
    """
    run, _ = library(module, name)
    from modeconnect.progress import ProgressBar

    command = command_line(click.get_current_context())
    with ProgressBar(quiet=quiet) as bar:
        return run(*args, command=command, progress=bar, **kwargs)
