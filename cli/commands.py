"""The ``modeconnect`` command group, and what every command shares when it runs."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import warnings
from collections.abc import Iterator
from typing import IO, Any

import click

from modeconnect.errors import printable
from modeconnect.io.offline import offline
from modeconnect_cli.format import command_line, format_timings
from modeconnect_cli.options import fail, trust


class CommandGroup(click.Group):
    """The ``modeconnect`` group: every error it meets is one line on stderr, exit code 2.

    Click prints a usage error as four lines (usage, a hint, a blank line, the error);
    here it is the last one alone: ``Error: Invalid value for '--seed': ...``.
    Help (``--help``, or the group with no arguments) and ``--version`` are unchanged.
    An exception that escapes outside a command's body (an option's callback, the
    group itself) gets the same one line as one inside it (:func:`~modeconnect_cli.
    options.fail`).
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            one_line_usage(exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            one_line_usage(exc)
            raise

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # only without standalone mode: the caller handles them
        except Exception as exc:
            fail(exc)


def one_line_usage(exc: click.UsageError) -> None:
    """Make ``exc`` show itself as its one ``Error: ...`` line, without the usage lines.

    The line is the one click prints last (so scripts and tests that read the last line
    read the same); it is escaped (:func:`~modeconnect.errors.printable`), since it may
    quote what was typed. The exception keeps its class (``BadParameter``,
    ``NoSuchOption``, ...) and exit code 2; only how it shows itself changes. Help
    shown for missing arguments (``NoArgsIsHelpError``) is left as it is.
    """
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return

    def show(file: IO[Any] | None = None) -> None:
        click.echo(printable(f"Error: {exc.format_message()}"), file=file, err=True)

    exc.show = show  # type: ignore[method-assign]


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    # Nothing a command does may reach the network, whatever a file says (SECURITY.md):
    # the Hub clients stay offline until the command ends, and are restored after it.
    ctx.with_resource(offline())
    ctx.with_resource(one_line_warnings())


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """While a command runs, a warning shows as one line, ``warning: MESSAGE`` (escaped,
    :func:`~modeconnect.errors.printable`), without the file, line number and source line
    Python adds: the message names what to change (OT's ``--reg``, an unused activation
    site), the source line of modeconnect's ``warn`` call does not."""
    previous = warnings.formatwarning

    def one_line(message: Warning | str, *_: Any, **__: Any) -> str:
        return printable(f"warning: {message}") + "\n"

    warnings.formatwarning = one_line  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = previous


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
    """Print a command's result, and with ``--verbose`` where the time went.

    Each line is printed with its unprintable characters escaped (a file name with a
    newline in it stays on its line; :func:`~modeconnect.errors.printable`).
    """
    click.echo("\n".join(printable(line) for line in text.split("\n")))
    if verbose and timings is not None:
        click.echo(format_timings(timings), err=True)


def parsed(options: str, **keywords: Any) -> Any:
    """The command's options object, ``modeconnect.commands.options.<options>``, built once
    from the parsed flags (an unknown one is a one-line error naming the valid ones;
    ``--trust-module`` and ``--trust-model-ref`` become one ``trust``)."""
    cls, _ = library("modeconnect.commands.options", options)
    if "trust_module" in keywords or "trust_model_ref" in keywords:  # the two --trust flags
        keywords["trust"] = trust(keywords)
    return cls.from_keywords(keywords)


def run_study(module: str, name: str, options: str, *args: Any, quiet: bool, **kwargs: Any) -> Any:
    """``module.name(*args, <options>)`` under progress bars, the options parsed once.

    The options get ``command``, the command line as typed (for reports), and
    ``progress``: the bars, drawn on a terminal unless ``quiet``.
    """
    run, _ = library(module, name)
    from modeconnect.progress import ProgressBar

    command = command_line(click.get_current_context())
    with ProgressBar(quiet=quiet) as bar:
        return run(*args, parsed(options, command=command, progress=bar, **kwargs))


def run_aligned_study(
    module: str, name: str, options: str, *args: Any, quiet: bool, opts: dict[str, Any]
) -> Any:
    """:func:`run_study` for a study that may align B first (``--align`` and its method
    flags, which become ``align_options``)."""
    from modeconnect_cli import options as o

    align_options = o.pop_method_options(opts, opts["align"])
    return run_study(
        module, name, options, *args, quiet=quiet, align_options=align_options, **opts,
    )  # fmt: skip
