"""Linear interpolation between two checkpoints: loss/accuracy curves and barriers.

The path is ``θ(α) = (1-α)·θ_A + α·θ_B`` (Frankle et al. 2020; Entezari et al. 2022;
Ainsworth et al. 2023). Every model is evaluated through
:func:`torch.func.functional_call` with the full state dict (parameters *and*
buffers), so the module's own tensors are never read or written.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError

__all__ = [
    "BARRIER_DEFINITIONS",
    "Barrier",
    "Batch",
    "Curve",
    "CurvePoint",
    "LossFn",
    "Metrics",
    "barrier",
    "evaluate",
    "interpolate",
    "interpolation_curve",
]

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, y) -> scalar`` summed (not averaged) over the batch."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Metrics:
    """Mean loss and top-1 accuracy over all examples (target entries) seen."""

    loss: float
    accuracy: float

    @property
    def error(self) -> float:
        """Top-1 error, ``1 - accuracy``."""
        return 1.0 - self.accuracy


@dataclass(frozen=True)
class CurvePoint:
    """Loss and accuracy of the model at one interpolation coefficient ``alpha``."""

    alpha: float
    loss: float
    accuracy: float

    @property
    def error(self) -> float:
        """Top-1 error, ``1 - accuracy``."""
        return 1.0 - self.accuracy


@dataclass(frozen=True)
class Curve:
    """Loss and accuracy along ``θ(α) = (1-α)·θ_A + α·θ_B``, one point per ``α``."""

    points: tuple[CurvePoint, ...]

    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(p.alpha for p in self.points)

    @property
    def losses(self) -> tuple[float, ...]:
        return tuple(p.loss for p in self.points)

    @property
    def accuracies(self) -> tuple[float, ...]:
        return tuple(p.accuracy for p in self.points)

    @property
    def errors(self) -> tuple[float, ...]:
        return tuple(p.error for p in self.points)

    def to_dict(self) -> list[dict[str, float]]:
        """JSON-ready ``[{"alpha", "loss", "accuracy"}, ...]`` in curve order."""
        return [{"alpha": p.alpha, "loss": p.loss, "accuracy": p.accuracy} for p in self.points]


@dataclass(frozen=True)
class Barrier:
    """Barrier heights of one curve for the loss and the error, under ``definition``."""

    loss: float
    error: float
    definition: str

    def to_dict(self) -> dict[str, float | str]:
        return {"loss": self.loss, "error": self.error, "definition": self.definition}


# --------------------------------------------------------------------------- interpolation


def interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """Return ``θ(α) = (1-α)·a + α·b`` for every floating tensor; others come from ``a``.

    Computed in each tensor's dtype with :func:`torch.lerp`, which is exact at
    ``α=0`` (returns ``a``'s values) and ``α=1`` (``b``'s values), and returns
    ``a`` unchanged wherever ``a == b``. Non-floating tensors (BatchNorm's
    ``num_batches_tracked``) are taken from ``a``. Keys, shapes and dtypes must match.
    Tensors that need no arithmetic (endpoints, integers) are ``a``'s or ``b``'s own
    objects, not copies: clone before writing into them in place.
    """
    _check_pair(a, b)
    return _interpolate(a, b, float(alpha))


def _interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    if alpha == 0.0:
        return dict(a)
    if alpha == 1.0:
        return {k: b[k] if _is_interpolable(v) else v for k, v in a.items()}
    return {k: torch.lerp(v, b[k], alpha) if _is_interpolable(v) else v for k, v in a.items()}


def _is_interpolable(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _check_pair(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    """Raise unless ``a`` and ``b`` have the same keys, shapes and dtypes."""
    _check_keys(set(b), set(a), "state dict B", "state dict A")
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ModeconnectError(
                f"Tensor shape mismatch for {key!r}: A has {tuple(ta.shape)}, "
                f"B has {tuple(tb.shape)}; both checkpoints must come from the same architecture."
            )
        if ta.dtype != tb.dtype:
            raise ModeconnectError(
                f"Tensor dtype mismatch for {key!r}: A has {ta.dtype}, B has {tb.dtype}; "
                "cast both checkpoints to one dtype first."
            )
        if ta.device != tb.device:
            raise ModeconnectError(
                f"Tensor device mismatch for {key!r}: A is on {ta.device}, B on {tb.device}; "
                "move both checkpoints to one device first."
            )


def _check_keys(given: set[str], expected: set[str], what: str, against: str) -> None:
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ModeconnectError(
            f"Keys of {what} do not match {against}: missing {_short(missing)}, "
            f"unexpected {_short(unexpected)}."
        )


def _short(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Binding:
    """How a state dict maps onto a module's parameters and buffers.

    ``groups`` lists, for each distinct tensor of the module, all names it goes by
    (several when weights are tied); ``required`` marks the groups that the
    module's own ``state_dict()`` saves (parameters and persistent buffers).
    """

    groups: tuple[tuple[str, ...], ...]
    required: tuple[bool, ...]
    known: frozenset[str]

    @staticmethod
    def of(model: nn.Module) -> _Binding:
        by_tensor: dict[int, list[str]] = {}
        named: list[tuple[str, Tensor]] = [*model.named_parameters(remove_duplicate=False)]
        named += model.named_buffers(remove_duplicate=False)
        for name, tensor in named:
            by_tensor.setdefault(id(tensor), []).append(name)
        saved = set(model.state_dict(keep_vars=True))
        groups = tuple(tuple(names) for names in by_tensor.values())
        required = tuple(any(n in saved for n in names) for names in groups)
        return _Binding(groups, required, frozenset(n for n, _ in named))

    def check(self, state_dict: Mapping[str, Tensor]) -> None:
        """Raise unless ``state_dict`` gives every tensor of the module and nothing else."""
        pairs = zip(self.groups, self.required, strict=True)
        missing = [g[0] for g, req in pairs if req and _first(g, state_dict) is None]
        unexpected = sorted(set(state_dict) - self.known)
        if missing or unexpected:
            raise ModeconnectError(
                f"State dict does not fit the model: missing {_short(sorted(missing))}, "
                f"unexpected {_short(unexpected)}; load it into the same architecture."
            )

    def bind(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Name every tensor of the module, filling tied aliases from the name given."""
        bound: dict[str, Tensor] = {}
        for names in self.groups:
            value = _first(names, state_dict)
            if value is not None:
                bound.update({n: state_dict.get(n, value) for n in names})
        return bound


def _first(names: Sequence[str], state_dict: Mapping[str, Tensor]) -> Tensor | None:
    return next((state_dict[n] for n in names if n in state_dict), None)


def evaluate(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
) -> Metrics:
    """Mean loss ``(1/N) Σ_i ℓ(f(x_i; θ), y_i)`` and top-1 accuracy of ``model`` with weights ``θ``.

    ``θ = state_dict`` replaces all parameters and buffers through
    :func:`torch.func.functional_call`; the model runs in eval mode under
    ``torch.no_grad()`` and its own tensors and training flags are left unchanged.
    ``batches`` yields ``(x, y)`` with logits ``(N, C, ...)`` and class indices
    ``y`` ``(N, ...)``; accuracy compares ``argmax`` over dim 1 with ``y``.
    ``loss_fn(logits, y)`` must return the loss *summed* over the batch
    (default: cross-entropy with ``reduction="sum"``); sums accumulate in float64.
    """
    binding = _Binding.of(model)
    binding.check(state_dict)
    with _eval_mode(model), torch.no_grad():
        return _evaluate(model, binding.bind(state_dict), batches, loss_fn or _cross_entropy_sum)


def _cross_entropy_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _evaluate(
    model: nn.Module, params: dict[str, Tensor], batches: Iterable[Batch], loss_fn: LossFn
) -> Metrics:
    # One functional_call around the whole pass swaps the weights in once, not once per
    # batch: the swap costs ~5 µs per tensor, i.e. ~1 ms per batch for a 150-tensor ResNet.
    wrapped = {f"{_Pass.PREFIX}{k}": v for k, v in params.items()}
    metrics: Metrics = torch.func.functional_call(
        _Pass(model, loss_fn), wrapped, (batches,), tie_weights=False
    )
    return metrics


class _Pass(nn.Module):
    """One pass of ``model`` over ``batches``, returning the mean loss and accuracy."""

    PREFIX = "model."

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batches: Iterable[Batch]) -> Metrics:
        # Sums stay on the device until the end: one synchronisation per pass, not per batch.
        losses: list[Tensor] = []
        hits: list[Tensor] = []
        count = 0
        for x, y in batches:
            logits = self.model(x)
            losses.append(_summed_loss(self.loss_fn(logits, y)))
            hits.append((logits.argmax(dim=1) == y).sum())
            count += y.numel()
        if count == 0:
            raise ModeconnectError(
                "No examples to evaluate: `batches` is empty; pass some (x, y) batches."
            )
        # Per-batch sums are in the model's dtype; the sum over batches is in float64.
        loss = torch.stack(losses).to(torch.float64).sum().item() / count
        return Metrics(loss=loss, accuracy=torch.stack(hits).sum().item() / count)


def _summed_loss(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ModeconnectError(
            f"loss_fn returned {shape}; it must return a 0-dim tensor, "
            'the loss summed over the batch (reduction="sum").'
        )
    return loss


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


# --------------------------------------------------------------------------- curves


def interpolation_curve(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    batches: Iterable[Batch],
    *,
    steps: int = 25,
    alphas: Sequence[float] | None = None,
    loss_fn: LossFn | None = None,
) -> Curve:
    """Evaluate ``θ(α) = (1-α)·θ_A + α·θ_B`` at each ``α`` (Frankle et al. 2020).

    ``alphas`` defaults to ``steps`` evenly spaced values from 0 to 1, both
    included. The endpoints are ``a`` and ``b`` themselves, so their points equal
    ``evaluate(model, a, ...)`` and ``evaluate(model, b, ...)`` exactly.
    ``batches`` is iterated once per ``α`` and must be re-iterable (a list,
    a ``DataLoader``), not a generator. See :func:`evaluate` for ``loss_fn``.
    """
    grid = _alpha_grid(steps, alphas)
    _check_pair(a, b)
    binding = _Binding.of(model)
    binding.check(a)
    _check_reiterable(batches, len(grid))
    fn = loss_fn or _cross_entropy_sum
    points = []
    with _eval_mode(model), torch.no_grad():
        for alpha in grid:
            metrics = _evaluate(model, binding.bind(_interpolate(a, b, alpha)), batches, fn)
            points.append(CurvePoint(alpha, metrics.loss, metrics.accuracy))
    return Curve(tuple(points))


def _alpha_grid(steps: int, alphas: Sequence[float] | None) -> tuple[float, ...]:
    if alphas is not None:
        grid = tuple(float(x) for x in alphas)
        if not grid or not all(math.isfinite(x) for x in grid):
            raise ModeconnectError(f"alphas={list(alphas)!r} must be finite numbers, at least one.")
        return grid
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ModeconnectError(
            f"steps={steps!r} must be an int >= 2 (alpha=0 and alpha=1 included)."
        )
    # i / (steps-1) hits 0.0 and 1.0 exactly (linspace's float arithmetic need not).
    return tuple(i / (steps - 1) for i in range(steps))


def _check_reiterable(batches: Iterable[Any], passes: int) -> None:
    if passes > 1 and iter(batches) is batches:
        raise ModeconnectError(
            "batches is a one-shot iterator but the curve needs one pass per alpha; "
            "pass a list of (x, y) batches or a DataLoader."
        )


# --------------------------------------------------------------------------- barriers


def _lerp_barrier(alphas: Sequence[float], values: Sequence[float]) -> float:
    """``max_α [V(α) − ((1−α)V(0) + αV(1))]`` (Entezari et al. 2022; Ainsworth et al. 2023)."""
    v0, v1 = _endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0)
    return max(v - _lerp(v0, v1, t) for t, v in zip(alphas, values, strict=True) if 0.0 <= t <= 1.0)


def _mean_barrier(alphas: Sequence[float], values: Sequence[float]) -> float:
    """``max_α V(α) − ½(V(0) + V(1))`` (Frankle et al. 2020)."""
    v0, v1 = _endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0)
    return max(v for t, v in zip(alphas, values, strict=True) if 0.0 <= t <= 1.0) - (v0 + v1) / 2


def _lerp(v0: float, v1: float, t: float) -> float:
    # Two-sided form (as torch.lerp): exact at t=0 and t=1, and exactly v0 when v0 == v1,
    # so endpoints and identical models give a barrier of exactly 0.0.
    return v0 + t * (v1 - v0) if t < 0.5 else v1 - (1.0 - t) * (v1 - v0)


def _endpoint(alphas: Sequence[float], values: Sequence[float], alpha: float) -> float:
    for t, v in zip(alphas, values, strict=True):
        if t == alpha:
            return v
    raise ModeconnectError(
        f"The curve has no point at alpha={alpha:g} (alphas {list(alphas)}); "
        "a barrier needs both endpoints, so include 0 and 1 in alphas."
    )


BARRIER_DEFINITIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "lerp": _lerp_barrier,
    "mean": _mean_barrier,
}


def barrier(curve: Curve, definition: str = "lerp") -> Barrier:
    """Barrier heights of ``curve`` for V = loss and V = error (``1 - accuracy``).

    - ``"lerp"`` (Entezari et al. 2022; Git Re-Basin, Ainsworth et al. 2023):
      ``max_α [V(α) − ((1−α)V(0) + αV(1))]``.
    - ``"mean"`` (Frankle et al. 2020): ``max_α V(α) − ½(V(0) + V(1))``.

    The maximum runs over the points with ``0 ≤ α ≤ 1``, endpoints included, so
    both barriers are ``≥ 0`` and exactly ``0.0`` for a curve that is flat.
    """
    if definition not in BARRIER_DEFINITIONS:
        raise ModeconnectError(
            f"Unknown barrier definition {definition!r}; "
            f"valid names: {', '.join(sorted(BARRIER_DEFINITIONS))}."
        )
    height = BARRIER_DEFINITIONS[definition]
    alphas = curve.alphas
    return Barrier(
        loss=float(height(alphas, curve.losses)),
        error=float(height(alphas, curve.errors)),
        definition=definition,
    )
