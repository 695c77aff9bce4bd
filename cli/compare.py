"""``modeconnect compare``: every alignment method on one pair, one table.

Registered on the main group by ``register(main)``; parses, calls
:func:`modeconnect.compare.compare_files`, prints :func:`~modeconnect.compare.format_comparison`.
"""

from __future__ import annotations

from typing import Any

import click


def _methods(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None or value.strip().lower() == "all":
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"expected comma-separated method names, got {value!r}")
    return names


def register(main: click.Group) -> None:
    """Add the ``compare`` command to ``main``."""
    # Imported here, not at the top: cli/main.py imports this module at its end.
    from modeconnect_cli.main import DTYPES, SEED, _user_errors, model_options, pop_trust

    @main.command("compare")
    @click.argument("a", type=click.Path(dir_okay=False))
    @click.argument("b", type=click.Path(dir_okay=False))
    @model_options
    @click.option(
        "--data",
        required=True,
        metavar="FILE|MODULE:CALLABLE",
        help="Evaluation data: .pt/.npz with x and y, or a callable.",
    )
    @click.option(
        "--train",
        metavar="FILE|MODULE:CALLABLE",
        help="Data for activation statistics (default: --data).",
    )
    @click.option(
        "--methods",
        callback=_methods,
        metavar="NAME,...",
        help="Methods to run, comma-separated (default: all).",
    )
    @click.option(
        "--steps",
        type=click.IntRange(min=2),
        default=25,
        show_default=True,
        help="Points on each interpolation curve.",
    )
    @click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of every method.")
    @click.option(
        "--restarts",
        type=click.IntRange(min=1),
        default=None,
        help="Weight-matching runs; the best objective is kept.",
    )
    @click.option(
        "--statistic",
        type=click.Choice(["correlation", "moment"]),
        default=None,
        help="Activation statistic [default: correlation].",
    )
    @click.option(
        "--max-batches",
        type=click.IntRange(min=1),
        default=None,
        help="Batches of --train used for activation statistics.",
    )
    @click.option(
        "--ot-solver",
        type=click.Choice(["emd", "sinkhorn"]),
        default=None,
        help="Optimal-transport solver [default: emd].",
    )
    @click.option(
        "--reg",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Sinkhorn regularisation, relative to the cost range [default: 0.01].",
    )
    @click.option(
        "--cost",
        type=click.Choice(["weights", "activations"]),
        default=None,
        help="OT ground cost [default: weights].",
    )
    @click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
    @click.option(
        "--json", "json_path", type=click.Path(), help="Write the table as JSON."
    )
    @click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
    @_user_errors
    def compare(a: str, b: str, **opts: Any) -> None:
        """Align B to A with every method and print time, objective and barriers."""
        from modeconnect.compare import compare_files, format_comparison

        name = opts.pop("input_dtype", None)
        report = compare_files(
            a, b, input_dtype=DTYPES[name] if name else None, trust=pop_trust(opts), **opts
        )
        click.echo(f"model      {report.model_ref}")
        click.echo(format_comparison(report.comparison))
        for what, path in report.written.items():
            click.echo(f"wrote      {what}: {path}")
