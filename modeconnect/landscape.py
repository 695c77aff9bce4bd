"""Loss landscapes: the plane through three models, and filter-normalised slices.

* **Planes** (Garipov et al. 2018, Fig. 1): the affine plane through three models
  ``θ_A, θ_B, θ_C`` (e.g. two endpoints and a curve's bend), in the orthonormal
  basis that Gram-Schmidt gives, ``u = (θ_B − θ_A)/‖θ_B − θ_A‖`` and ``v ∝ (θ_C − θ_A)
  − ⟨θ_C − θ_A, u⟩u``, origin ``θ_A``: :func:`plane_basis`, :func:`plane_grid`.
  A quadratic Bezier curve lies entirely in the plane of its endpoints and bend.
* **Filter-normalised directions** (Li et al. 2018, "Visualizing the Loss Landscape
  of Neural Nets", Sec. 4): a Gaussian direction ``d`` with each filter ``d_i``
  (an output unit of a linear layer, an output channel of a convolution: a slice
  along axis 0) rescaled to the norm of the model's filter, ``d_i ← d_i ‖θ_i‖/‖d_i‖``,
  and the directions of biases and BatchNorm parameters (every tensor of at most
  one dimension) set to zero, as in the paper: :func:`filter_normalized_direction`,
  :func:`slice_1d` (``L(θ + x d)``), :func:`surface_2d` (``L(θ + x d_1 + y d_2)``).

Each point is evaluated as :func:`modeconnect.evaluation` does (mean loss, top-1
accuracy), with BatchNorm statistics recomputed at each point when asked
(``bn="auto"`` does so for planes of models with BatchNorm). Points go through
:func:`modeconnect.evaluation.point_rows`, ``points_per_pass`` of them in one
vectorised pass (default: chosen from the model and the data; ``1``: one by one). With
``cluster`` (:class:`~modeconnect.distributed.Cluster`) the rows are evaluated on Ray, each
by the same code as here, so the numbers are the same to the bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.bn import BatchNormReset, bn_correction
from modeconnect.distributed import Cluster, map_chunks
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import (
    Batch,
    ExampleResults,
    LossChoice,
    PathFn,
    get_scoring,
    loss_name,
    point_rows,
)
from modeconnect.evaluation.engine import Pass
from modeconnect.forward import eval_mode
from modeconnect.objective import StateDict, check_positive, weights_of
from modeconnect.progress import ProgressFn

__all__ = [
    "LossSlice",
    "LossSurface",
    "PlaneBasis",
    "filter_normalized_direction",
    "plane_basis",
    "plane_grid",
    "slice_1d",
    "surface_2d",
]

_DEGENERATE = 64
"""Relative lengths below this many float epsilons (of the tensors' dtype) are rounding:
two of the three models are then the same point, or the three lie on one line."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LossSurface:
    """Loss and accuracy on a grid: ``loss[j][i]`` at ``origin + xs[i]·u + ys[j]·v``.

    ``kind`` is ``"plane"`` (through three models) or ``"filter_normalized"``
    (around one); ``points`` gives the models' coordinates by name, ``paths``
    projected paths (a line, a curve) as lists of ``(x, y)``.
    """

    kind: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    loss: tuple[tuple[float, ...], ...]
    accuracy: tuple[tuple[float, ...], ...]
    points: Mapping[str, tuple[float, float]]
    paths: Mapping[str, tuple[tuple[float, float], ...]]
    params: Mapping[str, Any]

    @property
    def error(self) -> tuple[tuple[float, ...], ...]:
        """Top-1 error ``1 - accuracy`` on the grid."""
        return tuple(tuple(1.0 - a for a in row) for row in self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "xs": list(self.xs),
            "ys": list(self.ys),
            "loss": [list(row) for row in self.loss],
            "accuracy": [list(row) for row in self.accuracy],
            "points": {name: list(xy) for name, xy in self.points.items()},
            "paths": {name: [list(xy) for xy in p] for name, p in self.paths.items()},
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class LossSlice:
    """Loss and accuracy along one direction: ``loss[i]`` at ``θ + xs[i]·d``."""

    xs: tuple[float, ...]
    loss: tuple[float, ...]
    accuracy: tuple[float, ...]
    params: Mapping[str, Any]

    @property
    def error(self) -> tuple[float, ...]:
        return tuple(1.0 - a for a in self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "filter_normalized",
            "xs": list(self.xs),
            "loss": list(self.loss),
            "accuracy": list(self.accuracy),
            "params": dict(self.params),
        }


# --------------------------------------------------------------------------- plane


@dataclass(frozen=True, eq=False)
class PlaneBasis:
    """The plane through three models: origin ``θ_A``, orthonormal ``u``, ``v`` (float64).

    Only ``keys`` span the plane; every other tensor of a point is the origin's.
    ``coordinates`` are those of A, B and C: ``(0, 0)``, ``(‖θ_B − θ_A‖, 0)``,
    ``(⟨θ_C − θ_A, u⟩, ⟨θ_C − θ_A, v⟩)``.
    """

    origin: StateDict
    u: Mapping[str, Tensor]
    v: Mapping[str, Tensor]
    coordinates: tuple[tuple[float, float], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.u)

    def point(self, x: float, y: float) -> dict[str, Tensor]:
        """``θ_A + x·u + y·v`` in each tensor's dtype (summed in float32, float64 for float64
        tensors); ``(0, 0)`` is ``θ_A``."""
        return self._shifts(x, y)

    @functools.cached_property
    def _shifts(self) -> _Shifts:
        return _Shifts(self.origin, [self.u, self.v])

    def project(self, state: StateDict) -> tuple[float, float]:
        """Coordinates ``(⟨θ − θ_A, u⟩, ⟨θ − θ_A, v⟩)`` of ``state``'s orthogonal projection."""
        diff = _difference(state, self.origin, self.keys)
        return _dot(diff, self.u), _dot(diff, self.v)

    def distance(self, state: StateDict) -> float:
        """Euclidean distance from ``state`` to the plane (over ``keys``)."""
        diff = _difference(state, self.origin, self.keys)
        x, y = _dot(diff, self.u), _dot(diff, self.v)
        rest = _axpy(_axpy(diff, self.u, -x), self.v, -y)
        return math.sqrt(_dot(rest, rest))


def plane_basis(
    a: StateDict, b: StateDict, c: StateDict, *, keys: Sequence[str] | None = None
) -> PlaneBasis:
    """Gram-Schmidt basis of the plane through ``a``, ``b``, ``c`` (see :class:`PlaneBasis`).

    ``keys`` (default: every floating tensor of ``a``) are the coordinates of the
    weight vector; :func:`plane_grid` passes the model's parameters, so buffers
    (BatchNorm statistics) stay out of the geometry. Raises when B equals A or
    C lies on the line through A and B.

    Examples
    --------
    A is the origin, B lies on the first axis at its distance from A, and C lies
    in the plane:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> a, b, c = (mlp(4, [8], 3).state_dict() for _ in range(3))
    >>> basis = mc.plane_basis(a, b, c)
    >>> (xa, ya), (xb, yb), (xc, yc) = basis.coordinates
    >>> (xa, ya, yb), yc > 0
    ((0.0, 0.0, 0.0), True)
    >>> distance = sum(((b[k] - a[k]) ** 2).sum() for k in a).sqrt().item()
    >>> abs(xb - distance) < 1e-5, basis.distance(c) < 1e-9
    (True, True)
    """
    keys = _floating_keys(a, keys, "plane_basis")
    for name, other in (("B", b), ("C", c)):
        _check_like(a, other, keys, f"plane_basis: model {name}")
    tiny = _DEGENERATE * max(torch.finfo(a[k].dtype).eps for k in keys)
    e1 = _difference(b, a, keys)
    length = math.sqrt(_dot(e1, e1))
    scale = math.sqrt(_dot(_as64(a, keys), _as64(a, keys))) or 1.0
    if length <= tiny * scale:
        raise ModeconnectError(
            "plane_basis: A and B are the same point; pass three distinct models"
        )
    u = {k: t / length for k, t in e1.items()}
    ec = _difference(c, a, keys)
    xc = _dot(ec, u)
    e2 = _axpy(ec, u, -xc)
    height = math.sqrt(_dot(e2, e2))
    if height <= tiny * max(math.sqrt(_dot(ec, ec)), length):
        raise ModeconnectError(
            "plane_basis: C lies on the line through A and B, so the three models span no "
            "plane; pass another third model (e.g. a curve's bend)"
        )
    v = {k: t / height for k, t in e2.items()}
    return PlaneBasis(a, u, v, ((0.0, 0.0), (length, 0.0), (xc, height)))


def plane_grid(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    c: StateDict,
    batches: Iterable[Batch],
    *,
    resolution: int = 21,
    margin: float = 0.2,
    names: tuple[str, str, str] = ("A", "B", "C"),
    paths: Mapping[str, PathFn] | None = None,
    path_steps: int = 25,
    train: Iterable[Batch] | None = None,
    bn: str = "auto",
    loss: LossChoice = None,
    max_bn_batches: int | None = None,
    progress: ProgressFn | None = None,
    points_per_pass: int | None = None,
    cluster: Cluster | None = None,
) -> LossSurface:
    """Loss and accuracy on a ``resolution × resolution`` grid over the plane through three models.

    The grid spans the three models' coordinates (:func:`plane_basis` over the
    model's parameters) widened by ``margin`` times their extent on each side,
    as in Garipov et al. 2018. Buffers of every grid point are A's; with
    BatchNorm (``bn="auto"``) they are recomputed on ``train`` at every point.
    ``paths`` (name → ``t -> state``, e.g. ``linear_path(a, b)`` and
    ``CurveFit.path()``) are projected onto the plane at ``path_steps`` points.
    """
    check_positive("plane_grid", "resolution", resolution)
    if resolution < 2 or not (math.isfinite(margin) and margin >= 0):
        raise ModeconnectError(
            f"plane_grid: resolution={resolution!r} must be >= 2 and margin={margin!r} >= 0; "
            "pass such values"
        )
    weights = weights_of(model, a)
    basis = plane_basis(a, b, c, keys=weights.parameters)
    reset = bn_correction(model, bn, train, where="plane_grid", max_batches=max_bn_batches)
    px = [xy[0] for xy in basis.coordinates]
    py = [xy[1] for xy in basis.coordinates]
    xs = _span(min(px), max(px), margin, resolution)
    ys = _span(min(py), max(py), margin, resolution)
    loss_grid, acc_grid = _grid_on(
        cluster,
        model,
        basis._shifts,
        xs,
        ys,
        batches,
        loss,
        reset,
        progress,
        "plane",
        points_per_pass,
    )
    steps = tuple(i / (path_steps - 1) for i in range(path_steps))
    projected = {
        name: tuple(basis.project(path(t)) for t in steps) for name, path in (paths or {}).items()
    }
    return LossSurface(
        kind="plane",
        xs=xs,
        ys=ys,
        loss=loss_grid,
        accuracy=acc_grid,
        points=dict(zip(names, basis.coordinates, strict=True)),
        paths=projected,
        params={"resolution": resolution, "margin": margin, "bn": bn, "loss": loss_name(loss)},
    )


def _span(low: float, high: float, margin: float, n: int) -> tuple[float, ...]:
    pad = margin * (high - low)
    lo, hi = low - pad, high + pad
    return tuple(lo + (hi - lo) * i / (n - 1) for i in range(n))


# --------------------------------------------------------------------------- filter-normalised


def filter_normalized_direction(
    state: StateDict,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """A random direction normalised per filter (Li et al. 2018), one tensor per floating key.

    For each tensor ``θ`` of ``keys`` (default: every floating tensor) with at
    least two dimensions, ``d ~ N(0, I)`` and each filter ``d_i = d[i]`` is scaled
    to ``‖d_i‖ = ‖θ_i‖`` (a zero filter stays zero). Tensors of one dimension or
    none (biases, BatchNorm and LayerNorm parameters and statistics) and floating
    tensors outside ``keys`` get a zero direction. ``generator`` (default: a new
    one seeded with ``seed``) draws the Gaussians in state-dict order.

    Examples
    --------
    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> state = mlp(in_features=4, hidden=[8], out_features=3).state_dict()
    >>> d = mc.filter_normalized_direction(state, seed=0)
    >>> torch.allclose(d["1.weight"].norm(dim=1), state["1.weight"].norm(dim=1))
    True
    >>> d["1.bias"].count_nonzero().item()
    0
    """
    chosen = set(_floating_keys(state, keys, "filter_normalized_direction"))
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        if key not in chosen or value.dim() <= 1:
            out[key] = torch.zeros_like(value)
            continue
        d = torch.randn(value.shape, generator=gen, dtype=torch.float64)
        theta = value.detach().to("cpu", torch.float64)
        view = (-1,) + (1,) * (value.dim() - 1)
        d_norm = d.flatten(1).norm(dim=1).view(view)
        scale = theta.flatten(1).norm(dim=1).view(view) / torch.where(d_norm > 0, d_norm, 1.0)
        out[key] = (d * scale).to(value.device, value.dtype)
    return out


def slice_1d(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    direction: StateDict | None = None,
    seed: int = 0,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int = 51,
    train: Iterable[Batch] | None = None,
    bn: str = "none",
    loss: LossChoice = None,
    max_bn_batches: int | None = None,
    progress: ProgressFn | None = None,
    points_per_pass: int | None = None,
    cluster: Cluster | None = None,
) -> LossSlice:
    """``L(θ + x·d)`` and accuracy at ``steps`` evenly spaced ``x`` over ``span``.

    ``d`` defaults to :func:`filter_normalized_direction` of the model's
    parameters, seeded by ``seed``; ``bn="none"`` keeps the model's BatchNorm
    statistics, as Li et al. do (the BatchNorm parameters do not move).
    """
    check_positive("slice_1d", "steps", steps)
    weights = weights_of(model, state)
    if direction is None:
        direction = filter_normalized_direction(state, seed=seed, keys=weights.parameters)
    _check_like(state, direction, list(direction), "slice_1d: direction")
    reset = bn_correction(model, bn, train, where="slice_1d", max_batches=max_bn_batches)
    xs = _grid(span, steps, "slice_1d")

    shifts = _Shifts(state, [direction])  # (x, y) -> state + x·d: y has no direction
    loss_grid, acc_grid = _grid_on(
        cluster, model, shifts, xs, (0.0,), batches, loss, reset, progress, "slice", points_per_pass
    )
    params = {"seed": seed, "span": list(span), "steps": steps, "bn": bn, "loss": loss_name(loss)}
    return LossSlice(xs, loss_grid[0], acc_grid[0], params)


def surface_2d(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    directions: tuple[StateDict, StateDict] | None = None,
    seed: int = 0,
    span: tuple[float, float] = (-1.0, 1.0),
    resolution: int = 21,
    train: Iterable[Batch] | None = None,
    bn: str = "none",
    loss: LossChoice = None,
    max_bn_batches: int | None = None,
    progress: ProgressFn | None = None,
    points_per_pass: int | None = None,
    cluster: Cluster | None = None,
) -> LossSurface:
    """``L(θ + x·d_1 + y·d_2)`` on a ``resolution × resolution`` grid over ``span × span``.

    ``d_1``, ``d_2`` default to two :func:`filter_normalized_direction`\\ s of the
    model's parameters drawn one after the other from a generator seeded with
    ``seed`` (Li et al. 2018, Fig. 1 and Sec. 4-6).
    """
    check_positive("surface_2d", "resolution", resolution)
    weights = weights_of(model, state)
    if directions is None:
        gen = torch.Generator().manual_seed(seed)
        directions = (
            filter_normalized_direction(state, generator=gen, keys=weights.parameters),
            filter_normalized_direction(state, generator=gen, keys=weights.parameters),
        )
    d1, d2 = directions
    for d in directions:
        _check_like(state, d, list(d), "surface_2d: direction")
    reset = bn_correction(model, bn, train, where="surface_2d", max_batches=max_bn_batches)
    axis = _grid(span, resolution, "surface_2d")

    point = _Shifts(state, [d1, d2])

    loss_grid, acc_grid = _grid_on(
        cluster,
        model,
        point,
        axis,
        axis,
        batches,
        loss,
        reset,
        progress,
        "surface",
        points_per_pass,
    )
    return LossSurface(
        kind="filter_normalized",
        xs=axis,
        ys=axis,
        loss=loss_grid,
        accuracy=acc_grid,
        points={"model": (0.0, 0.0)},
        paths={},
        params={
            "seed": seed, "span": list(span), "resolution": resolution, "bn": bn,
            "loss": loss_name(loss),
        },
    )  # fmt: skip


def _grid(span: tuple[float, float], n: int, where: str) -> tuple[float, ...]:
    lo, hi = (float(s) for s in span)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ModeconnectError(
            f"{where}: span={span!r} is not two finite numbers low < high; pass e.g. (-1, 1)"
        )
    if n == 1:
        return (0.0,)
    return tuple(lo + (hi - lo) * i / (n - 1) for i in range(n))


# --------------------------------------------------------------------------- evaluation


def _evaluate_grid(
    model: nn.Module,
    point: _Shifts,
    xs: Sequence[float],
    ys: Sequence[float],
    batches: Iterable[Batch],
    loss: LossChoice,
    reset: BatchNormReset | None,
    progress: ProgressFn | None,
    task: str,
    points_per_pass: int | None = None,
) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Mean loss and accuracy at every ``point(x, y)``, rows over ``ys``, columns over ``xs``.

    The points are built a row at a time into reused buffers (:class:`_RowPoints`, the
    same values as ``point(x, y)``). Every point goes through
    :func:`~modeconnect.evaluation.point_rows`: ``k`` points per pass (``points_per_pass``;
    ``None``: chosen from the model and the data), their BatchNorm statistics reset
    together (:meth:`BatchNormReset.many`). The point ``(0, 0)`` (the model itself) runs
    alone, so it equals its own evaluation exactly.
    """
    if iter(batches) is batches:
        raise ModeconnectError(
            f"{task}: batches is a one-shot iterator but every grid point needs a pass; "
            "pass a list of (x, y) batches or a DataLoader"
        )
    coords = [(x, y) for y in ys for x in xs]

    points = _RowPoints(point)

    def build(idx: Sequence[int]) -> list[dict[str, Tensor]]:
        states = points([coords[i] for i in idx])
        if reset is None:
            return states
        return reset.many(states) if len(states) > 1 else [reset(s) for s in states]

    scoring = get_scoring(loss, model)
    runner = Pass.of(model, scoring, per_example=True)
    alone = [i for i, xy in enumerate(coords) if xy == (0.0, 0.0)]
    with eval_mode(model), torch.no_grad():
        raw = point_rows(
            runner, build, len(coords), {"data": batches}, points_per_pass, progress, task, alone
        )["data"]
    metrics = [ExampleResults(*rows, per_token=scoring.per_token).metrics() for rows in raw]
    n = len(xs)
    losses = tuple(tuple(m.loss for m in metrics[j * n : (j + 1) * n]) for j in range(len(ys)))
    accs = tuple(tuple(m.accuracy for m in metrics[j * n : (j + 1) * n]) for j in range(len(ys)))
    return losses, accs


# --------------------------------------------------------------------------- vector helpers


Vector = dict[str, Tensor]


def _floating_keys(state: StateDict, keys: Sequence[str] | None, where: str) -> tuple[str, ...]:
    if keys is None:
        return tuple(k for k, v in state.items() if v.is_floating_point())
    unknown = sorted(k for k in keys if k not in state or not state[k].is_floating_point())
    if unknown:
        raise ModeconnectError(
            f"{where}: keys {unknown[:5]} are not floating tensors of the state dict; "
            "pass names of weight tensors"
        )
    return tuple(keys)


def _check_like(ref: StateDict, other: StateDict, keys: Iterable[str], what: str) -> None:
    for key in keys:
        if key not in other or key not in ref or other[key].shape != ref[key].shape:
            got = tuple(other[key].shape) if key in other else "nothing"
            want = tuple(ref[key].shape) if key in ref else "nothing"
            raise ModeconnectError(
                f"{what} has {got} for tensor {key!r} where the model has {want}; "
                "all models must come from the same architecture"
            )


def _as64(state: StateDict, keys: Iterable[str]) -> Vector:
    return {k: state[k].detach().to(torch.float64) for k in keys}


def _difference(state: StateDict, origin: StateDict, keys: Iterable[str]) -> Vector:
    return {k: state[k].detach().to(torch.float64) - origin[k].to(torch.float64) for k in keys}


def _dot(x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> float:
    return float(sum(torch.dot(x[k].flatten(), y[k].flatten()) for k in x))


def _axpy(x: Mapping[str, Tensor], y: Mapping[str, Tensor], alpha: float) -> Vector:
    """``x + alpha·y``."""
    return {k: x[k] + alpha * y[k] for k in x}


def _shifted(origin: StateDict, moves: Sequence[tuple[Mapping[str, Tensor], float]]) -> Vector:
    """``origin + Σ c·d`` over ``moves = [(d, c), ...]`` (:class:`_Shifts`); no move: ``origin``."""
    return _Shifts(origin, [d for d, _ in moves])(*(c for _, c in moves))


class _Shifts:
    """``(c_1, c_2, ...) -> origin + Σ c_i·d_i`` for the many points of a grid.

    Summed in float32 (float64 for float64 tensors) with fused ``add(alpha=c)``, the
    last direction first, and cast to each tensor's dtype; the directions are converted
    once, not per point. Building a point this way costs a few passes over the weights,
    against a pass over the data for evaluating it (the float64 sums it replaces took as
    long as the evaluation on the digits pair). :class:`_RowPoints` builds the same
    points, to the bit, a grid row at a time.
    """

    def __init__(self, origin: StateDict, directions: Sequence[Mapping[str, Tensor]]) -> None:
        self.origin = origin
        keys = dict.fromkeys(k for d in directions for k in d)
        self.base = {k: _wide(origin[k].detach()) for k in keys}
        # Zero directions (biases of filter-normalised ones) move nothing: skipped.
        self.directions = [
            {k: t.to(self.base[k].dtype) for k, t in d.items() if bool(t.any())} for d in directions
        ]

    def __call__(self, *coefficients: float) -> Vector:
        return self.cast(self.moved(coefficients))

    def moved(self, coefficients: Sequence[float]) -> Vector:
        """``base + Σ c_i·d_i`` in the wide dtype, for the tensors that move only."""
        active = [(d, float(c)) for d, c in zip(self.directions, coefficients) if c != 0.0]
        out: Vector = {}
        for d, c in reversed(active):
            for key, t in d.items():
                if key in out:
                    out[key].add_(t, alpha=c)  # a new tensor already: one allocation per key
                else:
                    out[key] = torch.add(self.base[key], t, alpha=c)
        return out

    def cast(self, moved: Mapping[str, Tensor]) -> Vector:
        """The origin with ``moved`` tensors (wide) in place, each in the origin's dtype."""
        out = dict(self.origin)
        out.update({k: t.to(self.origin[k].dtype) for k, t in moved.items()})
        return out


class _RowPoints:
    """The points of a grid, a row at a time: what :class:`_Shifts` gives, to the bit, cheaper.

    ``origin + Σ_{i≥2} c_i·d_i`` (the row) is summed once per row and kept; each point
    then adds ``c_1·d_1`` to it in one ``add(alpha=c_1)`` per tensor of ``d_1`` (the
    last step of :meth:`_Shifts.moved`, so the values are the same), written into
    buffers that the next call reuses: one pass over the weights per point instead of
    one per direction, and no allocation. The ``j``-th point of a call is written to
    slot ``j``, so **the states of a call are valid until the next call**: the engine
    (:func:`~modeconnect.evaluation.point_rows`) drops a chunk's states before it
    builds the next.
    """

    def __init__(self, shifts: _Shifts) -> None:
        self.shifts = shifts
        self.row: tuple[tuple[float, ...], Vector] | None = None
        self.slots: list[Vector] = []

    def __call__(self, points: Sequence[Sequence[float]]) -> list[Vector]:
        return [self._point(j, [float(c) for c in p]) for j, p in enumerate(points)]

    def _point(self, slot: int, coefficients: list[float]) -> Vector:
        shifts, first, rest = self.shifts, coefficients[0], tuple(coefficients[1:])
        if self.row is None or self.row[0] != rest:
            self.row = (rest, shifts.moved((0.0, *rest)))
        moved = dict(self.row[1])
        if first != 0.0 and shifts.directions:
            while len(self.slots) <= slot:
                self.slots.append({})
            buffers = self.slots[slot]
            for key, d in shifts.directions[0].items():
                src = moved.get(key, shifts.base[key])
                buf = buffers.get(key)
                if buf is None:
                    buf = buffers[key] = torch.empty_like(src)
                moved[key] = torch.add(src, d, alpha=first, out=buf)
        return shifts.cast(moved)


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is float64: the dtype points are summed in."""
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


# --------------------------------------------------------------------------- on a cluster

Grid = tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]
Tile = tuple[tuple[float, ...], tuple[float, ...]]


def _grid_on(cluster: Cluster | None, *args: Any) -> Grid:
    """``_evaluate_grid(*args)``, here or on ``cluster`` one tile (a row, or a run of one
    row's columns) per task; each tile goes through :func:`_evaluate_grid` as the local
    run does, and the model, data, states and BatchNorm reset travel once
    (:func:`~modeconnect.distributed.map_chunks`)."""
    model, point, xs, ys, batches, loss, reset, progress, task, per_pass = args
    if cluster is None or iter(batches) is batches:  # (a one-shot iterator: the same refusal)
        return _evaluate_grid(*args)
    tiles = _tiles(tuple(xs), tuple(ys), cluster.workers or 4)
    shared = (model, point, batches, loss, reset, task, per_pass)
    parts = map_chunks(
        _evaluate_tile, shared, tiles, cluster=cluster,
        sizes=[len(tx) * len(ty) for tx, ty in tiles], progress=progress, task=task,
    )  # fmt: skip
    if len(ys) > 1:  # one row per tile
        return tuple(p[0][0] for p in parts), tuple(p[1][0] for p in parts)
    loss_row = tuple(v for p in parts for v in p[0][0])
    acc_row = tuple(v for p in parts for v in p[1][0])
    return (loss_row,), (acc_row,)


def _tiles(xs: tuple[float, ...], ys: tuple[float, ...], workers: int) -> list[Tile]:
    """Rows of the grid; a grid of one row is cut into runs of about ``len/(4·workers)``."""
    if len(ys) > 1:
        return [(xs, (y,)) for y in ys]
    size = max(1, -(-len(xs) // (4 * workers)))
    return [(xs[i : i + size], ys) for i in range(0, len(xs), size)]


def _evaluate_tile(shared: tuple[Any, ...], tile: Tile) -> Grid:
    model, point, batches, loss, reset, task, per_pass = shared
    xs, ys = tile
    return _evaluate_grid(model, point, xs, ys, batches, loss, reset, None, task, per_pass)
