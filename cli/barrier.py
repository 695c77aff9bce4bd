"""``modeconnect barrier``: barriers between two checkpoints, with curves, intervals and a report.

Wired into the ``modeconnect`` group by ``register(main)``; the command parses,
calls :func:`modeconnect.study.barrier_files`, and formats the result.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import click


def _groups(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    groups = [g.strip() for g in value.split(",") if g.strip()]
    if not groups:
        raise click.BadParameter(
            f"expected comma-separated module prefixes like fc1,fc2+fc3, got {value!r}"
        )
    return groups


def register(main: click.Group) -> None:
    """Add the ``barrier`` command to ``main``."""
    # Imported here, not at the top: cli/main.py imports this module at its end.
    from modeconnect_cli.main import DTYPES, SEED, _user_errors, model_options, pop_trust

    @main.command()
    @click.argument("a", type=click.Path(dir_okay=False))
    @click.argument("b", type=click.Path(dir_okay=False))
    @model_options
    @click.option(
        "--data",
        required=True,
        metavar="FILE|MODULE:CALLABLE",
        help="Test data: .pt/.npz with x and y, or a callable.",
    )
    @click.option(
        "--train",
        metavar="FILE|MODULE:CALLABLE",
        help="Training data: a second split, and the statistics for --bn reset|repair.",
    )
    @click.option(
        "--align",
        "align",
        default="weight",
        show_default=True,
        metavar="METHOD|none",
        help="Alignment method for the aligned path, or 'none' for the naive path only.",
    )
    @click.option(
        "--layerwise",
        is_flag=True,
        help="Layer-wise barriers (Adilova et al. 2024) on the test data.",
    )
    @click.option(
        "--layer-groups",
        callback=_groups,
        metavar="P1,P2+P3",
        help="Layer groups as module prefixes (default: one per module); join prefixes with +.",
    )
    @click.option(
        "--bn",
        type=click.Choice(["none", "reset", "repair"]),
        default="none",
        show_default=True,
        help="At every alpha: reset BatchNorm statistics, or REPAIR (nets without BatchNorm), "
        "on --train.",
    )
    @click.option(
        "--steps",
        type=click.IntRange(min=2),
        default=25,
        show_default=True,
        help="Evenly spaced alphas from 0 to 1 (0.5 is always added).",
    )
    @click.option(
        "--definition",
        type=click.Choice(["lerp", "mean"]),
        default="lerp",
        show_default=True,
        help="Barrier definition reported first (both are in the JSON).",
    )
    @click.option(
        "--bootstrap",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        metavar="N",
        help="Bootstrap resamples of the test examples for barrier intervals (e.g. 1000).",
    )
    @click.option(
        "--loss",
        default="ce",
        show_default=True,
        metavar="ce|mse|MODULE:CALLABLE",
        help="Loss: cross-entropy, squared error, or a callable returning per-example losses.",
    )
    @click.option(
        "--seed",
        type=SEED,
        default=0,
        show_default=True,
        help="Seed of the alignment and of the bootstrap.",
    )
    @click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
    @click.option(
        "--json", "json_path", type=click.Path(), help="Write every number as JSON."
    )
    @click.option(
        "--report",
        "report_dir",
        type=click.Path(file_okay=False),
        help="Write plots and report.html into this directory.",
    )
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    @click.option("--force", is_flag=True, help="Overwrite existing output files.")
    @_user_errors
    def barrier(a: str, b: str, **opts: Any) -> None:  # fmt: skip
        """Measure loss and error barriers between checkpoints A and B (naive and aligned)."""
        from modeconnect.progress import ProgressBar
        from modeconnect.study import barrier_files

        command = command_line(click.get_current_context())
        dtype = DTYPES[opts.pop("input_dtype")] if opts.get("input_dtype") else None
        opts.pop("input_dtype", None)
        quiet = opts.pop("quiet")
        trust = pop_trust(opts)
        with ProgressBar(quiet=quiet) as bar:
            report = barrier_files(
                a, b, input_dtype=dtype, command=command, progress=bar, trust=trust, **opts
            )
        click.echo(format_barrier(report))


def command_line(ctx: click.Context) -> str:
    """The command as a shell line, rebuilt from the parsed parameters (non-default options)."""
    words = ctx.command_path.split()
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif isinstance(param, click.Option) and value not in (None, False, param.default):
            flag = max(param.opts, key=len)
            options += [flag] if value is True else [flag, _render(value)]
    return shlex.join([*words, *options])


def _render(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def format_barrier(report: Any) -> str:
    """A short table: barriers per path and split, midpoints, intervals, layer-wise, outputs."""
    study = report.study
    examples = ", ".join(f"{k} {v}" for k, v in report.examples.items())
    lines = [f"model      {report.model_ref}", f"data       {examples} examples"]
    if study.alignment is not None:
        al, eq = study.alignment.alignment, study.alignment.equivalence
        lines.append(
            f"alignment  {al.method}: objective {al.objective:.6g}; guard: aligned B == B "
            f"(max rel diff {eq.max_rel_diff:.2e})"
        )
    lines.append(f"barriers   definition {study.definition}, loss {study.loss}, bn {study.bn}")
    lines += _barrier_rows(study)
    for name, pair in study.pairs.items():
        if pair.layerwise is not None:
            lines += _layer_rows(name, pair.layerwise)
    for name, path in report.written.items():
        if not name.startswith("plot_"):
            lines.append(f"wrote      {name}: {path}")
    return "\n".join(lines)


def _barrier_rows(study: Any) -> list[str]:
    d = study.definition
    head = (
        f"{'':8} {'split':6} {'loss barrier':>13} {'error barrier':>14} {'loss@0.5':>9} "
        f"{'acc@0.5':>8} {'acc A':>7} {'acc B':>7}"
    )
    rows = ["", head]
    for name, pair in study.pairs.items():
        for split, res in pair.splits.items():
            bar, mid = res.barriers[d], res.midpoint
            start, end = res.endpoints
            rows.append(
                f"{name:8} {split:6} {bar.loss:13.4f} {bar.error:14.2%} {mid.loss:9.4f} "
                f"{mid.accuracy:8.2%} {start.accuracy:7.2%} {end.accuracy:7.2%}"
            )
        if d in pair.bootstrap:
            ci = pair.bootstrap[d]
            rows.append(
                f"{'':8} {'test':6} {ci.confidence:.0%} interval: loss [{ci.loss.low:.4f}, "
                f"{ci.loss.high:.4f}], error [{ci.error.low:.2%}, {ci.error.high:.2%}] "
                f"({ci.samples} resamples)"
            )
    return rows  # fmt: skip


def _layer_rows(name: str, result: Any) -> list[str]:
    rows = [
        "",
        f"layer-wise {result.definition} loss barrier, {name} "
        "(test; against the full models' endpoints)",
        f"{'group':16} {'rest from A':>12} {'rest from B':>12} {'layers 1..k':>12}",
    ]
    for layer in result.layers:
        rows.append(
            f"{layer.group.name[:16]:16} {layer.from_a.barrier.loss:12.4f} "
            f"{layer.from_b.barrier.loss:12.4f} {layer.cumulative.barrier.loss:12.4f}"
        )
    return rows  # fmt: skip
