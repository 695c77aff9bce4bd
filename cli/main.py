"""``modeconnect``: a thin click front end. Each command parses, calls one library
function, and formats the result. User errors print one line and exit with code 2."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
import torch

from modeconnect.errors import ModeconnectError

SEED = click.IntRange(0, 2**63 - 1)
"""Seeds fit torch.Generator.manual_seed and NumPy."""

DTYPES = {"float32": torch.float32, "float64": torch.float64, "long": torch.long, "int": torch.long}


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ModeconnectError into one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModeconnectError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def pop_trust(opts: dict[str, Any]) -> Any:
    """The ``Trust`` that ``--trust-model-ref`` and ``--trust-module`` ask for."""
    from modeconnect.files.references import Trust

    return Trust(tuple(opts.pop("trust_module", ())), bool(opts.pop("trust_model_ref", False)))


def _json_kwargs(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(
            f"must be a JSON object like '{{\"hidden\": [64]}}', got {value!r}"
        )
    return parsed


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        shape = tuple(int(s) for s in value.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers like 2,3,32,32, got {value!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise click.BadParameter(f"expected positive sizes like 2,3,32,32, got {value!r}")
    return shape


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options that choose the architecture and its example input, shared by every command."""
    options = [
        click.option("--model", "model", metavar="MODULE:CALLABLE",
                     help="Architecture: 'pkg.module:fn' or 'path/file.py:fn' "
                          "(overrides the checkpoint's)."),
        click.option("--model-kwargs", callback=_json_kwargs, metavar="JSON",
                     help="Keyword arguments for --model, as a JSON object."),
        click.option("--input-shape", callback=_shape, metavar="N,C,H,W",
                     help="Shape of a probe input when the model's input cannot be inferred."),
        click.option("--input-dtype", type=click.Choice(sorted(DTYPES)), default=None,
                     help="Dtype of the probe input (e.g. long for token ids)."),
        click.option("--permute-output", is_flag=True,
                     help="The model returns hidden states that may come back permuted."),
        click.option("--trust-model-ref", is_flag=True,
                     help="Run the model reference a checkpoint names even if it is not a known "
                          "architecture constructor (it runs that file's code; see SECURITY.md)."),
        click.option("--trust-module", multiple=True, metavar="MODULE",
                     help="Let checkpoints name constructors from this module (e.g. timm); "
                          "repeatable."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modeconnect")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch (default: torch's choice). On a busy machine, 1 is often "
    "fastest for small models.",
)
def main(threads: int | None) -> None:
    """Mode connectivity and model merging: align permutations, measure barriers, merge."""
    _exit_cleanly_on_signals()
    if threads is not None:
        torch.set_num_threads(threads)


def _exit_cleanly_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit``, so that staged outputs are removed."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


@main.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@model_options
@click.option(
    "--data",
    metavar="FILE|MODULE:CALLABLE",
    help="Evaluation data: .pt/.npz with x and y, or a callable.",
)
@click.option(
    "--out",
    type=click.Path(),
    help="Write B permuted into A's basis (.pt or .safetensors).",
)
@click.option(
    "--merged", type=click.Path(), help="Write (1-alpha)*A + alpha*aligned B."
)
@click.option(
    "--alpha",
    type=float,
    default=0.5,
    show_default=True,
    help="Interpolation weight of B in --merged.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=2),
    default=25,
    show_default=True,
    help="Points on the interpolation curve.",
)
@click.option("--method", default="weight", show_default=True, help="Alignment method.")
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help="Seed of the group order (all methods).",
)
@click.option(
    "--train",
    metavar="FILE|MODULE:CALLABLE",
    help="Training data: activation statistics (default: --data) and --bn.",
)
@click.option(
    "--bn",
    type=click.Choice(["none", "reset", "repair"]),
    default="none",
    show_default=True,
    help="Correct --merged on --train: reset BatchNorm statistics, or REPAIR (no-BN nets).",
)
@click.option(
    "--restarts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Weight-matching runs; the best objective is kept.",
)
@click.option(
    "--statistic",
    type=click.Choice(["correlation", "moment"]),
    help="Activation statistic (activation, ot with --cost activations).",
)
@click.option(
    "--max-batches", type=click.IntRange(min=1), help="Bound on batches for activation statistics."
)
@click.option(
    "--ot-solver", type=click.Choice(["emd", "sinkhorn"]), help="OT solver: exact or entropic."
)
@click.option(
    "--reg",
    type=click.FloatRange(min=0, min_open=True),
    help="Sinkhorn regularisation (relative to the normalised cost).",
)
@click.option("--cost", type=click.Choice(["weights", "activations"]), help="OT ground cost.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option(
    "--json", "json_path", type=click.Path(), help="Write the full result as JSON."
)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@_user_errors
def align(a: str, b: str, **opts: Any) -> None:  # fmt: skip
    """Align checkpoint B's units to A's, verify, evaluate and write the results."""
    from modeconnect.files.align import align_files

    report = align_files(a, b, trust=pop_trust(opts), **opts)
    click.echo(_format_align(report))


def _format_align(report: Any) -> str:
    res = report.result
    al, eq, groups = res.alignment, res.equivalence, res.spec.groups
    units = sum(g.size for g in groups.values())
    lines = [
        f"model      {report.model_ref}",
        f"spec       {len(groups)} permutation groups, {units} units, "
        f"{len(res.spec.fixed)} fixed axes",
        f"alignment  {al.method}: objective {al.objective:.6g}, {al.iterations} sweeps, "
        f"{al.seconds:.2f} s",
        f"guard      aligned B == B (max abs diff {eq.max_abs_diff:.2e}, "
        f"rel {eq.max_rel_diff:.2e})",
    ]
    if report.curves is not None:
        lines += ["", *_barrier_table(report.curves)]
    lines += [f"wrote      {name}: {path}" for name, path in report.written.items()]
    return "\n".join(lines)


def _barrier_table(curves: Any) -> list[str]:
    """Naive vs aligned barriers, and the accuracy at the point nearest the midpoint."""
    mid = min(
        range(len(curves.naive.points)), key=lambda i: abs(curves.naive.points[i].alpha - 0.5)
    )
    head = f"acc at a={curves.naive.points[mid].alpha:.2f}"
    a, b = curves.naive.points[0], curves.naive.points[-1]
    rows = [f"{'':10} {'loss barrier':>13} {'error barrier':>14} {head:>14}"]
    for label, bar, curve in (
        ("naive", curves.naive_barrier, curves.naive),
        ("aligned", curves.aligned_barrier, curves.aligned),
    ):
        acc = curve.points[mid].accuracy
        rows.append(f"{label:10} {bar.loss:13.4f} {bar.error:14.2%} {acc:14.2%}")
    rows.append(
        f"endpoints  A: loss {a.loss:.4f} acc {a.accuracy:.2%}   "
        f"B: loss {b.loss:.4f} acc {b.accuracy:.2%}"
    )
    return rows


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@model_options
@click.option(
    "--json", "json_path", type=click.Path(), help="Write the groups as JSON."
)
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
@_user_errors
def spec(checkpoint: str | None, **opts: Any) -> None:
    """Print the permutation groups derived from the model's graph."""
    from modeconnect.files.spec import spec_files

    result = spec_files(
        checkpoint, model=opts["model"], model_kwargs=opts["model_kwargs"],
        input_shape=opts["input_shape"], input_dtype=opts["input_dtype"],
        permute_output=opts["permute_output"], json_path=opts["json_path"], force=opts["force"],
        trust=pop_trust(opts),
    )  # fmt: skip
    click.echo(_format_spec(result))


def _format_spec(spec: Any) -> str:
    lines = [f"{len(spec.groups)} permutation groups"]
    for g in spec.groups.values():
        inner = f" (one per block of {g.batch_over})" if g.batch_over else ""
        lines.append(f"  {g.name}  size {g.size}{inner}")
        for m in g.members:
            lines.append(f"      {m.key}  axis {m.axis}")
    if spec.fixed:
        lines.append(f"{len(spec.fixed)} fixed axes")
        for f in spec.fixed:
            lines.append(f"  {f.key}  axis {f.axis}  size {f.size}: {f.reason}")
    return "\n".join(lines)


def _register_commands() -> None:
    """Commands that live in their own modules (each defines ``register(main)``)."""
    from modeconnect_cli import barrier, compare, merge

    merge.register(main)
    compare.register(main)
    barrier.register(main)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
