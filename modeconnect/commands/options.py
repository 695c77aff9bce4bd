"""One options object per command, built from shared values.

Every command takes the same four things in the same way, as values of their own:

* :class:`Sources`: where the architecture comes from and what files may name
  (``--model``, ``--model-kwargs``, ``--trust-module``, ``--trust-model-ref``);
* :class:`Inputs`: the data a command reads and the probe (``--data``, ``--train``,
  ``--batch-size``, ``--input-shape``, ``--input-dtype``, ``--block-size``);
* :class:`Run`: where it runs and how it reports (``--device``, ``--dtype``, progress,
  timings, the command line for reports);
* its outputs: ``json_path`` and ``force`` here, the rest on the command's class.

A command's class (:class:`AlignOptions`, ...) adds what only that command takes. The
CLI parses its flags once into one of these (:meth:`Options.from_keywords`, which sorts
flat keywords into the shared values by name) and the ``*_files`` function takes it
whole; ``*_files(..., **keywords)`` builds it the same way, so the flat keywords of 0.2.0
keep working. An unknown keyword is an error that lists the ones the command takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from modeconnect.errors import ModeconnectError
from modeconnect.io.references import NO_TRUST, Trust
from modeconnect.progress import ProgressFn
from modeconnect.timing import Timings

__all__ = [
    "AlignOptions",
    "BarrierOptions",
    "CompareOptions",
    "CurveOptions",
    "Inputs",
    "LandscapeOptions",
    "MergeOptions",
    "Options",
    "PlaneOptions",
    "Run",
    "SharpnessOptions",
    "Sources",
    "SpecOptions",
    "SweepOptions",
]

Opts = TypeVar("Opts", bound="Options")
Path_ = str | Path | None


@dataclass(frozen=True)
class Sources:
    """Where the architecture comes from, and what a file may name (SECURITY.md)."""

    model: str | None = None
    model_kwargs: Mapping[str, Any] | None = None
    trust: Trust = NO_TRUST


@dataclass(frozen=True)
class Inputs:
    """The data a command reads (evaluation and training splits) and the probe's shape."""

    data: Path_ = None
    train: Path_ = None
    batch_size: int = 500
    input_shape: Sequence[int] | None = None
    input_dtype: Any = None
    block_size: int | None = None


@dataclass(frozen=True)
class Run:
    """Where a command runs and how it reports: device, evaluation dtype, progress, timings,
    and the command line as typed (for reports)."""

    device: str | None = "cpu"
    dtype: Any = None
    progress: ProgressFn | None = None
    timings: Timings | None = None
    command: str | None = None
    points_per_pass: int | None = None
    """Parameter points per vectorised pass (``None``: chosen from the model and the data)."""

    def clock(self) -> Timings:
        """The timings to record into (a new one when none was given)."""
        return self.timings if self.timings is not None else Timings()


_SHARED = {"sources": Sources, "inputs": Inputs, "run": Run}


@dataclass(frozen=True)
class Options:
    """What every command takes (module docstring); subclasses add their own fields."""

    sources: Sources = field(default_factory=Sources)
    inputs: Inputs = field(default_factory=Inputs)
    run: Run = field(default_factory=Run)
    json_path: Path_ = None
    force: bool = False

    REST: ClassVar[str | None] = None
    """The mapping field that takes keywords no field names (a method's own options)."""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    """Options the command cannot run without (checked by :meth:`build`)."""

    @classmethod
    def from_keywords(cls: type[Opts], keywords: Mapping[str, Any]) -> Opts:
        """The options that flat ``keywords`` (the CLI's flag names) describe.

        A keyword naming a field of :class:`Sources`, :class:`Inputs` or :class:`Run`
        goes there; one naming a field of the command's class goes there; the rest go
        into :attr:`REST` if the command has one, else they are an error.
        """
        remaining = dict(keywords)
        values: dict[str, Any] = {}
        defaults = cls()
        for name in _SHARED:
            base = getattr(defaults, name)
            mine = {k: remaining.pop(k) for k in list(remaining) if k in _names(base)}
            values[name] = dataclasses.replace(base, **mine)
        own = _names(cls) - set(_SHARED)
        values.update({k: remaining.pop(k) for k in list(remaining) if k in own})
        if remaining and cls.REST is not None:
            values[cls.REST] = {**dict(values.get(cls.REST) or {}), **remaining}
            remaining = {}
        if remaining:
            valid = sorted(own | {n for v in _SHARED.values() for n in _names(v)})
            raise ModeconnectError(
                f"{cls.__name__}: unknown option{'s' if len(remaining) > 1 else ''} "
                f"{', '.join(sorted(remaining))}; the command takes {', '.join(valid)}"
            )
        return cls(**values)

    @classmethod
    def build(cls: type[Opts], options: Opts | None, keywords: Mapping[str, Any]) -> Opts:
        """``options`` as given, or built from ``keywords`` (not both)."""
        if options is None:
            return cls.from_keywords(keywords).checked()
        if keywords:
            raise ModeconnectError(
                f"pass either {cls.__name__} or keyword options, not both (got "
                f"{', '.join(sorted(keywords))} besides the options)"
            )
        if not isinstance(options, cls):
            raise ModeconnectError(
                f"expected {cls.__name__}, got {type(options).__name__}; build it with "
                f"{cls.__name__}.from_keywords(...)"
            )
        return options.checked()

    def checked(self: Opts) -> Opts:
        """``self``, once every option in :attr:`REQUIRED` is given."""
        missing = [n for n in self.REQUIRED if self.value(n) is None]
        if missing:
            flags = ", ".join("--" + n.replace("_", "-") for n in missing)
            raise ModeconnectError(
                f"{type(self).__name__}: {flags} must be given; the command needs "
                f"{'them' if len(missing) > 1 else 'it'}"
            )
        return self

    def value(self, name: str) -> Any:
        """The option ``name``, wherever it lives (a shared value's field or the command's)."""
        for shared in _SHARED:
            part = getattr(self, shared)
            if name in _names(part):
                return getattr(part, name)
        return getattr(self, name)


def _names(cls_or_value: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls_or_value)}


# --------------------------------------------------------------------------- the commands


@dataclass(frozen=True)
class SpecOptions(Options):
    """``modeconnect spec``."""

    permute_output: bool = False


@dataclass(frozen=True)
class AlignOptions(Options):
    """``modeconnect align``: the method and its options, the outputs, the curves."""

    method: str = "weight"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    permute_output: bool = False
    bn: str = "none"
    alpha: float = 0.5
    steps: int = 25
    symmetry: str = "permutation"
    head_maps: str = "orthogonal"
    out: Path_ = None
    merged: Path_ = None

    REST: ClassVar[str | None] = "method_options"


@dataclass(frozen=True)
class MergeOptions(Options):
    """``modeconnect merge``: N checkpoints into one."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("out",)
    out: Path_ = None
    weights: Sequence[float] | None = None
    method: str = "weight"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    reference: Any = None
    bn: str = "none"
    permute_output: bool = False
    width: Any = None
    """Fused widths (``--width``): a number, ``group=width`` pairs, or None (the first model's)."""
    symmetry: str = "permutation"
    head_maps: str = "orthogonal"

    REST: ClassVar[str | None] = "method_options"


@dataclass(frozen=True)
class CompareOptions(Options):
    """``modeconnect compare``: every method on one pair."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("data",)

    methods: Sequence[str] | None = None
    method_options: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 25
    seed: int = 0
    permute_output: bool = False
    ray: str | None = None
    workers: int | None = None
    symmetries: Sequence[str] | None = None
    """Symmetries compared (``--symmetry a,b``): a row per method and symmetry; None: today's."""

    REST: ClassVar[str | None] = "method_options"


@dataclass(frozen=True)
class BarrierOptions(Options):
    """``modeconnect barrier``: the study (its options in ``study``), the report, and the Ray
    cluster its path points may run on."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("data",)

    report_dir: Path_ = None
    loss: Any = "ce"
    align: str | None = "weight"
    align_options: Mapping[str, Any] | None = None
    permute_output: bool = False
    symmetry: str = "permutation"
    head_maps: str = "orthogonal"
    ray: str | None = None
    workers: int | None = None
    study: Mapping[str, Any] = field(default_factory=dict)

    REST: ClassVar[str | None] = "study"


@dataclass(frozen=True)
class CurveOptions(Options):
    """``modeconnect curve``: a trained curve between A and B."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("train", "data")

    inputs: Inputs = field(default_factory=lambda: Inputs(batch_size=128))
    curve: str = "bezier"
    bends: int = 1
    align: str | None = None
    align_options: Mapping[str, Any] | None = None
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    steps: int = 25
    definition: str = "lerp"
    bn: str = "auto"
    max_bn_batches: int | str | None = None
    loss: Any = "ce"
    bend: Sequence[str | Path] = ()
    aligned: Path_ = None
    report_dir: Path_ = None
    permute_output: bool = False
    symmetry: str = "permutation"
    head_maps: str = "orthogonal"


@dataclass(frozen=True)
class _GridOptions(Options):
    """What a grid of loss values takes beside its points: BatchNorm handling, the loss,
    the report folder, and the Ray cluster its rows may run on."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("data",)

    bn: str = "none"
    max_bn_batches: int | str | None = None
    loss: Any = "ce"
    report_dir: Path_ = None
    ray: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class PlaneOptions(_GridOptions):
    """``modeconnect plane``: the loss on the plane through three models."""

    resolution: int = 21
    margin: float = 0.2
    curve: str | None = None
    names: Sequence[str] | None = None
    bn: str = "auto"


@dataclass(frozen=True)
class LandscapeOptions(_GridOptions):
    """``modeconnect landscape``: filter-normalised slices around one model."""

    dims: int = 2
    seed: int = 0
    span: tuple[float, float] = (-1.0, 1.0)
    resolution: int | None = None


@dataclass(frozen=True)
class SharpnessOptions(Options):
    """``modeconnect sharpness``: curvature and sharpness of each model (and the merge)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("data",)

    names: Sequence[str] | None = None
    merge: str | None = None
    alpha: float = 0.5
    top_k: int = 1
    spectrum: str = "lanczos"
    iterations: int | None = None
    trace_samples: int = 50
    rho: float = 0.5
    plain_rho: float = 0.05
    norm: str = "l2"
    ascent_steps: int = 10
    seed: int = 0
    max_batches: int | None = None
    loss: Any = "ce"
    report_dir: Path_ = None


@dataclass(frozen=True)
class SweepOptions(Options):
    """``modeconnect sweep``: a config's pairs × methods × seeds, one table row each."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("data", "json_path")

    csv_path: Path_ = None
    permute_output: bool = False
    ray: str | None = None
    workers: int | None = None
