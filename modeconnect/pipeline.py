"""End-to-end alignment of two models: spec, match, guard, curves, outputs.

:func:`align` works on state dicts and an ``nn.Module``; :func:`align_files`
adds loading, checking and writing, and is what ``modeconnect align`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bn import check_mode, renormalize
from .errors import ModeconnectError
from .evaluate import Barrier, Curve, barrier, interpolate, interpolation_curve
from .files.checkpoints import checkpoint_writer, json_writer, load_models, restore_dtypes
from .files.data import Batch, check_fits, first_batch, load_data
from .files.references import NO_TRUST, Trust
from .files.targets import Outputs, input_files
from .graph import derive_spec
from .guard import Equivalence, check_equivalence, example_inputs, require_equivalence
from .matching import Alignment, get_method, method_options
from .spec import PermutationSpec, apply_permutation

StateDict = Mapping[str, torch.Tensor]
PROBE_SIZE = 64


@dataclass(frozen=True)
class AlignResult:
    """B carried into A's basis: the spec, the permutations, the permuted weights, the guard."""

    spec: PermutationSpec
    alignment: Alignment
    aligned: dict[str, torch.Tensor]
    equivalence: Equivalence


def align(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    *,
    method: str = "weight",
    inputs: Sequence[Any] | None = None,
    data: Iterable[Batch] | None = None,
    spec: PermutationSpec | None = None,
    permute_output: bool = False,
    tolerance: float | None = None,
    **options: Any,
) -> AlignResult:
    """Permute B's units into A's basis and verify that B's function is unchanged.

    ``inputs`` is a probe batch (positional model inputs) used to trace the
    model and to check equivalence; by default the first batch of ``data``, or
    a random batch shaped after the model's first layer. ``options`` go to the
    alignment method (``seed``, ``restarts``, ...). Raises
    :class:`~modeconnect.ModeconnectError` if aligned B differs from B.
    """
    probe = _probe(model, inputs, data)
    if spec is None:
        spec = derive_spec(model, tuple(x[:2] for x in probe), permute_output=permute_output)
    match = get_method(method)
    alignment = match(spec, a, b, model=model, data=data, **options)
    aligned = apply_permutation(b, spec, alignment.perm)
    kw = {} if tolerance is None else {"tolerance": tolerance}
    eq = check_equivalence(model, b, aligned, probe, **kw)
    require_equivalence(eq)
    return AlignResult(spec, alignment, aligned, eq)


def _probe(
    model: nn.Module, inputs: Sequence[Any] | None, data: Iterable[Batch] | None
) -> tuple[torch.Tensor, ...]:
    if inputs is not None:
        return tuple(inputs)
    if data is not None:
        return (first_batch(data)[0][:PROBE_SIZE],)
    return example_inputs(model)


@dataclass(frozen=True)
class CurvePair:
    """Interpolation curves and barriers for naive B and aligned B."""

    naive: Curve
    aligned: Curve
    naive_barrier: Barrier
    aligned_barrier: Barrier


def compare_interpolations(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    aligned: StateDict,
    data: Iterable[Batch],
    *,
    steps: int = 25,
    definition: str = "lerp",
) -> CurvePair:
    """Curves from A to naive B and from A to aligned B, with their barriers."""
    naive = interpolation_curve(model, a, b, data, steps=steps)
    after = interpolation_curve(model, a, aligned, data, steps=steps)
    return CurvePair(naive, after, barrier(naive, definition), barrier(after, definition))


@dataclass(frozen=True)
class AlignReport:
    """Everything ``modeconnect align`` computed and wrote."""

    a_path: Path
    b_path: Path
    model_ref: str
    model_kwargs: Mapping[str, Any]
    result: AlignResult
    curves: CurvePair | None
    alpha: float
    written: Mapping[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        res = self.result
        out: dict[str, Any] = {
            "a": str(self.a_path),
            "b": str(self.b_path),
            "model": {"ref": self.model_ref, "kwargs": dict(self.model_kwargs)},
            "alignment": res.alignment.to_dict(),
            "equivalence": res.equivalence.to_dict(),
            "spec": {
                "groups": len(res.spec.groups),
                "units": sum(g.size for g in res.spec.groups.values()),
                "fixed_axes": len(res.spec.fixed),
            },
            "alpha": self.alpha,
            "outputs": {k: str(v) for k, v in self.written.items()},
        }
        if self.curves is not None:
            c = self.curves
            out["naive"] = {"barrier": c.naive_barrier.to_dict(), "curve": c.naive.to_dict()}
            out["aligned"] = {"barrier": c.aligned_barrier.to_dict(), "curve": c.aligned.to_dict()}
        return out


def align_files(
    a_path: str | Path,
    b_path: str | Path,
    *,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data: str | None = None,
    train: str | None = None,
    bn: str = "none",
    out: str | Path | None = None,
    merged: str | Path | None = None,
    json_path: str | Path | None = None,
    alpha: float = 0.5,
    steps: int = 25,
    method: str = "weight",
    input_shape: Sequence[int] | None = None,
    input_dtype: torch.dtype | None = None,
    permute_output: bool = False,
    batch_size: int = 500,
    force: bool = False,
    trust: Trust = NO_TRUST,
    **options: Any,
) -> AlignReport:
    """Load two checkpoints, align B to A, evaluate, and write the requested outputs.

    Outputs are checked before any work (an existing file without ``force`` is
    an error) and written only after the equivalence guard has passed.
    """
    outputs = Outputs.plan(
        [
            ("--out", out, "checkpoint"),
            ("--merged", merged, "checkpoint"),
            ("--json", json_path, "json"),
        ],
        inputs=input_files([a_path, b_path], data=[data, train], model=model),
        force=force,
    )
    if not 0.0 <= alpha <= 1.0:
        raise ModeconnectError(f"--alpha: must lie in [0, 1], got {alpha}; pass a weight of B")
    (ca, cb), net, ref, kwargs = load_models([a_path, b_path], model, model_kwargs, trust=trust)
    batches = load_data(data, batch_size=batch_size) if data is not None else None
    train_batches = load_data(train, batch_size=batch_size) if train is not None else None
    if batches is not None:
        check_fits(net, batches, str(data))
    if train_batches is not None:
        check_fits(net, train_batches, str(train), class_labels=False)
    stats = train_batches if train_batches is not None else batches
    check_mode(net, bn, train_batches)
    inputs = example_inputs(net, input_shape, input_dtype) if input_shape is not None else None
    opts = method_options(method, options)
    result = align(
        net, ca.state_dict, cb.state_dict, method=method, inputs=inputs, data=stats,
        permute_output=permute_output, **opts,
    )  # fmt: skip
    curves = None
    if batches is not None:
        curves = compare_interpolations(
            net, ca.state_dict, cb.state_dict, result.aligned, batches, steps=steps
        )
    meta = {
        "modeconnect.source_a": str(a_path),
        "modeconnect.source_b": str(b_path),
        "modeconnect.method": method,
    }
    written: dict[str, Path] = {}
    writes: dict[str, Any] = {}
    if "--out" in outputs:
        written["out"] = outputs.path("--out")
        writes["out"] = checkpoint_writer(
            written["out"], restore_dtypes(result.aligned, cb.dtypes), model_ref=ref,
            model_kwargs=kwargs,
            metadata={**meta, "modeconnect.role": "b aligned to a"},
        )  # fmt: skip
    if "--merged" in outputs:
        mixed, role = _merged(net, ca.state_dict, cb.state_dict, result, alpha, method, stats, opts)
        mixed = renormalize(
            net, ca.state_dict, result.aligned, mixed, train_batches, mode=bn, alpha=alpha
        )
        written["merged"] = outputs.path("--merged")
        writes["merged"] = checkpoint_writer(
            written["merged"], restore_dtypes(mixed, ca.dtypes), model_ref=ref,
            model_kwargs=kwargs,
            metadata={**meta, "modeconnect.alpha": str(alpha), "modeconnect.role": role,
                      "modeconnect.bn": bn},
        )  # fmt: skip
    if "--json" in outputs:
        written["json"] = outputs.path("--json")
    report = AlignReport(Path(a_path), Path(b_path), ref, kwargs, result, curves, alpha, written)
    if "--json" in outputs:
        writes["json"] = json_writer(report.to_dict())
    with outputs.writing() as staging:
        for name, fill in writes.items():
            staging.write(written[name], fill)
    return report


def _merged(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    result: AlignResult,
    alpha: float,
    method: str,
    data: Iterable[Batch] | None,
    options: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], str]:
    """``(1-α)·A + α·aligned B``; OT fuses A and B with its transport plans instead."""
    if method == "ot":
        from .matching.ot import fuse_ot

        fused = fuse_ot(
            result.spec, a, b, weights=(1 - alpha, alpha), alignment=result.alignment,
            model=model, data=data, **options,
        )  # fmt: skip
        return fused, "merged (OT fusion)"
    return interpolate(a, result.aligned, alpha), "merged"


def spec_for(
    checkpoint: str | Path | None,
    *,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: torch.dtype | None = None,
    permute_output: bool = False,
    json_path: str | Path | None = None,
    force: bool = False,
    trust: Trust = NO_TRUST,
) -> PermutationSpec:
    """The spec of a checkpoint's (or ``model``'s) architecture; optionally written as JSON."""
    outputs = Outputs.plan(
        [("--json", json_path, "json")],
        inputs=input_files([checkpoint], model=model),
        force=force,
    )
    if checkpoint is None and model is None:
        raise ModeconnectError("pass a checkpoint or --model module:callable")
    paths = [checkpoint] if checkpoint is not None else []
    _, net, _, _ = load_models(paths, model, model_kwargs, trust=trust)
    inputs = example_inputs(net, input_shape, input_dtype)
    spec = derive_spec(net, tuple(x[:2] for x in inputs), permute_output=permute_output)
    if "--json" in outputs:
        with outputs.writing() as staging:
            staging.write(outputs.path("--json"), json_writer(spec.summary()))
    return spec
