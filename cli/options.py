"""Every command-line option, defined once; each command takes the groups it needs.

An option name means the same thing in every command: ``--data`` is always the
evaluation data, ``--train`` always the training data (activation statistics,
BatchNorm reset and REPAIR, curve training), ``--method`` always a name from the
alignment registry. This module imports click and nothing heavy (no torch), so
``modeconnect --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import click

from modeconnect.choices import DEFAULT_BN_EXAMPLES, DEVICES, EVAL_DTYPES, INPUT_DTYPES
from modeconnect.errors import MAX_MESSAGE, ModeconnectError, printable
from modeconnect.fusion.declared import FUSION_INFOS
from modeconnect.matching import METHOD_NAMES, METHODS, MethodInfo, Param

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

SEED = click.IntRange(0, 2**63 - 1)
"""Seeds fit torch.Generator.manual_seed and NumPy."""
NO_ALIGNMENT = "none"


def group(*options: Decorator) -> Decorator:
    """Several options as one decorator, in the order given (as ``--help`` lists them)."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


# --------------------------------------------------------------------------- parsers


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A JSON object, read within the bounds of JSON from files (depth, digits, size)."""
    if value is None:
        return None
    from modeconnect.io.jsonfile import parse_json

    example = "pass a JSON object like '{\"hidden\": [64]}'"
    try:
        parsed = parse_json(value, _quoted(value), example)
    except ModeconnectError as exc:
        raise click.BadParameter(str(exc)) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"{_quoted(value)}: is a JSON {type(parsed).__name__}; {example}")
    return parsed


def _quoted(value: str, limit: int = 60) -> str:
    """``repr(value)``, shortened: a value typed or pasted can be as long as a file."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]}"


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


def _csv(example: str) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise click.BadParameter(
                f"expected a comma-separated list like {example}, got {value!r}"
            )
        return items

    return parse


def choices_csv(
    choices: tuple[str, ...],
) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A comma-separated list of names from ``choices`` (``all``: every one)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        items = _csv(",".join(choices[:2]))(ctx, param, value)
        if items is None or items == ["all"]:
            return None
        unknown = [i for i in items if i not in choices]
        if unknown:
            raise click.BadParameter(
                f"{unknown[0]!r} is not one of {', '.join(repr(c) for c in choices)}"
            )
        return list(dict.fromkeys(items))

    return parse


def _numbers(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    items = _csv("1,2,1")(ctx, param, value)
    if items is None:
        return None
    try:
        return [float(s) for s in items]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers like 1,2,1, got {value!r}"
        ) from None


# --------------------------------------------------------------------------- the architecture

MODEL = group(
    click.option("--model", metavar="MODULE:CALLABLE",
                 help="Architecture: 'pkg.module:fn' or 'path/file.py:fn' (overrides the "
                      "checkpoint's; runs that code)."),
    click.option("--model-kwargs", callback=_json_object, metavar="JSON",
                 help="Keyword arguments for the architecture, as a JSON object."),
    click.option("--trust-model-ref", is_flag=True,
                 help="Run the model reference a checkpoint names even if it is not a known "
                      "architecture constructor (it runs that file's code; see SECURITY.md)."),
    click.option("--trust-module", multiple=True, metavar="MODULE",
                 help="Let checkpoints name model classes (nn.Module subclasses, never "
                      "functions or loaders) of this module (e.g. timm); repeatable."),
    click.option("--input-shape", callback=_shape, metavar="N,C,H,W",
                 help="Shape of the probe input, when there is no --data and the model's "
                      "input cannot be inferred."),
    click.option("--input-dtype", type=click.Choice(INPUT_DTYPES),
                 help="Dtype of the probe input (long for token ids)."),
)  # fmt: skip
"""The architecture and its probe input, for commands that align nothing."""
ARCHITECTURE = group(
    MODEL,
    click.option("--permute-output", is_flag=True,
                 help="The model returns hidden states that may come back permuted."),
)  # fmt: skip


def trust(opts: dict[str, Any]) -> Any:
    """Pop ``--trust-model-ref`` and ``--trust-module`` into a ``Trust``."""
    from modeconnect.io.references import Trust

    return Trust(tuple(opts.pop("trust_module", ())), bool(opts.pop("trust_model_ref", False)))


# --------------------------------------------------------------------------- data

DATA_HELP = "Evaluation data: .pt/.npz with x and y, or MODULE:CALLABLE."
TRAIN_HELP = "Training data: activation statistics and --bn (default: --data)."


def data(required: bool = False, help: str = DATA_HELP) -> Decorator:
    return click.option("--data", required=required, metavar="FILE|MODULE:CALLABLE",
                        help=help)  # fmt: skip


def train(help: str = TRAIN_HELP, required: bool = False) -> Decorator:
    """``--train``; ``help`` says what the command uses it for."""
    return click.option("--train", required=required, metavar="FILE|MODULE:CALLABLE", help=help)


TRAIN = train()


def batch_size(default: int = 500) -> Decorator:
    """``--batch-size``; commands that train (``curve``) want smaller batches by default."""
    return click.option(
        "--batch-size", type=click.IntRange(min=1), default=default, show_default=True,
        help="Examples per batch of --data and --train.",
    )  # fmt: skip


BATCH_SIZE = batch_size()
SEED_OPTION = click.option(
    "--seed", type=SEED, default=0, show_default=True,
    help="Seed of everything random: group order, restarts, bootstrap, curves.",
)  # fmt: skip
STEPS = click.option(
    "--steps", type=click.IntRange(min=2), default=25, show_default=True,
    help="Evenly spaced interpolation points from 0 to 1, both included.",
)  # fmt: skip


_BN_CHOICES = {
    "auto": "auto: reset if the model has BatchNorm",
    "reset": "reset: recompute BatchNorm statistics",
    "repair": "repair: REPAIR (nets without BatchNorm)",
}


def bn(choices: tuple[str, ...] = ("none", "reset", "repair"), default: str = "none") -> Decorator:
    """``--bn``: the statistics of every evaluated model, recomputed on ``--train``."""
    what = "; ".join(_BN_CHOICES[c] for c in choices if c in _BN_CHOICES)
    return click.option(
        "--bn", type=click.Choice(choices), default=default, show_default=True,
        help=f"Statistics at every evaluated point, on --train ({what}; none: as stored).",
    )  # fmt: skip


class _BatchCap(click.ParamType):
    """A positive number of batches, or ``all``."""

    name = "N|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        if text == "all":
            return "all"
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            self.fail(f"{value!r} is neither a positive number of batches nor 'all'", param, ctx)
        return int(text)


MAX_BN_BATCHES = click.option(
    "--max-bn-batches", type=_BatchCap(), metavar="N|all",
    help=f"Batches of --train for each BatchNorm reset, or 'all' [default: the whole "
    f"batches holding at most {DEFAULT_BN_EXAMPLES} examples, at least one: a barrier "
    "within 0.006 nats of the full reset's on the digits CNN, whose 95 % bootstrap "
    "half-width is 0.086].",
)  # fmt: skip
POINTS_PER_PASS = click.option(
    "--points-per-pass", type=click.IntRange(min=1), metavar="K",
    help="Parameter points (alphas, grid points) evaluated in one vectorised pass "
         "[default: from the model, the data and a memory budget; 1: one by one].",
)  # fmt: skip
LOSS = click.option(
    "--loss", default="ce", show_default=True, metavar="ce|mse|MODULE:CALLABLE",
    help="Loss: cross-entropy, squared error, or a callable of per-example losses.",
)  # fmt: skip
DEFINITION = click.option(
    "--definition", type=click.Choice(["lerp", "mean"]), default="lerp", show_default=True,
    help="Barrier definition reported first (the JSON has both).",
)  # fmt: skip


# --------------------------------------------------------------------------- paths and grids

CURVE_KINDS = ("bezier", "polychain")
"""The names of ``modeconnect.curve_fitting.CURVE_KINDS`` (that module imports torch)."""


def curve_kind(default: str | None, help: str) -> Decorator:
    return click.option("--curve", type=click.Choice(CURVE_KINDS), default=default,
                        show_default=default is not None, help=help)  # fmt: skip


def resolution(default: int | None, help: str) -> Decorator:
    return click.option("--resolution", type=click.IntRange(min=2), default=default,
                        show_default=default is not None, metavar="N", help=help)  # fmt: skip


# --------------------------------------------------------------------------- alignment


def method(
    name: str = "--method",
    allow_none: bool = False,
    default: str = "weight",
    extra: Sequence[str] = (),
) -> Decorator:
    """The alignment method, a choice of the registry (plus ``none`` where it makes sense,
    and the ``extra`` names: ``merge``'s fusion methods)."""
    choices = (*METHOD_NAMES, NO_ALIGNMENT) if allow_none else METHOD_NAMES
    choices = (*choices, *extra)
    dest = "method" if name == "--method" else name.lstrip("-")
    return click.option(
        name, dest, type=click.Choice(choices), default=default, show_default=True,
        help="Alignment method" + (" ('none': no alignment)" if allow_none else "")
             + "; the flags each method takes are marked with its name.",
    )  # fmt: skip


def _click_type(param: Param) -> Any:
    """The click type that checks a value of ``param``: its choices or its range."""
    if param.choices is not None:
        return click.Choice(param.choices)
    if param.type is int:
        return click.IntRange(
            None if param.min is None else int(param.min),
            None if param.max is None else int(param.max),
            min_open=param.min_open,
        )
    if param.type is float:
        return click.FloatRange(param.min, param.max, min_open=param.min_open)
    return {bool: click.BOOL, str: click.STRING}[param.type]


def _flag_help(param: Param, methods: list[tuple[str, Param]]) -> str:
    """The declared help, the default (per method where they differ), the methods that take it."""
    defaults = {str(p.default) for _, p in methods if p.default is not None}
    if len(defaults) == 1:
        default = f" [default: {defaults.pop()}]"
    elif defaults:
        default = " [default: " + ", ".join(f"{m} {p.default}" for m, p in methods) + "]"
    else:
        default = ""
    return f"{param.help}{default} [{', '.join(m for m, _ in methods)}]"


def method_flags(infos: Sequence[MethodInfo]) -> tuple[Decorator, dict[str, str]]:
    """One click option per distinct flag the methods ``infos`` declare, and key -> flag.

    Each option has the declared type, range or choices and help, ``None`` when not
    given (the method's own default applies), and lists the methods that take it.
    Methods that share a flag must declare the same parameter (name, type, range).
    """
    takers: dict[str, list[tuple[str, Param]]] = {}
    for info in infos:
        for p in info.params:
            if p.flag is not None:
                takers.setdefault(p.flag, []).append((info.name, p))
    options = []
    for flag, methods in takers.items():
        first = methods[0][1]
        shape = (first.name, first.type, first.choices, first.min, first.max, first.min_open)
        for name, p in methods[1:]:
            if (p.name, p.type, p.choices, p.min, p.max, p.min_open) != shape:
                raise ValueError(
                    f"{flag}: method {name!r} declares it unlike {methods[0][0]!r}; a flag "
                    "means one parameter: give one of them another flag"
                )
        options.append(
            click.option(
                flag,
                first.key,
                type=_click_type(first),
                default=None,
                help=_flag_help(first, methods),
            )
        )
    return group(*options), {ps[0][1].key: flag for flag, ps in takers.items()}


METHOD_OPTIONS, METHOD_FLAGS = method_flags([METHODS.info(name) for name in METHOD_NAMES])
"""Every built-in method's flags (``--restarts``, ``--ot-solver``, ...), from their
declarations in :mod:`modeconnect.matching`; and each flag's destination -> the flag."""
FUSION_OPTIONS, FUSION_FLAGS = method_flags(
    [
        dataclasses.replace(i, params=tuple(p for p in i.params if p.key not in METHOD_FLAGS))
        for i in FUSION_INFOS
    ]
)
"""``merge``'s fusion methods' flags (``--zip-alpha``, ``--transport``, ...), from their
declarations in :mod:`modeconnect.fusion.declared`."""
WIDTH = click.option(
    "--width", default=None, metavar="N|GROUP=N,...",
    help="Fused widths (fusion methods): one number for every group that can change width "
         "(head counts excepted), or group=width pairs (see 'modeconnect spec'); default: the "
         "first model's.",
)  # fmt: skip
METHOD_OPTION_NAMES = tuple(METHOD_FLAGS)
"""The destinations of the method flags (``restarts``, ``ot_solver``, ...)."""


def check_method_flags(
    methods: Sequence[str] | None, opts: Mapping[str, Any], choice: str = "--method"
) -> None:
    """Raise :class:`ModeconnectError` for a method flag in ``opts`` none of ``methods`` takes.

    ``methods`` are the chosen names (``None``: every built-in one; ``none``: no
    alignment). The one-line message names the flags, the method chosen with
    ``choice`` and the flags it takes.
    """
    given = [flag for key, flag in METHOD_FLAGS.items() if opts.get(key) is not None]
    names = [m for m in (METHOD_NAMES if methods is None else methods) if m != NO_ALIGNMENT]
    infos = [METHODS.info(m) for m in dict.fromkeys(names)]
    taken = _flags_of(infos)
    foreign = [flag for flag in given if flag not in taken]
    if not foreign:
        return
    them = "it" if len(foreign) == 1 else "them"
    what, listed = ", ".join(foreign), ", ".join(taken)
    if not infos:
        raise ModeconnectError(
            f"{what}: {choice} {NO_ALIGNMENT} aligns nothing, so no method takes {them}; "
            f"choose a method ({', '.join(METHOD_NAMES)}) or leave {them} out"
        )
    if len(infos) == 1:
        raise ModeconnectError(
            f"{what}: method {infos[0].name!r} does not take {them}; {infos[0].name} takes "
            f"{listed or 'no method flags'}"
        )
    raise ModeconnectError(
        f"{what}: none of the methods {', '.join(i.name for i in infos)} takes {them}; "
        f"they take {listed or 'no method flags'}"
    )


def _flags_of(infos: Sequence[MethodInfo]) -> list[str]:
    """The flags of ``infos``, each once, in declaration order."""
    return list(dict.fromkeys(f for info in infos for f in info.flags))


def pop_method_options(
    opts: dict[str, Any], method: str | None, choice: str = "--align"
) -> dict[str, Any]:
    """Pop the method flags given from ``opts``, for an alignment inside a study.

    A flag that ``method`` (chosen with ``choice``; ``None`` or ``none``: no alignment)
    does not take raises, as :func:`check_method_flags` says.
    """
    check_method_flags([method or NO_ALIGNMENT], opts, choice)
    return {k: v for k in METHOD_FLAGS if (v := opts.pop(k, None)) is not None}


SYMMETRY = group(
    click.option(
        "--symmetry", type=click.Choice(("permutation", "orthogonal", "full")),
        default="permutation", show_default=True,
        help="Symmetry group aligned under: permutations; 'orthogonal' also rotates "
             "transformers' residual streams (norms folded into their readers); 'full' also "
             "maps each attention head's value and query·key dims. --method learned implies "
             "full.",
    ),
    click.option(
        "--head-maps", type=click.Choice(("orthogonal", "least-squares", "activations")),
        default="orthogonal", show_default=True,
        help="--symmetry full: each head's maps orthogonal, or least squares (invertible, "
             "condition number at most 100, else their orthogonal part), fitted to the "
             "weights; or orthogonal, fitted to the heads' activations (--method "
             "activation).",
    ),
)  # fmt: skip
"""``--symmetry`` and ``--head-maps`` (:data:`modeconnect.symmetry.align.HEAD_MAPS`)."""


SYMMETRIES = click.option(
    "--symmetry", "symmetries", callback=choices_csv(("permutation", "orthogonal", "full")),
    metavar="NAME,...",
    help="Symmetries to compare, comma-separated (permutation, orthogonal, full): a row per "
         "method and symmetry (default: each method as align runs it, today's table).",
)  # fmt: skip


ALPHA = click.option(
    "--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
    help="Weight of B in the merge: (1-alpha)*A + alpha*B.",
)  # fmt: skip


# --------------------------------------------------------------------------- outputs


def output(name: str, what: str, dest: str | None = None, **kwargs: Any) -> Decorator:
    """An output path; every target is checked by the library before any work."""
    return click.option(name, dest or name.lstrip("-").replace("-", "_"), type=click.Path(),
                        help=what, **kwargs)  # fmt: skip


JSON = output("--json", "Write every number as JSON (.json).", dest="json_path")
REPORT = output("--report", "Write plots and report.html into this folder.", dest="report_dir")
FORCE = click.option("--force", is_flag=True, help="Overwrite existing outputs (never inputs).")
QUIET = click.option("--quiet", is_flag=True, help="No progress bars.")
VERBOSE = click.option("--verbose", "-v", is_flag=True,
                       help="Print where the time went (load, spec, matching, ...).")  # fmt: skip
STUDY_OUTPUTS = group(JSON, REPORT, QUIET, FORCE, VERBOSE)
"""What every study (barrier, curve, plane, landscape, sharpness) writes and prints."""
OUTPUTS = group(JSON, FORCE, QUIET, VERBOSE)
"""What align and merge write and print besides their checkpoints."""


def weights_option() -> Decorator:
    return click.option(
        "--weights", callback=_numbers, metavar="W1,W2,...",
        help="One weight per checkpoint (e.g. example counts); default equal.",
    )  # fmt: skip


def names_option(name: str, example: str, help: str) -> Decorator:
    return click.option(name, callback=_csv(example), metavar=example, help=help)


# --------------------------------------------------------------------------- large models

DEVICE = click.option(
    "--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
    help="Where the work runs: similarity products, curve training, evaluation (auto: CUDA "
         "when available).",
)  # fmt: skip
DTYPE = click.option(
    "--dtype", type=click.Choice(EVAL_DTYPES),
    help="Dtype of evaluation [default: the model's, float32]; bfloat16 halves its memory "
         "(use it on a GPU).",
)  # fmt: skip
BLOCK_SIZE = click.option(
    "--block-size", type=click.IntRange(min=2), metavar="N",
    help="Tokens per example when --data is a text file (tokenized with the checkpoint's "
         "tokenizer) [default: 512, or the model's context if shorter].",
)  # fmt: skip
LARGE_MODELS = group(DEVICE, DTYPE, BLOCK_SIZE)
"""Hugging Face directories and large models: devices, evaluation dtype, text blocks."""


# --------------------------------------------------------------------------- past one machine

RAY = group(
    click.option(
        "--ray", metavar="auto|ADDRESS",
        help="Run the independent work (grid rows, path points, compare's methods, sweep "
             "rows) on Ray: auto starts a local cluster (or joins RAY_ADDRESS's), HOST:PORT "
             'joins a running one. Same numbers as without it. Needs pip install '
             '"modeconnect[ray]".',
    ),
    click.option(
        "--workers", type=click.IntRange(min=1), metavar="N",
        help="CPUs of the local Ray cluster (--ray auto) [default: all].",
    ),
)  # fmt: skip
"""Ray: where independent tasks run (modeconnect.distributed)."""
EVALUATED_POINTS = group(MAX_BN_BATCHES, POINTS_PER_PASS)
"""How the points of a path or grid are evaluated: batches per BatchNorm reset, points per pass."""
GRID_STUDY = group(EVALUATED_POINTS, LOSS, BATCH_SIZE, RAY, DEVICE, STUDY_OUTPUTS)
"""How a grid study (plane, landscape) evaluates its points (rows on Ray), and its outputs."""


# --------------------------------------------------------------------------- running a command


def command(group_: click.Group, **settings: Any) -> Decorator:
    """Register a command on ``group_``: any error it raises becomes one line and exit code 2.

    A ``ModeconnectError`` is printed as it is; any other exception (a bug met by an
    input nobody foresaw) as :func:`unexpected` says. Click's own exceptions (usage
    errors, ``ctx.exit``), ``SystemExit`` and ``KeyboardInterrupt`` pass through:
    outputs staged when they arrive are removed as they unwind
    (:class:`~modeconnect.io.targets.Staging`), before anything is printed.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            _exit_cleanly_on_signals()
            try:
                return fn(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except BrokenPipeError:
                raise  # output piped into `head`: click ends quietly
            except Exception as exc:
                fail(exc)

        return group_.command(**settings)(run)

    return register


DEBUG_VARIABLE = "MODECONNECT_DEBUG"
"""Set to 1 to get the traceback of an unexpected error instead of its one line."""


def fail(exc: Exception) -> NoReturn:
    """Print ``exc`` as one ``Error:`` line on stderr and exit with code 2.

    With ``MODECONNECT_DEBUG=1`` an exception that is not a ``ModeconnectError`` is
    raised again instead, so that Python prints its traceback.
    """
    if not isinstance(exc, ModeconnectError) and os.environ.get(DEBUG_VARIABLE, "") not in (
        "", "0",
    ):  # fmt: skip
        raise exc
    click.echo(f"Error: {exc if isinstance(exc, ModeconnectError) else unexpected(exc)}", err=True)
    sys.exit(2)


def unexpected(exc: BaseException) -> str:
    """One printable line for an exception modeconnect did not expect: what it is, what to do."""
    try:
        said = " ".join(str(exc).split())
    except Exception:  # a message that cannot even be printed
        said = ""
    what = printable(f"{type(exc).__name__}: {said}" if said else type(exc).__name__, 300)
    if isinstance(exc, MemoryError):
        return (
            f"out of memory ({what}); use a smaller --batch-size or a machine with more memory "
            f"(set {DEBUG_VARIABLE}=1 to see the traceback)"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return printable(
            f"{exc.filename}: {exc.strerror or type(exc).__name__} ({type(exc).__name__}); "
            f"check the path, its permissions and the disk (set {DEBUG_VARIABLE}=1 to see the "
            "traceback)",
            MAX_MESSAGE,
        )
    return (
        f"unexpected internal error ({what}); modeconnect did not foresee this input, please "
        f"report it with the command line (set {DEBUG_VARIABLE}=1 to see the traceback)"
    )


def _exit_cleanly_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit``, so that staged outputs are removed."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
