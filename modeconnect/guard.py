"""The permanent guard: aligned B must compute what B computes, to the precision it ran in.

Aligned B (``z = f_B'(x)``) is run beside B (``y = f_B(x)``) on the probe batch. Each
floating output tensor is read as rows along its last axis (logits: one row per example
or token, one column per class; a 0-d or 1-d tensor is one column). With ``M = max|y|``
and ``tol`` the tolerance of the precision the check ran in (table below), it passes:

1. **values**: ``max|y - z| <= tol · M``; NaN and inf never pass. The difference is
   not centred: a per-row constant that B and aligned B do not share is a difference.
   ``tol · M`` is the float resolution at the outputs' magnitude: the rounding of a sum
   depends on its order, and a permutation reorders sums.
2. **predictions**: ``argmax y = argmax z`` along the last axis on every row where B's
   two largest values are more than ``2 tol M`` apart (closer rows are ties that
   rounding may flip). Test 1 implies it; it is reported (``agreement``) because the
   predictions are what a wrong permutation costs.
3. **verifiable**: test 1 means something only if ``tol · M`` is small next to how much
   B's outputs vary. An offset hides differences: a constant added to every logit of a
   row, or to class ``j`` of every example (an output bias), raises ``M`` and with it
   the allowed error, yet changes no comparison between examples or classes. So the
   variation is measured with both removed, ``V = max|y_c - mean_rows(y_c)|`` where
   ``y_c = y - mean_last_axis(y)`` (one row: ``V = max|y_c|``), and the check fails
   closed, as *cannot verify*, when the **resolution** ``tol · M / V`` exceeds
   ``limit = 1/8``. Tensors on which B's outputs do not vary (``V = 0``) carry no
   information; at least one tensor must.

Scaling B's outputs changes none of the three tests; an offset only raises the
resolution, so it either leaves the check as strict or makes it refuse. A pass thus
means: every output of aligned B lies within ``tol · M`` of B's, and that is at most
1/8 of how much B's outputs vary over the probe batch. A check in float16, bfloat16 or
TF32 that cannot verify is run once more in float32 (weights and inputs converted,
TF32 off): the same weights, evaluated more exactly.

**Tolerances** ``tol = k · eps``, from measured honest differences: random permutations
drawn from the derived spec (every group at once, so every sum is reordered) applied to
the shipped trained MLPs (probe: 64 digits), the 15 architectures of ``tests/zoo.py``,
the 8 of ``tests/zoo_vision.py`` and the 15 Hugging Face ones of ``tests/zoo_hf.py``
(randomised; probes of 2 examples), tiny Llama and BERT models (2 x 64 tokens), and
8-layer, width-256 Llama, GPT-2 and BERT language models (vocabulary 2000, 2 x 64
tokens); 3 seeds each (2 for the 8-layer models), on the CPU, in each format:

========= ====== ======================================= ===============
format    eps    largest honest ``max|y - z|``           ``k`` (``tol``)
========= ====== ======================================= ===============
float32   2^-23  10.4 eps·M (Mistral; 8-layer LMs: 7.7)  256 (3.05e-5)
float16   2^-10  1.85 eps·M (T5; 8-layer LMs: 1.5)       8 (7.8e-3)
bfloat16  2^-7   0.58 eps·M (8-layer LMs: 1.5)           8 (6.25e-2)
========= ====== ======================================= ===============

* ``k`` leaves at least a 4-fold margin. In float32 the difference grows with the
  number of reordered additions; in float16 and bfloat16 the CPU adds in float32 and
  rounds each result once, so it stays near one unit in the last place of ``M``.
  float64 is held to float32's tolerance (models compute parts in float32 whatever their
  dtype: Hugging Face norms and rotary embeddings do). On CUDA ``k`` doubles (other
  reduction orders, split-K reductions in half precision; not measured here), and
  float32 counts as TF32 (``eps = 2^-10``, ``k = 16``) when torch allows TF32.
* ``M / V`` is 1.0-1.1 for the trained MLPs and 0.9-3.8 for the language models' logits,
  but up to 402 for randomised convolutional nets on 2 examples (EfficientNet; 104 on 16
  examples) and 44 for a randomised BERT's hidden states: their outputs hardly depend on
  the input. In float32 the largest honest resolution is 402 · 3.05e-5 = 0.012, a
  10-fold margin under 1/8. In float16 the MLPs, transformers and language models
  verify as they are; in bfloat16 the trained MLPs, Llama, Mistral, Qwen2, Falcon,
  GPT-NeoX and T5 do. The others (resolution up to 27, in bfloat16) verify after the
  float32 rerun: no honest model was refused.
* The largest offset accepted is about ``V / (8 tol)``: for the digits MLP's logits
  (``V ≈ 25``), ``10^5`` in float32. The attack that fooled 0.2.0 (``+10^6`` on every
  logit and a wrong spec: ``max|y - z| / M = 2.8e-5``) is refused as *cannot verify*
  (resolution 1.1); with ``+10^5`` or less the wrong spec fails tests 1 and 2.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .errors import ModeconnectError, NotEquivalent, count_nonfinite
from .forward import eval_mode, output_tensors, run
from .records import record
from .views import Converted, Rounded

__all__ = [
    "DEFAULT_TOLERANCE",
    "PRECISIONS",
    "Equivalence",
    "EquivalenceError",
    "Precision",
    "check_equivalence",
    "check_written",
    "precision_of",
    "require_equivalence",
    "require_writable",
    "require_written",
]


@dataclass(frozen=True)
class Precision:
    """A float format's guard settings: ``tol = ulps · eps`` and the resolution ``limit``."""

    name: str
    eps: float
    ulps: float
    limit: float

    @property
    def tolerance(self) -> float:
        return self.ulps * self.eps

    def on_cuda(self) -> Precision:
        """Doubled ``ulps``: GPU kernels reduce in other orders and, in half, in half."""
        return Precision(self.name, self.eps, 2 * self.ulps, self.limit)


PRECISIONS: dict[str, Precision] = {
    "float32": Precision("float32", 2.0**-23, 256, 1 / 8),
    "tf32": Precision("tf32", 2.0**-10, 16, 1 / 8),
    "float16": Precision("float16", 2.0**-10, 8, 1 / 8),
    "bfloat16": Precision("bfloat16", 2.0**-7, 8, 1 / 8),
}
"""The formats the guard knows (module docstring); float64 counts as float32."""

DEFAULT_TOLERANCE = PRECISIONS["float32"].tolerance
"""float32's tolerance, ``256 · 2^-23 ≈ 3.05e-5`` relative to ``max|f_B|``."""

_BY_DTYPE = {torch.float64: "float32", torch.float32: "float32", torch.float16: "float16",
             torch.bfloat16: "bfloat16"}  # fmt: skip
_COARSENESS = ("float32", "tf32", "float16", "bfloat16")


@dataclass(frozen=True)
class Equivalence:
    """How far aligned B's outputs are from B's on the probe batch (module docstring).

    ``max_abs_diff = max|y - z|``; ``max_rel_diff = max|y - z| / max|y|`` (the worst
    output tensor), which must not exceed ``tolerance``. ``resolution = tolerance · M / V``
    must not exceed ``limit``. ``agreement``: the fraction of rows whose argmax is the
    same; ``contested``: rows whose argmax differs although B's margin exceeds
    ``2 · tolerance · M``. ``magnitude`` and ``variation`` are ``M`` and ``V`` of the
    tensor with the worst resolution; ``precision`` names the format the check ran in.
    """

    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    resolution: float = 0.0
    limit: float = math.inf
    agreement: float = 1.0
    contested: int = 0
    rows: int = 0
    magnitude: float = 0.0
    variation: float = 0.0
    precision: str = "float32"

    @property
    def values_agree(self) -> bool:
        """Test 1: within tolerance; NaN or inf never passes."""
        return math.isfinite(self.max_rel_diff) and self.max_rel_diff <= self.tolerance

    @property
    def verifiable(self) -> bool:
        """Test 3: the allowed error is small next to how much B's outputs vary."""
        return self.resolution <= self.limit

    @property
    def failed(self) -> str | None:
        """Which test failed: ``"predictions"``, ``"values"``, ``"cannot verify"``, or None."""
        if self.contested and not math.isnan(self.max_rel_diff):  # NaN: no values to compare
            return "predictions"
        if not self.values_agree:
            return "values"
        return None if self.verifiable else "cannot verify"

    @property
    def passed(self) -> bool:
        """All three tests passed."""
        return self.failed is None

    def to_dict(self) -> dict[str, Any]:
        return record(self, passed=self.passed, failed=self.failed)


class EquivalenceError(NotEquivalent):
    """The guard refused aligned B; :attr:`equivalence` says which test failed.

    A :class:`~modeconnect.errors.NotEquivalent` (and so a ``ModeconnectError``)."""

    def __init__(self, message: str, equivalence: Equivalence) -> None:
        super().__init__(message)
        self.equivalence = equivalence


def check_equivalence(
    model: nn.Module,
    original: Mapping[str, torch.Tensor],
    permuted: Mapping[str, torch.Tensor],
    inputs: Sequence[Any],
    *,
    tolerance: float | None = None,
) -> Equivalence:
    """Compare the model's outputs with two state dicts on the same probe inputs.

    The model runs in eval mode through :func:`modeconnect.forward.run`, called as
    :func:`~modeconnect.forward.model_call` says (Hugging Face models give their
    logits). The probe inputs and B's outputs must be finite (a NaN would hide any
    difference); a NaN or inf in the difference makes the check fail. ``tolerance``
    replaces the precision's own (:func:`precision_of`; module docstring). A check in
    half precision or TF32 that cannot verify is run again with the weights and inputs
    in float32 (one tensor converted at a time, TF32 off), if the model runs that way.

    Examples
    --------
    A permutation the spec allows passes; permuting one weight without the
    tensors that share its units changes the function, and fails:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import permuted_pair
    >>> model, x, spec, a, b, _ = permuted_pair()  # a small MLP and a permuted copy
    >>> eq = mc.check_equivalence(model, a, b, (x,))
    >>> eq.passed, eq.failed, eq.precision
    (True, None, 'float32')
    >>> eq.max_rel_diff <= eq.tolerance
    True
    >>> broken = {**b, "1.weight": a["1.weight"]}
    >>> mc.check_equivalence(model, a, broken, (x,)).passed
    False
    """
    _require_finite(inputs, "the probe inputs")
    eq = _compared(model, original, permuted, inputs, tolerance)
    if eq.failed != "cannot verify" or eq.precision == "float32":
        return eq
    try:
        with _no_tf32():
            wide = _compared(model, Converted(original, torch.float32),
                             Converted(permuted, torch.float32),
                             tuple(_float32(x) for x in inputs), tolerance)  # fmt: skip
    except (RuntimeError, TypeError):  # a module that computes in its own dtype only
        return eq
    return replace(wide, precision=f"{wide.precision} (from {eq.precision})")


def check_written(
    model: nn.Module,
    original: Mapping[str, torch.Tensor],
    aligned: Mapping[str, torch.Tensor],
    stored: Mapping[str, torch.dtype],
    inputs: Sequence[Any],
) -> Equivalence:
    """The guard on aligned B as it will be written: each tensor named in ``stored`` (the
    dtypes B's checkpoint holds, coarser than the model runs in) rounded to its dtype.

    Permutations only move values, which are exact in any dtype; the maps of a larger
    symmetry (rotations, per-head maps) make new values, which the stored dtype rounds.
    The rounded B' must match B (``original``, as the model reads it) to the tolerance of
    the coarsest stored format (module docstring's table), in values and predictions;
    that the rounding is small next to B's variation is not required (the unrounded B'
    passed the full guard). A format the table lacks (float8) cannot be checked:
    :class:`EquivalenceError`, ``"cannot verify"``. The result's ``precision`` reads
    ``"bfloat16 (written)"``.
    """
    require_writable(stored)
    names = {_BY_DTYPE[d] for d in stored.values() if d in _BY_DTYPE}
    fmt = PRECISIONS[max(names | {"float32"}, key=_COARSENESS.index)]
    eq = _compared(model, original, Rounded(aligned, stored), inputs, fmt.tolerance)
    return replace(eq, precision=f"{fmt.name} (written)", limit=math.inf)


def require_writable(stored: Mapping[str, torch.dtype]) -> None:
    """Raise :class:`EquivalenceError` (``"cannot verify"``) if a floating dtype of ``stored``
    has no tolerance in the guard's table (float8): :func:`check_written` could not check
    new values rounded to it. Commands call it before any work."""
    unknown = ", ".join(sorted({str(d).removeprefix("torch.") for d in stored.values()
                                if d.is_floating_point and d not in _BY_DTYPE}))  # fmt: skip
    if not unknown:
        return
    eq = Equivalence(math.nan, math.nan, 0.0, resolution=math.inf, limit=0.0,
                     precision=f"{unknown} (written)")  # fmt: skip
    raise EquivalenceError(
        f"equivalence check (cannot verify): B is stored in {unknown}, which the guard has "
        "no tolerance for, and a larger symmetry than permutations makes new values that it "
        "would round; nothing was written; align with --symmetry permutation (exact in every "
        "dtype), or convert B to bfloat16, float16 or float32 first",
        eq,
    )


def _compared(
    model: nn.Module,
    original: Mapping[str, torch.Tensor],
    permuted: Mapping[str, torch.Tensor],
    inputs: Sequence[Any],
    tolerance: float | None,
) -> Equivalence:
    with eval_mode(model), torch.no_grad():
        ys = output_tensors(run(model, original, inputs))
        zs = output_tensors(run(model, permuted, inputs))
    _require_finite(ys, "B's outputs on the probe inputs")
    fmt = precision_of(ys, original)
    tol = fmt.tolerance if tolerance is None else float(tolerance)
    if [y.shape for y in ys] != [z.shape for z in zs]:
        return Equivalence(math.inf, math.inf, tol, limit=fmt.limit, precision=fmt.name)
    return _summary([_compare(y, z, tol) for y, z in zip(ys, zs) if y.numel()], tol, fmt)


def _float32(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


# --------------------------------------------------------------------------- one tensor


@dataclass(frozen=True)
class _Stats:
    """One output tensor: ``max|y-z|``, ``M``, ``V`` and the argmax test's counts."""

    diff: float
    magnitude: float
    variation: float
    rows: int
    agreeing: int
    contested: int


def _compare(y: torch.Tensor, z: torch.Tensor, tol: float) -> _Stats:
    """Tests 1-3 of the module docstring on one tensor, computed in float64."""
    y64, z64 = _rows(y), _rows(z)
    diff = _peak(y64 - z64)  # torch propagates NaN; Python's max() would drop it
    magnitude = _peak(y64)
    centred = y64 - y64.mean(dim=1, keepdim=True) if y64.shape[1] > 1 else y64
    if centred.shape[0] > 1:
        centred = centred - centred.mean(dim=0, keepdim=True)
    variation = _peak(centred)
    agreeing, contested = _predictions(y64, z64, 2 * tol * magnitude)
    return _Stats(diff, magnitude, variation, y64.shape[0], agreeing, contested)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 as ``(rows, last axis)``; a 0-d or 1-d tensor is one column."""
    t = t.detach().double()
    return t.reshape(-1, 1) if t.ndim <= 1 else t.reshape(-1, t.shape[-1])


def _peak(t: torch.Tensor) -> float:
    return float(t.abs().amax()) if t.numel() else 0.0


def _predictions(y: torch.Tensor, z: torch.Tensor, tie: float) -> tuple[int, int]:
    """Rows with the same argmax, and rows that differ although B's top-2 gap exceeds ``tie``."""
    if y.shape[1] < 2:
        return y.shape[0], 0
    same = y.argmax(dim=1) == z.argmax(dim=1)
    top = y.topk(2, dim=1).values
    decisive = (top[:, 0] - top[:, 1]) > tie
    return int(same.sum()), int((~same & decisive).sum())


def _summary(stats: Sequence[_Stats], tol: float, fmt: Precision) -> Equivalence:
    """The worst tensor of each test; the resolution over the tensors that vary."""
    rows = sum(s.rows for s in stats)
    informative = [s for s in stats if s.variation > 0]
    if informative:
        worst = max(informative, key=lambda s: s.magnitude / s.variation)
        resolution = tol * worst.magnitude / worst.variation
    else:  # B's outputs are the same for every probe input: no difference could show
        worst = max(stats, key=lambda s: s.magnitude, default=_Stats(0, 0, 0, 0, 0, 0))
        resolution = math.inf
    return Equivalence(
        max_abs_diff=_nan_max([s.diff for s in stats]),
        max_rel_diff=_nan_max([_ratio(s.diff, s.magnitude) for s in stats]),
        tolerance=tol,
        resolution=resolution,
        limit=fmt.limit,
        agreement=sum(s.agreeing for s in stats) / rows if rows else 1.0,
        contested=sum(s.contested for s in stats),
        rows=rows,
        magnitude=worst.magnitude,
        variation=worst.variation,
        precision=fmt.name,
    )


def _ratio(diff: float, magnitude: float) -> float:
    """``diff / magnitude``; the absolute difference when B's outputs are all zero."""
    return diff / magnitude if magnitude > 0 else diff


def _nan_max(values: Sequence[float]) -> float:
    """``max`` that returns NaN if any value is NaN (0.0 for none)."""
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=0.0)


# --------------------------------------------------------------------------- precision


def precision_of(
    outputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor] | None = None
) -> Precision:
    """The coarsest format among the outputs' and the weights' floating dtypes.

    Weights count too: a model may compute in bfloat16 and return float32 logits. A
    plain dict is read as it is; a lazy mapping (a Hugging Face directory's
    :class:`~modeconnect.io.hf.LazyWeights`) says the dtype it reads in. On CUDA,
    float32 counts as TF32 when torch allows TF32, and every format's ``ulps`` doubles.
    """
    dtypes = {t.dtype for t in outputs if t.is_floating_point()} | _weight_dtypes(weights)
    names = {_BY_DTYPE.get(d, "float32") for d in dtypes} or {"float32"}
    cuda = any(t.is_cuda for t in outputs)
    if cuda and "float32" in names and _tf32_allowed():
        names = (names - {"float32"}) | {"tf32"}
    fmt = PRECISIONS[max(names, key=_COARSENESS.index)]
    return fmt.on_cuda() if cuda else fmt


def _weight_dtypes(weights: Mapping[str, torch.Tensor] | None) -> set[torch.dtype]:
    dtype = getattr(weights, "dtype", None)
    if isinstance(dtype, torch.dtype):  # a lazy mapping converts every tensor it reads
        return {dtype} if dtype.is_floating_point else set()
    if isinstance(weights, dict):
        return {t.dtype for t in weights.values() if isinstance(t, torch.Tensor)
                and t.is_floating_point()}  # fmt: skip
    stored = getattr(weights, "stored_dtype", None)
    if weights is not None and callable(stored):  # one that reads them as stored
        return {d for d in (stored(k) for k in weights) if d.is_floating_point}
    return set()


def _tf32_allowed() -> bool:
    matmul = torch.backends.cuda.matmul.allow_tf32
    return bool(matmul or torch.backends.cudnn.allow_tf32)


# --------------------------------------------------------------------------- refusing


def _require_finite(tensors: Sequence[Any], what: str) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = count_nonfinite(t)
            if bad:
                raise ModeconnectError(
                    f"equivalence check: {what} hold {bad} non-finite values (NaN or inf) in a "
                    f"tensor of shape {tuple(t.shape)}; the check needs finite values, so pass "
                    "probe data without NaN or inf"
                )


_WRONG_SPEC = (
    "so the permutation spec is wrong for this model and nothing was written; please report "
    "the model with the output of `modeconnect spec`"
)


def require_equivalence(eq: Equivalence, what: str = "aligned B") -> None:
    """Raise :class:`EquivalenceError` (one line naming the failed test) unless ``eq`` passed."""
    failed = eq.failed
    if failed is None:
        return
    values = (f"outputs differ by up to {eq.max_abs_diff:.3g}, {eq.max_rel_diff:.3g} of their "
              f"magnitude > tolerance {eq.tolerance:.3g} in {eq.precision}")  # fmt: skip
    if failed == "predictions":
        message = (
            f"equivalence check (predictions): {what} does not compute the same function as "
            f"before the permutation: it predicts another class on {eq.contested} of {eq.rows} "
            f"probe rows ({values}), {_WRONG_SPEC}"
        )
    elif failed == "values":
        message = (
            f"equivalence check (values): {what} does not compute the same function as before "
            f"the permutation ({values}; predictions agree on {eq.agreement:.1%} of "
            f"{eq.rows} probe rows), {_WRONG_SPEC}"
        )
    else:
        message = f"equivalence check (cannot verify): {_unverifiable(eq, what)}"
    raise EquivalenceError(message, eq)


def require_written(eq: Equivalence) -> None:
    """Raise :class:`EquivalenceError` (one line) unless :func:`check_written`'s ``eq`` passed."""
    if eq.failed is None:
        return
    dtype = eq.precision.removesuffix(" (written)")
    raise EquivalenceError(
        f"equivalence check (written, {eq.failed}): aligned B rounded to B's stored {dtype} "
        f"moves its outputs by up to {eq.max_rel_diff:.3g} of their magnitude (tolerance "
        f"{eq.tolerance:.3g} in {dtype}; predictions agree on {eq.agreement:.1%} of {eq.rows} "
        "probe rows); nothing was written; align with --symmetry permutation (exact in every "
        "dtype), or convert B to float32 first",
        eq,
    )


def _unverifiable(eq: Equivalence, what: str) -> str:
    if eq.variation == 0:
        cause = (f"B's outputs (magnitude {eq.magnitude:.3g}) are the same for every probe "
                 "input, so no difference could show")  # fmt: skip
    else:
        cause = (
            f"B's outputs reach {eq.magnitude:.3g} but vary over the probe batch (per-row and "
            f"per-column offsets removed) by only {eq.variation:.3g}, so the rounding allowed "
            f"there ({eq.tolerance:.3g} x {eq.magnitude:.3g}) is {eq.resolution:.3g} of that "
            f"variation (at most {eq.limit:g} can be checked)"
        )
    wider = "" if eq.precision.startswith("float32") else "run the model in float32, "
    return (
        f"{what} cannot be verified in {eq.precision}: {cause}; nothing was written; "
        f"{wider}remove large constant offsets from B's outputs or pass probe data on which "
        "they vary"
    )
