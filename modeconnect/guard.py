"""The permanent guard: aligned B must compute exactly what B computes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ModeconnectError
from .forward import eval_mode, output_tensors, run

DEFAULT_TOLERANCE = 1e-4
"""Relative tolerance: float32 sums in another order differ by ~1e-6; a wrong permutation by ~1."""


@dataclass(frozen=True)
class Equivalence:
    """How far aligned B's outputs are from B's on the probe batch.

    ``max_rel_diff`` is ``max|f_B(x) - f_B'(x)| / max|f_B(x)|`` over all outputs.
    """

    max_abs_diff: float
    max_rel_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Within tolerance; NaN or inf never passes."""
        return math.isfinite(self.max_rel_diff) and self.max_rel_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def check_equivalence(
    model: nn.Module,
    original: Mapping[str, torch.Tensor],
    permuted: Mapping[str, torch.Tensor],
    inputs: Sequence[Any],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Equivalence:
    """Compare the model's outputs with two state dicts on the same probe inputs.

    The model runs in eval mode through :func:`modeconnect.forward.run`, called as
    :func:`~modeconnect.forward.model_call` says (Hugging Face models give their
    logits). The probe inputs and B's outputs must be finite (a NaN would hide any
    difference); a NaN or inf in the difference makes the check fail.
    """
    _require_finite(inputs, "the probe inputs")
    with eval_mode(model), torch.no_grad():
        ys = output_tensors(run(model, original, inputs))
        zs = output_tensors(run(model, permuted, inputs))
    _require_finite(ys, "B's outputs on the probe inputs")
    if [y.shape for y in ys] != [z.shape for z in zs]:
        return Equivalence(math.inf, math.inf, tolerance)
    if not ys:
        return Equivalence(0.0, 0.0, tolerance)
    # torch reductions propagate NaN; Python's max() would silently drop it.
    abs_diff = max_abs([(y.double() - z.double()) for y, z in zip(ys, zs)])
    scale = max_abs([y.double() for y in ys])
    rel = abs_diff / scale if scale > 0 else abs_diff
    return Equivalence(abs_diff, rel, tolerance)


def max_abs(tensors: Sequence[torch.Tensor]) -> float:
    """``max |t|`` over all tensors, NaN if any entry is NaN (0.0 for no entries)."""
    peaks = [t.abs().amax() for t in tensors if t.numel()]
    return float(torch.stack(peaks).amax()) if peaks else 0.0


def _require_finite(tensors: Sequence[Any], what: str) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ModeconnectError(
                    f"equivalence check: {what} hold {bad} non-finite values (NaN or inf) in a "
                    f"tensor of shape {tuple(t.shape)}; the check needs finite values, so pass "
                    "probe data without NaN or inf"
                )


def require_equivalence(eq: Equivalence, what: str = "aligned B") -> None:
    """Fail loudly when the permuted model is not the same function."""
    if not eq.passed:
        raise ModeconnectError(
            f"equivalence check: {what} does not compute the same function as before the "
            f"permutation (max relative difference {eq.max_rel_diff:.3g} > tolerance "
            f"{eq.tolerance:g}), so the permutation "
            "spec is wrong for this model and nothing was written; please report the model "
            "with the output of `modeconnect spec`"
        )
