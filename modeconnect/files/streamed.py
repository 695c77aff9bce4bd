"""Alignment and evaluation of checkpoints that stay on disk (Hugging Face directories).

The in-memory pipeline (:func:`modeconnect.pipeline.align`,
:func:`~modeconnect.pipeline.compare_interpolations`) keeps A, B, aligned B and each
interpolated model as whole state dicts: about ``8 S`` for two bfloat16 models of
``S`` bytes computed in float32. Here the same steps read every tensor from its file
when it is needed, through views (:mod:`modeconnect.files.lazy`):

* matching reads ``a[key]``, ``b[key]`` group by group;
* aligned B is a :class:`~modeconnect.files.lazy.Permuted` view of B, and the merge a
  :class:`~modeconnect.files.lazy.Lerped` view of A and aligned B: they are computed
  tensor by tensor when written, one shard at a time;
* the guard runs B, then aligned B (one float32 copy alive at a time);
* each point of a curve is built, evaluated and dropped before the next (a loop of
  :func:`~modeconnect.evaluation.evaluate_examples`, the per-point pass of
  :func:`~modeconnect.evaluation.example_curves`, which would build the next point while
  the last is still referenced).

So besides the method's own working memory, at most one float32 model (``2 S`` for
bfloat16 weights) is alive at a time. ``device`` moves the evaluated weights and the
batches (``"auto"``: CUDA when there is one); ``dtype`` is the evaluation's.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import ExampleCurve, alpha_grid, barrier, evaluate_examples
from modeconnect.evaluation.results import Curve
from modeconnect.files.data import Batch
from modeconnect.files.hf import LazyWeights, computed_buffers
from modeconnect.files.lazy import Converted, Extended, Lerped, Permuted
from modeconnect.guard import check_equivalence, require_equivalence
from modeconnect.matching import get_method
from modeconnect.pipeline import AlignResult, CurvePair
from modeconnect.progress import ProgressFn
from modeconnect.spec import PermutationSpec

__all__ = [
    "DEVICES",
    "align_streamed",
    "curves_streamed",
    "model_bytes",
    "moved_batches",
    "resolve_device",
]

DEVICES = ("cpu", "cuda", "auto")
StateDict = Mapping[str, Tensor]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cuda"`` without CUDA is an error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ModeconnectError(
            f"--device: {name!r} is not a device; use one of {', '.join(DEVICES)}"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModeconnectError(
            "--device cuda: this torch build sees no CUDA device; use --device cpu (or auto)"
        )
    return device


def model_bytes(state_dict: StateDict) -> int | None:
    """The bytes a lazy checkpoint stores (``S``), from its headers; ``None`` for a dict."""
    if not isinstance(state_dict, LazyWeights):
        return None
    return sum(info.nbytes for info in state_dict.directory.tensors.values())


def align_streamed(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    *,
    spec: PermutationSpec,
    probe: Sequence[Any],
    method: str = "weight",
    data: Iterable[Batch] | None = None,
    progress: ProgressFn | None = None,
    max_bytes: int | None = None,
    device: torch.device | None = None,
    **options: Any,
) -> AlignResult:
    """:func:`modeconnect.pipeline.align` without copies: aligned B is a view of B.

    The guard compares B and aligned B on ``probe`` in ``a``/``b``'s dtype. The
    method gets, if it takes them, ``progress`` (weight matching: one tick per
    group), ``max_bytes`` (what its similarity may keep) and ``device`` (where its
    products run); a method that bounds its memory converts each tensor itself, so it
    reads lazy checkpoints in their stored dtype (bfloat16: half the bytes).
    """
    match = get_method(method)
    taken = inspect.signature(match).parameters
    extra = {"progress": progress, "max_bytes": max_bytes, "device": device}
    options = {**options, **{k: v for k, v in extra.items() if v is not None and k in taken}}
    pair = (a, b)
    if "max_bytes" in taken:  # it converts each tensor itself: read them as stored (half size)
        pair = (_as_stored(a), _as_stored(b))
    alignment = match(spec, *pair, model=model, data=data, **options)
    aligned = Permuted(b, spec, alignment.perm)
    equivalence = check_equivalence(model, b, aligned, probe)
    require_equivalence(equivalence)
    # A read-only view stands in for the dict: every reader only indexes it.
    return AlignResult(spec, alignment, cast(dict[str, Tensor], aligned), equivalence)


def moved_batches(
    data: Iterable[Batch], device: torch.device, dtype: torch.dtype | None
) -> list[Batch]:
    """``(x, y)`` batches on ``device``, floating inputs in ``dtype`` (token ids stay ids)."""
    return [(_moved(x, device, dtype), y.to(device)) for x, y in data]


def _moved(x: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """Inputs on ``device``; floating ones in the evaluation's ``dtype`` (token ids stay ids)."""
    return x.to(device, dtype=dtype if dtype is not None and x.is_floating_point() else None)


def _as_stored(state_dict: StateDict) -> StateDict:
    """A lazy checkpoint read in the dtypes it stores (other mappings as they are)."""
    return state_dict.in_dtype(None) if isinstance(state_dict, LazyWeights) else state_dict


def curves_streamed(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    aligned: StateDict,
    data: Iterable[Batch],
    *,
    steps: int = 25,
    loss: Any = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    definition: str = "lerp",
    progress: ProgressFn | None = None,
) -> CurvePair:
    """Curves from A to naive B and from A to aligned B, one interpolated model at a time.

    Each point ``θ(α) = lerp(θ_A, θ_B, α)`` is computed in the checkpoints' dtype,
    then brought to ``dtype`` on ``device``, evaluated on every batch and dropped.
    """
    grid = alpha_grid(steps, None)
    where = device if device is not None else torch.device("cpu")
    buffers = {k: v.to(where) for k, v in computed_buffers(model).items()}
    batches = moved_batches(data, where, dtype)

    def curve(other: StateDict, task: str) -> Curve:
        results = []
        for i, alpha in enumerate(grid):
            # Built, evaluated and dropped before the next point is built: one model alive.
            state = dict(Extended(Converted(Lerped(a, other, alpha), dtype, where), buffers))
            results.append(evaluate_examples(model, state, batches, loss=loss))
            del state
            if progress is not None:
                progress(task, i + 1, len(grid))
        return ExampleCurve(grid, tuple(results)).curve()

    naive, after = curve(b, "naive curve"), curve(aligned, "aligned curve")
    return CurvePair(naive, after, barrier(naive, definition), barrier(after, definition))
