"""Barrier heights of a curve, and bootstrap intervals for them.

Two definitions (record which one each number uses):

- ``"lerp"`` (Entezari et al. 2022; Git Re-Basin, Ainsworth et al. 2023):
  ``max_α [V(α) − ((1−α)V(0) + αV(1))]``;
- ``"mean"`` (Frankle et al. 2020): ``max_α V(α) − ½(V(0) + V(1))``;

for V = loss and V = error. :func:`bootstrap_barrier` resamples the examples of an
:class:`~modeconnect.evaluation.ExampleCurve` without another forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation.results import (
    Barrier,
    BootstrapBarrier,
    Curve,
    ExampleCurve,
    Interval,
    Metrics,
)

__all__ = [
    "BARRIER_DEFINITIONS",
    "barrier",
    "barrier_definition",
    "barrier_values",
    "bootstrap_barrier",
]


def _lerp_barrier(
    alphas: Sequence[float], values: Sequence[float], ends: tuple[float, float] | None = None
) -> float:
    """``max_α [V(α) − ((1−α)V(0) + αV(1))]`` (Entezari et al. 2022; Ainsworth et al. 2023)."""
    v0, v1 = ends or (_endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0))
    gaps = [v - _lerp(v0, v1, t) for t, v in zip(alphas, values, strict=True) if 0.0 <= t <= 1.0]
    return _nan_max(gaps)


def _mean_barrier(
    alphas: Sequence[float], values: Sequence[float], ends: tuple[float, float] | None = None
) -> float:
    """``max_α V(α) − ½(V(0) + V(1))`` (Frankle et al. 2020)."""
    v0, v1 = ends or (_endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0))
    inside = [v for t, v in zip(alphas, values, strict=True) if 0.0 <= t <= 1.0]
    return _nan_max(inside) - (v0 + v1) / 2


def _nan_max(values: Sequence[float]) -> float:
    # Python's max() is order-dependent with NaN; a NaN value (no accuracy for
    # regression targets) makes the barrier NaN, as torch.amax does.
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _lerp(v0: float, v1: float, t: float) -> float:
    # Two-sided form (as torch.lerp): exact at t=0 and t=1, and exactly v0 when v0 == v1,
    # so endpoints and identical models give a barrier of exactly 0.0.
    return v0 + t * (v1 - v0) if t < 0.5 else v1 - (1.0 - t) * (v1 - v0)


def _endpoint(alphas: Sequence[float], values: Sequence[float], alpha: float) -> float:
    return values[_index_of(alphas, alpha)]


def _index_of(alphas: Sequence[float], alpha: float) -> int:
    for i, t in enumerate(alphas):
        if t == alpha:
            return i
    raise ModeconnectError(
        f"barrier: the curve has no point at alpha={alpha:g} (alphas {list(alphas)}); "
        "a barrier needs both endpoints, so include 0 and 1 in alphas"
    )


BARRIER_DEFINITIONS: dict[str, Callable[..., float]] = {
    "lerp": _lerp_barrier,
    "mean": _mean_barrier,
}
"""Barrier heights by name: ``f(alphas, values, ends=None) -> height``."""


def barrier_definition(definition: str) -> Callable[..., float]:
    """The barrier named ``definition``; raise with the valid names for an unknown one."""
    if definition not in BARRIER_DEFINITIONS:
        raise ModeconnectError(
            f"barrier: unknown definition {definition!r}; "
            f"valid names: {', '.join(sorted(BARRIER_DEFINITIONS))}"
        )
    return BARRIER_DEFINITIONS[definition]


def barrier(
    curve: Curve, definition: str = "lerp", *, baseline: tuple[Metrics, Metrics] | None = None
) -> Barrier:
    """Barrier heights of ``curve`` for V = loss and V = error (``1 - accuracy``).

    - ``"lerp"`` (Entezari et al. 2022; Git Re-Basin, Ainsworth et al. 2023):
      ``max_α [V(α) − ((1−α)V(0) + αV(1))]``.
    - ``"mean"`` (Frankle et al. 2020): ``max_α V(α) − ½(V(0) + V(1))``.

    The maximum runs over the points with ``0 ≤ α ≤ 1``, endpoints included, so
    both barriers are ``≥ 0`` and exactly ``0.0`` for a curve that is flat.
    ``V(0)`` and ``V(1)`` are the curve's own endpoints unless ``baseline`` gives
    the metrics of two other models: layer-wise barriers (Adilova et al. 2024)
    measure a partial interpolation against the full models A and B (and can
    then be negative).

    Examples
    --------
    On a hand-made curve, ``"lerp"`` measures from the line between the endpoints
    (``2.5 − 1.25`` at ``α = 0.25``), ``"mean"`` from their mean (``2.5 − 1.5``):

    >>> import modeconnect as mc
    >>> from modeconnect.evaluation import Curve, CurvePoint
    >>> losses = [1.0, 2.5, 2.0, 2.2, 2.0]
    >>> curve = Curve(tuple(CurvePoint(i / 4, v, 0.5) for i, v in enumerate(losses)))
    >>> mc.barrier(curve)
    Barrier(loss=1.25, error=0.0, definition='lerp')
    >>> mc.barrier(curve, "mean").loss
    1.0

    The path from a model to itself is flat, and its barrier is exactly zero:

    >>> import torch
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8], out_features=3)
    >>> data = [(torch.randn(32, 4), torch.randint(0, 3, (32,)))]
    >>> a = model.state_dict()
    >>> mc.barrier(mc.interpolation_curve(model, a, a, data, steps=5))
    Barrier(loss=0.0, error=0.0, definition='lerp')
    """
    height = barrier_definition(definition)
    alphas = curve.alphas
    if baseline is None:
        loss_ends = error_ends = None
    else:
        loss_ends = (baseline[0].loss, baseline[1].loss)
        error_ends = (baseline[0].error, baseline[1].error)
    return Barrier(
        loss=float(height(alphas, curve.losses, loss_ends)),
        error=float(height(alphas, curve.errors, error_ends)),
        definition=definition,
    )


def barrier_values(alphas: Sequence[float], values: Tensor, definition: str = "lerp") -> Tensor:
    """The barrier of many curves at once: ``values (..., S)`` on the grid ``alphas`` → ``(...)``.

    Same definitions and arithmetic as :func:`barrier` (a ``float64`` input gives
    the same numbers), vectorised for bootstrap resamples.
    """
    barrier_definition(definition)
    t = torch.tensor(alphas, dtype=values.dtype, device=values.device)
    i0, i1 = _index_of(alphas, 0.0), _index_of(alphas, 1.0)
    v0, v1 = values[..., i0 : i0 + 1], values[..., i1 : i1 + 1]
    inside = (t >= 0.0) & (t <= 1.0)
    if definition == "lerp":
        line = torch.where(t < 0.5, v0 + t * (v1 - v0), v1 - (1.0 - t) * (v1 - v0))
        return (values - line)[..., inside].amax(dim=-1)
    return values[..., inside].amax(dim=-1) - ((v0 + v1) / 2).squeeze(-1)


def bootstrap_barrier(
    curve: ExampleCurve,
    definition: str = "lerp",
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapBarrier:
    """Percentile bootstrap interval of the barrier, resampling examples (Efron 1979).

    Each resample draws ``N`` of the ``N`` examples with replacement (the same
    draw at every ``α``: the curve is paired), recomputes every point as a ratio of
    sums ``Σ_i w_i ℓ_i(α) / Σ_i w_i n_i`` with multiplicities ``w``, and the
    barrier. No forward pass is repeated: cost ``O(samples · N · S)``. The
    interval holds the central ``confidence`` mass of the resampled barriers.
    A barrier is a maximum, so its bootstrap distribution sits slightly above the
    point estimate when several ``α`` are near the top. Language-model results
    resample whole sequences.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ModeconnectError(
            f"bootstrap_barrier: samples={samples!r} must be a positive int; pass one"
        )
    if not 0.0 < confidence < 1.0:
        raise ModeconnectError(
            f"bootstrap_barrier: confidence={confidence!r} must lie strictly between 0 and 1; "
            "pass e.g. 0.95"
        )
    loss, hits, count = (m.to(torch.float64) for m in curve.matrices())
    gen = torch.Generator().manual_seed(seed)
    n = count.numel()
    loss_b, error_b = [], []
    for start in range(0, samples, _BOOTSTRAP_CHUNK):
        draws = torch.randint(n, (min(_BOOTSTRAP_CHUNK, samples - start), n), generator=gen)
        w = torch.zeros(draws.shape, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(draws.shape, dtype=torch.float64)
        )
        total = (w @ count.cpu()).unsqueeze(1)
        loss_b.append(barrier_values(curve.alphas, w @ loss.cpu().T / total, definition))
        error_b.append(barrier_values(curve.alphas, 1.0 - w @ hits.cpu().T / total, definition))
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    return BootstrapBarrier(
        loss=_interval(torch.cat(loss_b), q),
        error=_interval(torch.cat(error_b), q),
        definition=definition,
        samples=samples,
        confidence=confidence,
        seed=seed,
    )


_BOOTSTRAP_CHUNK = 256


def _interval(values: Tensor, q: Tensor) -> Interval:
    low, high = torch.quantile(values, q).tolist()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return Interval(low=low, high=high, std=std)
