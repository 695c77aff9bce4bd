"""Run every alignment method on one pair and compare time, objective and barriers.

Each method goes through :func:`modeconnect.pipeline.align` (so the equivalence
guard checks every result) and :func:`modeconnect.pipeline.compare_interpolations`
(naive and aligned curves on the evaluation data, one barrier definition for all).
Activation statistics come from ``train`` when given, else from ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModeconnectError
from .evaluate import Barrier
from .files.checkpoints import json_writer, load_models
from .files.data import Batch, check_fits, first_batch, load_data
from .files.references import NO_TRUST, Trust
from .files.targets import Outputs, input_files
from .graph import derive_spec
from .guard import example_inputs
from .matching import METHODS, get_method, method_options
from .pipeline import PROBE_SIZE, align, compare_interpolations

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class MethodResult:
    """One row of a comparison: a method's time, objective, and barriers before and after."""

    method: str
    seconds: float
    objective: float
    iterations: int
    naive: Barrier
    aligned: Barrier
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seconds": self.seconds,
            "objective": self.objective,
            "iterations": self.iterations,
            "naive": self.naive.to_dict(),
            "aligned": self.aligned.to_dict(),
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class Comparison:
    """All methods on one pair, in the order run; barriers under ``definition``."""

    rows: tuple[MethodResult, ...]
    definition: str
    steps: int

    def row(self, method: str) -> MethodResult:
        for r in self.rows:
            if r.method == method:
                return r
        raise ModeconnectError(
            f"no row for method {method!r}; methods compared: {', '.join(self.methods)}"
        )

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(r.method for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "definition": self.definition,
            "steps": self.steps,
            "rows": [r.to_dict() for r in self.rows],
        }


def _methods(methods: Sequence[str] | None) -> list[str]:
    names = list(METHODS) if methods is None else list(dict.fromkeys(methods))
    if not names:
        raise ModeconnectError(
            f"no methods to compare; valid methods: {', '.join(sorted(METHODS))}"
        )
    for name in names:
        get_method(name)  # unknown names: an error that lists the valid ones
    return names


def compare_methods(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    data: Iterable[Batch],
    *,
    methods: Sequence[str] | None = None,
    steps: int = 25,
    seed: int = 0,
    train: Iterable[Batch] | None = None,
    options: Mapping[str, Any] | None = None,
    definition: str = "lerp",
    inputs: Sequence[Any] | None = None,
    permute_output: bool = False,
) -> Comparison:
    """Align B to A with each method in ``methods`` (default: all registered) and evaluate.

    ``data`` is the evaluation split; activation statistics come from ``train``
    (default ``data``). ``options`` holds method settings by command-line name
    (see :func:`method_options`); ``seed`` goes to every method. The spec is
    derived once and shared.
    """
    names = _methods(methods)
    stats_data = train if train is not None else data
    probe = tuple(inputs) if inputs is not None else (first_batch(stats_data)[0][:PROBE_SIZE],)
    spec = derive_spec(model, tuple(x[:2] for x in probe), permute_output=permute_output)
    rows = []
    for name in names:
        opts = method_options(name, {**dict(options or {}), "seed": seed})
        result = align(model, a, b, method=name, inputs=probe, data=stats_data, spec=spec, **opts)
        curves = compare_interpolations(
            model, a, b, result.aligned, data, steps=steps, definition=definition
        )
        al = result.alignment
        rows.append(
            MethodResult(
                name,
                al.seconds,
                al.objective,
                al.iterations,
                curves.naive_barrier,
                curves.aligned_barrier,
                dict(al.params),
            )  # fmt: skip
        )
    return Comparison(tuple(rows), definition, steps)


@dataclass(frozen=True)
class CompareReport:
    """What ``modeconnect compare`` computed and wrote."""

    a_path: Path
    b_path: Path
    model_ref: str
    comparison: Comparison
    written: Mapping[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": str(self.a_path),
            "b": str(self.b_path),
            "model": self.model_ref,
            **self.comparison.to_dict(),
        }


def compare_files(
    a_path: str | Path,
    b_path: str | Path,
    *,
    data: str,
    train: str | None = None,
    methods: Sequence[str] | None = None,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    steps: int = 25,
    seed: int = 0,
    batch_size: int = 500,
    input_shape: Sequence[int] | None = None,
    input_dtype: torch.dtype | None = None,
    permute_output: bool = False,
    json_path: str | Path | None = None,
    force: bool = False,
    trust: Trust = NO_TRUST,
    **options: Any,
) -> CompareReport:
    """Load two checkpoints and the data, run :func:`compare_methods`, optionally write JSON."""
    outputs = Outputs.plan(
        [("--json", json_path, "json")],
        inputs=input_files([a_path, b_path], data=[data, train], model=model),
        force=force,
    )
    names = _methods(methods)
    (ca, cb), net, ref, _ = load_models([a_path, b_path], model, model_kwargs, trust=trust)
    evaluation = load_data(data, batch_size=batch_size)
    statistics = load_data(train, batch_size=batch_size) if train is not None else None
    check_fits(net, evaluation, str(data))
    if statistics is not None:
        check_fits(net, statistics, str(train), class_labels=False)
    inputs = example_inputs(net, input_shape, input_dtype) if input_shape is not None else None
    comparison = compare_methods(
        net, ca.state_dict, cb.state_dict, evaluation, methods=names, steps=steps, seed=seed,
        train=statistics, options=options, inputs=inputs, permute_output=permute_output,
    )  # fmt: skip
    report = CompareReport(Path(a_path), Path(b_path), ref, comparison)
    if "--json" in outputs:
        written = {"json": outputs.path("--json")}
        report = CompareReport(report.a_path, report.b_path, ref, comparison, written)
        with outputs.writing() as staging:
            staging.write(written["json"], json_writer(report.to_dict()))
    return report


def format_comparison(comparison: Comparison) -> str:
    """One plain-text table: method, seconds, objective, naive and aligned barriers."""
    head = f"{'method':<12}{'seconds':>9}{'objective':>13}{'loss barrier':>24}{'error barrier':>22}"
    lines = [head, f"{'':<34}{'naive -> aligned':>24}{'naive -> aligned':>22}"]
    for r in comparison.rows:
        loss = f"{r.naive.loss:.4f} -> {r.aligned.loss:.4f}"
        err = f"{r.naive.error:.2%} -> {r.aligned.error:.2%}"
        lines.append(f"{r.method:<12}{r.seconds:>9.2f}{r.objective:>13.6g}{loss:>24}{err:>22}")
    lines.append(f"barriers: {comparison.definition}, {comparison.steps} interpolation points")
    return "\n".join(lines)


__all__ = [
    "CompareReport",
    "Comparison",
    "MethodResult",
    "compare_files",
    "compare_methods",
    "format_comparison",
    "method_options",
]
