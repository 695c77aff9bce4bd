"""End-to-end alignment of two models: spec, match, guard, curves, outputs.

:func:`align` works on state dicts and an ``nn.Module``; :func:`align_files`
adds loading, checking and writing, and is what ``modeconnect align`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .evaluation import Barrier, Curve, barrier, interpolate, interpolation_curve
from .guard import Equivalence, check_equivalence, require_equivalence
from .matching import Alignment, get_method
from .probe import Batch, probe_inputs
from .spec import PermutationSpec, apply_permutation, derive_spec

StateDict = Mapping[str, torch.Tensor]


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
    probe = probe_inputs(model, inputs, data)
    if spec is None:
        spec = derive_spec(model, tuple(x[:2] for x in probe), permute_output=permute_output)
    match = get_method(method)
    alignment = match(spec, a, b, model=model, data=data, **options)
    aligned = apply_permutation(b, spec, alignment.perm)
    kw = {} if tolerance is None else {"tolerance": tolerance}
    eq = check_equivalence(model, b, aligned, probe, **kw)
    require_equivalence(eq)
    return AlignResult(spec, alignment, aligned, eq)


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
    loss: Any = None,
) -> CurvePair:
    """Curves from A to naive B and from A to aligned B, with their barriers.

    ``loss`` is :func:`~modeconnect.evaluation.interpolation_curve`'s (default: the
    classifier cross-entropy; a language model's scoring for a language model).
    """
    naive = interpolation_curve(model, a, b, data, steps=steps, loss=loss)
    after = interpolation_curve(model, a, aligned, data, steps=steps, loss=loss)
    return CurvePair(naive, after, barrier(naive, definition), barrier(after, definition))


def merge_pair(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    result: AlignResult,
    alpha: float,
    method: str,
    data: Iterable[Batch] | None,
    options: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], str]:
    """``(1-α)·A + α·aligned B`` and its role; OT fuses A and B with its transport plans instead.

    ``data`` are the activation statistics' batches for OT with activation costs;
    ``options`` the method's own (as for :func:`align`).
    """
    if method == "ot":
        from .matching.ot import fuse_ot

        fused = fuse_ot(
            result.spec, a, b, weights=(1 - alpha, alpha), alignment=result.alignment,
            model=model, data=data, **options,
        )  # fmt: skip
        return fused, "merged (OT fusion)"
    return interpolate(a, result.aligned, alpha), "merged"
