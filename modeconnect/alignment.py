"""End-to-end alignment of two models: spec, match, guard, curves, outputs.

:func:`align` works on state dicts and an ``nn.Module``; :func:`align_files`
adds loading, checking and writing, and is what ``modeconnect align`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .errors import ModeconnectError
from .evaluation import Barrier, Curve, barrier, interpolate, interpolation_curve
from .forward import require_fit
from .guard import Equivalence, check_equivalence, require_equivalence
from .matching import Alignment, get_method, takes
from .probe import Batch, probe_inputs
from .progress import ProgressFn
from .spec import PermutationSpec, apply_permutation, derive_spec
from .views import Permuted

StateDict = Mapping[str, torch.Tensor]
SYMMETRIES = ("permutation", "orthogonal", "full")
"""``symmetry=``: permutations only (0.3.0); also residual-stream rotations; or every class
the graph admits (also invertible per-head V·O maps)."""


@dataclass(frozen=True)
class AlignResult:
    """B carried into A's basis: the spec, the permutations, the permuted weights, the guard.

    ``aligned`` is a dict when B was one; for a lazy B (a Hugging Face directory read from
    disk) it is a read-only :class:`~modeconnect.views.Permuted` view that permutes each
    tensor when it is read, so aligned B costs no memory until it is used.
    """

    spec: PermutationSpec
    alignment: Alignment
    aligned: dict[str, torch.Tensor]
    equivalence: Equivalence
    reference: dict[str, torch.Tensor] | None = None
    """Under ``symmetry="full"``: A with its norms folded (A's function), the path's other end."""
    symmetry: Mapping[str, Any] | None = None
    """Under ``symmetry="full"``: each group's class, solver, objective, conditioning, seconds."""

    def start(self, a: StateDict) -> StateDict:
        """The path's A end: :attr:`reference` under the full symmetry, else ``a``."""
        return a if self.reference is None else self.reference

    def to_dict(self) -> dict[str, Any]:
        """JSON: ``alignment``, ``equivalence`` and, under a larger symmetry, ``symmetry``."""
        out = {"alignment": self.alignment.to_dict(), "equivalence": self.equivalence.to_dict()}
        if self.symmetry is not None:
            out["symmetry"] = dict(self.symmetry)
        return out


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
    progress: ProgressFn | None = None,
    max_bytes: int | None = None,
    device: torch.device | None = None,
    symmetry: str = "permutation",
    loss: Any = None,
    **options: Any,
) -> AlignResult:
    """Permute B's units into A's basis and verify that B's function is unchanged.

    The one alignment pipeline: spec, match, guard. ``a`` and ``b`` are any mappings of
    tensors: state dicts in memory, or lazy checkpoints that read each tensor from disk
    when it is needed (then aligned B is a view, see :class:`AlignResult`). ``inputs``
    is a probe batch (positional model inputs) used to trace the model and to check
    equivalence; by default the first examples of ``data``, or inputs inferred from the
    model (:func:`modeconnect.probe.probe_inputs`). ``options`` go to the alignment
    method (``seed``, ``restarts``, ...; see :func:`modeconnect.matching.describe_method`);
    ``progress``, ``max_bytes`` (the memory its similarity may keep) and ``device`` (where
    its products run) go to the methods that declare them. A method that bounds its
    memory reads lazy checkpoints in their stored dtype (bfloat16: half the bytes).
    Raises :class:`~modeconnect.errors.NotEquivalent` if aligned B differs from B.

    ``symmetry="orthogonal"`` or ``"full"`` (``method="learned"`` implies the second) rotates the
    residual streams of transformers (:func:`modeconnect.symmetry.align.align_full`):
    aligned B has its norms folded, and :attr:`AlignResult.reference` is A folded the
    same way, the other end of the path; ``loss`` scores the learned method, whose
    forward and backward passes run on ``device``.

    Examples
    --------
    Aligning a permuted copy of a network recovers the network; the guard confirms
    that aligned B computes what B computes, and the barrier to A is exactly zero:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> a = model.state_dict()
    >>> spec = mc.derive_spec(model, (x,))
    >>> b = mc.apply_permutation(a, spec, mc.random_permutation(spec, seed=1))
    >>> result = mc.align(model, a, b, inputs=(x,))
    >>> result.alignment.method, result.equivalence.passed
    ('weight', True)
    >>> all(torch.equal(result.aligned[k], a[k]) for k in a)
    True
    >>> mc.barrier(mc.interpolation_curve(model, a, result.aligned, [(x, y)], steps=5))
    Barrier(loss=0.0, error=0.0, definition='lerp')
    """
    require_fit(model, a, "A")
    require_fit(model, b, "B")
    probe = probe_inputs(model, inputs, data)
    if spec is None:
        spec = derive_spec(model, tuple(x[:2] for x in probe), permute_output=permute_output)
    if symmetry not in SYMMETRIES:
        raise ModeconnectError(
            f"symmetry: unknown {symmetry!r}; choose one of {', '.join(SYMMETRIES)}"
        )
    if symmetry != "permutation" or method == "learned":
        # learned implies the full class, its head maps learned too (measured better than the
        # rotation alone on every seed pair of three families: docs/science/transformers.md)
        full = "full" if symmetry == "permutation" else symmetry
        extra = {} if device is None else {"device": device}  # the learned method's passes
        return _align_full(model, a, b, spec, probe, method, data, tolerance, progress, loss,
                           {**options, **extra, "symmetry": full})  # fmt: skip
    match = get_method(method)
    context = {"progress": progress, "max_bytes": max_bytes, "device": device}
    options.update({k: v for k, v in context.items() if v is not None and takes(method, k)})
    pair = (a, b)
    if "max_bytes" in options:  # it converts each tensor itself: read them as stored
        pair = (_as_stored(a), _as_stored(b))
    alignment = match(spec, *pair, model=model, data=data, **options)
    aligned: Mapping[str, torch.Tensor]
    if isinstance(b, dict):
        aligned = apply_permutation(b, spec, alignment.perm)
    else:
        aligned = Permuted(b, spec, alignment.perm)
    kw = {} if tolerance is None else {"tolerance": tolerance}
    eq = check_equivalence(model, b, aligned, probe, **kw)
    require_equivalence(eq)
    # A read-only view stands in for the dict: every reader only indexes it.
    return AlignResult(spec, alignment, cast(dict[str, torch.Tensor], aligned), eq)


def _align_full(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    spec: PermutationSpec,
    probe: Sequence[Any],
    method: str,
    data: Iterable[Batch] | None,
    tolerance: float | None,
    progress: ProgressFn | None,
    loss: Any,
    options: dict[str, Any],
) -> AlignResult:
    from .symmetry.align import align_full

    full = align_full(model, a, b, spec=spec, probe=probe, method=method, data=data,
                      tolerance=tolerance, progress=progress, loss=loss, **options)  # fmt: skip
    return AlignResult(spec, full.alignment, full.aligned, full.equivalence, full.reference,
                       full.to_dict())  # fmt: skip


def _as_stored(state_dict: StateDict) -> StateDict:
    """A lazy checkpoint read in the dtypes it stores (a mapping without that, as it is)."""
    in_dtype = getattr(state_dict, "in_dtype", None)
    return cast(StateDict, in_dtype(None)) if callable(in_dtype) else state_dict


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
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    start: StateDict | None = None,
) -> CurvePair:
    """Curves from A to naive B and from A to aligned B, with their barriers.

    ``start`` replaces A at the aligned curve's start (A folded, under the full symmetry:
    :meth:`AlignResult.start`).

    ``loss`` is :func:`~modeconnect.evaluation.interpolation_curve`'s (default: the
    classifier cross-entropy; a language model's scoring for a language model). Lazy
    checkpoints, ``device`` and ``dtype`` are evaluated one point at a time, as
    :func:`~modeconnect.evaluation.interpolation_curve` says.
    """

    def curve(other: StateDict, task: str, first: StateDict = a) -> Curve:
        return interpolation_curve(
            model, first, other, data, steps=steps, loss=loss, device=device, dtype=dtype,
            progress=progress, task=task,
        )  # fmt: skip

    naive = curve(b, "naive curve")
    after = curve(aligned, "aligned curve", a if start is None else start)
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
    if method == "ot" and result.reference is None:
        from .matching.ot import fuse_ot

        fused = fuse_ot(
            result.spec, a, b, weights=(1 - alpha, alpha), alignment=result.alignment,
            model=model, data=data, **options,
        )  # fmt: skip
        return fused, "merged (OT fusion)"
    return interpolate(result.start(a), result.aligned, alpha), "merged"
