"""``modeconnect merge``: align N checkpoints into one basis and average them.

Wired into the ``modeconnect`` group by ``register(main)``; the command parses,
calls :func:`modeconnect.merge.merge_files`, and formats the report.
"""

from __future__ import annotations

from typing import Any

import click


def _weights(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        weights = [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers like 1,2,1, got {value!r}"
        ) from None
    if not weights:
        raise click.BadParameter(f"expected comma-separated numbers like 1,2,1, got {value!r}")
    return weights


def register(main: click.Group) -> None:
    """Add the ``merge`` command to ``main``."""
    # Imported here, not at the top: cli/main.py imports this module at its end.
    from modeconnect_cli.main import DTYPES, SEED, _user_errors, model_options, pop_trust

    @main.command()
    @click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False))
    @model_options
    @click.option(
        "--method",
        default="weight",
        show_default=True,
        help="Alignment method (weight, activation, ot, ...) or 'none' for a plain average.",
    )
    @click.option(
        "--weights",
        callback=_weights,
        metavar="W1,W2,...",
        help="One weight per checkpoint (e.g. example counts); default equal.",
    )
    @click.option(
        "--data",
        metavar="FILE|MODULE:CALLABLE",
        help="Training data: probe, activations, BatchNorm reset, loss/accuracy report.",
    )
    @click.option(
        "--reference",
        type=click.Path(dir_okay=False),
        help="Align every model to this checkpoint instead of MergeMany.",
    )
    @click.option(
        "--bn",
        type=click.Choice(["none", "reset"]),
        default="none",
        show_default=True,
        help="Recompute BatchNorm statistics of the merge on --data.",
    )
    @click.option(
        "--max-rounds",
        type=click.IntRange(min=1),
        default=20,
        show_default=True,
        help="MergeMany rounds at most.",
    )
    @click.option(
        "--seed",
        type=SEED,
        default=0,
        show_default=True,
        help="Seed of the visiting order and of weight matching.",
    )
    @click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
    @click.option(
        "--out",
        required=True,
        type=click.Path(),
        help="Merged checkpoint (.pt or .safetensors).",
    )
    @click.option(
        "--json", "json_path", type=click.Path(), help="Write the report as JSON."
    )
    @click.option("--force", is_flag=True, help="Overwrite existing output files.")
    @_user_errors
    def merge(checkpoints: tuple[str, ...], **opts: Any) -> None:  # fmt: skip
        """Align checkpoints A B [C ...] into one basis and write their weighted average."""
        from modeconnect.merge import merge_files

        dtype = DTYPES[opts.pop("input_dtype")] if opts.get("input_dtype") else None
        opts.pop("input_dtype", None)
        report = merge_files(checkpoints, input_dtype=dtype, trust=pop_trust(opts), **opts)
        click.echo(format_merge(report))


def format_merge(report: Any) -> str:
    """The report as a few aligned lines."""
    res = report.result
    lines = [
        f"model      {report.model_ref}",
        f"merge      {len(report.sources)} models, method {res.method}, reference {res.reference}"
        + (
            f", {res.rounds} rounds{'' if res.converged else ' (not converged)'}"
            if res.rounds
            else ""
        )
        + f", {res.seconds:.2f} s",
    ]
    if res.equivalence:
        worst = max(e.max_rel_diff for e in res.equivalence)
        lines.append(f"guard      every permuted model == its original (max rel diff {worst:.2e})")
    if report.inputs is not None:
        lines += ["", f"{'':>10} {'weight':>7} {'loss':>8} {'acc':>8}  source"]
        for path, w, m in zip(report.sources, res.weights, report.inputs, strict=True):
            lines.append(f"{'input':>10} {w:7.3f} {m.loss:8.4f} {m.accuracy:8.2%}  {path}")
        if report.plain is not None:
            lines.append(
                f"{'plain avg':>10} {'':7} {report.plain.loss:8.4f} {report.plain.accuracy:8.2%}"
            )
        lines.append(
            f"{'merged':>10} {'':7} {report.merged.loss:8.4f} {report.merged.accuracy:8.2%}"
        )
    for name, path in report.written.items():
        lines.append(f"wrote      {name}: {path}")
    return "\n".join(lines)
