"""Layer-wise barriers (Adilova et al. 2024, "Layer-wise linear mode connectivity", ICLR).

For a group ``G`` of tensors (by default one parametrised module), three paths
each move only some tensors along ``θ(α) = (1-α)·θ_A + α·θ_B``:

* ``from_a``: ``G`` interpolated, every other tensor from A;
* ``from_b``: ``G`` interpolated, every other tensor from B;
* ``cumulative``: groups ``1..k`` interpolated (``k`` = this group's position),
  the rest from A.

The barrier of a path is measured against the **full models' endpoint values**
``V(A)``, ``V(B)``, not the path's own endpoints (a path's end ``α = 1`` is a
hybrid model, not B):

* ``lerp``: ``max_α [V(path(α)) − ((1−α)·V(A) + α·V(B))]``,
* ``mean``: ``max_α V(path(α)) − ½(V(A) + V(B))``,

for V = loss and V = error, on one split (the test data). A value near 0 says
that moving this layer alone costs nothing; it can be negative when the path
stays below the line between the full models.

Reuse: every state on these paths is "some tensors from B, some interpolated at
α, the rest from A"; results are cached under that description, so the points
that coincide (``α = 0`` of ``from_a`` is A itself, ``α = 1`` of ``from_b`` is B,
``cumulative`` for ``k = 1`` is ``from_a`` of the first group, the last
``cumulative`` and a single all-covering group are the full curve) are evaluated
once, and the full curve passed in by the caller is not evaluated again.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.bn import BatchNormReset, batchnorm_layers, reset_batchnorm
from modeconnect.distributed import Cluster, on_cluster
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import (
    BARRIER_DEFINITIONS,
    Barrier,
    Batch,
    Curve,
    CurvePoint,
    ExampleCurve,
    ExampleResults,
    LossChoice,
    Metrics,
    Scoring,
    alpha_grid,
    barrier,
    barrier_definition,
    check_pair,
    corrected_path,
    example_curves,
    get_scoring,
    is_interpolable,
    linear_path,
    midpoint,
)
from modeconnect.forward import eval_mode, over_batches
from modeconnect.progress import ProgressFn

__all__ = [
    "VARIANTS",
    "LayerBarrier",
    "LayerGroup",
    "LayerPath",
    "LayerwiseResult",
    "layer_groups",
    "layerwise_barriers",
]

StateDict = Mapping[str, Tensor]
CorrectionFactory = Callable[
    [StateDict, StateDict], Callable[[StateDict, float], dict[str, Tensor]]
]
"""``factory(x0, x1) -> correct(state, α)``: the BatchNorm/REPAIR correction of one path."""

VARIANTS = ("from_a", "from_b", "cumulative")


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class LayerGroup:
    """A named set of state-dict keys that move together."""

    name: str
    keys: tuple[str, ...]


def layer_groups(state_dict: StateDict, prefixes: Sequence[str] | None = None) -> list[LayerGroup]:
    """Groups of tensors for layer-wise barriers, in state-dict order.

    By default one group per module: keys split at their last dot (``"3.weight"``
    and ``"3.bias"`` form group ``"3"``; a BatchNorm's running statistics join its
    weight). With ``prefixes``, one group per entry; an entry is a module prefix
    (``"layer1"`` takes ``"layer1.0.conv1.weight"``, ...) or several joined by
    ``+`` (``"fc1+fc2"``). Only floating tensors move; groups without one are
    dropped (BatchNorm's ``num_batches_tracked`` always comes from A).
    """
    movable = [k for k, v in state_dict.items() if is_interpolable(v)]
    if prefixes is None:
        by_module: dict[str, list[str]] = {}
        for key in movable:
            by_module.setdefault(key.rpartition(".")[0] or key, []).append(key)
        return [LayerGroup(name, tuple(keys)) for name, keys in by_module.items()]
    groups = [_prefix_group(entry, movable) for entry in prefixes]
    _check_disjoint(groups)
    return groups


def _prefix_group(entry: str, keys: Sequence[str]) -> LayerGroup:
    parts = [p.strip() for p in entry.split("+") if p.strip()]
    if not parts:
        raise ModeconnectError(
            f"layer groups: group {entry!r} is empty; give module prefixes like 'fc1+fc2'"
        )
    chosen: list[str] = []
    for prefix in parts:
        hits = [k for k in keys if k == prefix or k.startswith(f"{prefix}.")]
        if not hits:
            modules = sorted({k.rpartition(".")[0] for k in keys if "." in k})
            shown = ", ".join(modules[:8]) + (", ..." if len(modules) > 8 else "")
            raise ModeconnectError(
                f"layer groups: prefix {prefix!r} matches no floating tensor of the state dict; "
                f"use a module prefix, e.g. {shown}"
            )
        chosen += [k for k in hits if k not in chosen]
    return LayerGroup("+".join(parts), tuple(k for k in keys if k in chosen))


def _check_disjoint(groups: Sequence[LayerGroup]) -> None:
    owner: dict[str, str] = {}
    for g in groups:
        for key in g.keys:
            if key in owner:
                raise ModeconnectError(
                    f"layer groups: tensor {key!r} is in two groups, {owner[key]!r} and "
                    f"{g.name!r}; give disjoint prefixes"
                )
            owner[key] = g.name


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LayerPath:
    """One layer-wise path: its curve and its barriers against the full endpoints."""

    curve: Curve
    barriers: Mapping[str, Barrier]
    definition: str

    @property
    def barrier(self) -> Barrier:
        """The barrier under the study's definition."""
        return self.barriers[self.definition]

    @property
    def midpoint(self) -> CurvePoint:
        return midpoint(self.curve)

    def to_dict(self) -> dict[str, Any]:
        return {
            "barrier": self.barrier.to_dict(),
            **{name: b.to_dict() for name, b in self.barriers.items()},
            "midpoint": self.midpoint.to_dict(),
            "curve": self.curve.to_dict(),
        }


@dataclass(frozen=True)
class LayerBarrier:
    """The three layer-wise paths of one group (position ``index``)."""

    group: LayerGroup
    index: int
    from_a: LayerPath
    from_b: LayerPath
    cumulative: LayerPath

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group.name,
            "index": self.index,
            "keys": list(self.group.keys),
            **{v: getattr(self, v).to_dict() for v in VARIANTS},
        }


@dataclass(frozen=True)
class LayerwiseResult:
    """Layer-wise barriers of every group, measured against ``baseline = (V(A), V(B))``.

    ``evaluated`` counts the states actually evaluated; ``points`` the points
    reported (``3 × groups × alphas``): the difference is what reuse saved.
    """

    layers: tuple[LayerBarrier, ...]
    definition: str
    baseline: tuple[Metrics, Metrics]
    evaluated: int
    points: int

    def to_dict(self) -> list[dict[str, Any]]:
        """One record per group: the JSON list under ``layerwise``."""
        return [layer.to_dict() for layer in self.layers]


# --------------------------------------------------------------------------- computation


_Key = tuple[frozenset[str], frozenset[str], float]


def layerwise_barriers(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    batches: Iterable[Batch],
    *,
    groups: Sequence[str] | Sequence[LayerGroup] | None = None,
    steps: int = 25,
    alphas: Sequence[float] | None = None,
    definition: str = "lerp",
    loss: LossChoice = None,
    correction: CorrectionFactory | None = None,
    full: ExampleCurve | None = None,
    alpha_batch: int | None = 1,
    progress: ProgressFn | None = None,
    cache_prefix: bool = True,
    cluster: Cluster | None = None,
) -> LayerwiseResult:
    """Layer-wise barriers of ``a`` → ``b`` on ``batches`` (see the module docstring).

    ``groups``: prefixes (see :func:`layer_groups`) or :class:`LayerGroup`\\ s;
    default one per module. ``alphas`` defaults to ``steps`` points; it must hold
    0 and 1, and 0.5 is added. ``correction(x0, x1)`` returns the function applied to each
    point of the path from ``x0`` to ``x1`` (BatchNorm reset, REPAIR; see
    :func:`modeconnect.bn.make_correction`). ``full`` is the full curve on the
    same grid and data, if already computed (e.g. by
    :func:`modeconnect.barrier_studies.barrier_study`), so it is not evaluated again.
    ``cache_prefix``: on a sequential model, the children before the first one a path
    moves run once per path, not once per point (:func:`split_prefix`); the results
    equal the whole model's to float tolerance. On a ``cluster`` the points of each
    path run as Ray tasks, with the local run's results.

    Examples
    --------
    One group per layer of an MLP; three paths of five points per group, of which
    the states the paths share are evaluated once:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> a, b = model.state_dict(), mlp(4, [8, 8], 3).state_dict()
    >>> data = [(torch.randn(64, 4), torch.randint(0, 3, (64,)))]
    >>> result = mc.layerwise_barriers(model, a, b, data, steps=5)
    >>> [(layer.group.name, layer.group.keys) for layer in result.layers]
    [('1', ('1.weight', '1.bias')), ('3', ('3.weight', '3.bias')), ('5', ('5.weight', '5.bias'))]
    >>> result.points, result.evaluated < result.points
    (45, True)

    Moving any layer of a model towards itself costs nothing:

    >>> same = mc.layerwise_barriers(model, a, a, data, steps=5)
    >>> [layer.from_a.barrier.loss for layer in same.layers]
    [0.0, 0.0, 0.0]
    """
    check_pair(a, b)
    barrier_definition(definition)
    grid = alpha_grid(steps, alphas)
    if 0.0 not in grid or 1.0 not in grid:
        raise ModeconnectError(
            f"layerwise_barriers: alphas {list(grid)} lack 0 or 1, but layer-wise barriers are "
            "measured against the full models A and B; include both"
        )
    if 0.5 not in grid:
        grid = tuple(sorted({*grid, 0.5}))
    chosen = _resolve_groups(a, groups)
    cache = _Cache(
        model, a, b, batches, grid, get_scoring(loss, model), correction, alpha_batch,
        cache_prefix, cluster,
    )  # fmt: skip
    universe = frozenset(k for k, v in a.items() if is_interpolable(v))
    if full is not None:
        cache.seed(frozenset(), universe, full)
    with on_cluster(cluster):
        return _layerwise(cache, chosen, universe, grid, definition, progress)


def _layerwise(
    cache: _Cache,
    chosen: Sequence[LayerGroup],
    universe: frozenset[str],
    grid: tuple[float, ...],
    definition: str,
    progress: ProgressFn | None,
) -> LayerwiseResult:
    total = 3 * len(chosen)
    whole = cache.curve(frozenset(), universe)
    baseline = (whole.results[_at(grid, 0.0)].metrics(), whole.results[_at(grid, 1.0)].metrics())
    layers: list[LayerBarrier] = []
    moved: frozenset[str] = frozenset()
    for i, group in enumerate(chosen):
        keys = frozenset(group.keys)
        moved |= keys
        paths = {
            "from_a": cache.curve(frozenset(), keys),
            "from_b": cache.curve(universe - keys, keys),
            "cumulative": cache.curve(frozenset(), moved),
        }
        layers.append(
            LayerBarrier(
                group, i, **{v: _layer_path(c, baseline, definition) for v, c in paths.items()}
            )
        )
        if progress is not None:
            progress("layer-wise", 3 * (i + 1), total)
    return LayerwiseResult(
        tuple(layers), definition, baseline, cache.evaluated, 3 * len(chosen) * len(grid)
    )


def _resolve_groups(
    a: StateDict, groups: Sequence[str] | Sequence[LayerGroup] | None
) -> list[LayerGroup]:
    if groups is not None and all(isinstance(g, LayerGroup) for g in groups):
        chosen = [g for g in groups if isinstance(g, LayerGroup)]
        _check_disjoint(chosen)
        movable = {k for k, v in a.items() if is_interpolable(v)}
        for g in chosen:
            unknown = sorted(set(g.keys) - movable)
            if unknown:
                raise ModeconnectError(
                    f"layer groups: group {g.name!r} names {unknown[:5]}, which are not floating "
                    "tensors of the state dict; use keys of the checkpoint"
                )
    else:
        chosen = layer_groups(a, [str(g) for g in groups] if groups is not None else None)
    if not chosen:
        raise ModeconnectError(
            "layer groups: there are none, the state dict has no floating tensors to move; "
            "pass a model with weights"
        )
    return chosen


def _at(grid: Sequence[float], alpha: float) -> int:
    return list(grid).index(alpha)


def _layer_path(
    curve: ExampleCurve, baseline: tuple[Metrics, Metrics], definition: str
) -> LayerPath:
    plain = curve.curve()
    barriers = {d: barrier(plain, d, baseline=baseline) for d in BARRIER_DEFINITIONS}
    return LayerPath(plain, barriers, definition)


class _Cache:
    """Evaluated states, keyed by (tensors from B, tensors interpolated, α).

    A state's key is canonical: at ``α = 0`` the interpolated tensors are A's, at
    ``α = 1`` B's, so paths that share a model share its result.
    """

    def __init__(
        self,
        model: nn.Module,
        a: StateDict,
        b: StateDict,
        batches: Iterable[Batch],
        grid: tuple[float, ...],
        loss: Scoring,
        correction: CorrectionFactory | None,
        alpha_batch: int | None,
        cache_prefix: bool = True,
        cluster: Cluster | None = None,
    ) -> None:
        self.model, self.a, self.b, self.batches = model, a, b, batches
        self.grid, self.loss, self.correction = grid, loss, correction
        self.alpha_batch, self.cache_prefix = alpha_batch, cache_prefix
        self.cluster = cluster
        self.results: dict[_Key, ExampleResults] = {}
        self.evaluated = 0
        self.cuts: dict[frozenset[str], Prefix] = {}  # one suffix module per cut

    @staticmethod
    def key(from_b: frozenset[str], moving: frozenset[str], alpha: float) -> _Key:
        if not moving or alpha == 0.0:
            return (from_b, frozenset(), 0.0)
        if alpha == 1.0:
            return (from_b | moving, frozenset(), 0.0)
        return (from_b, moving, alpha)

    def seed(self, from_b: frozenset[str], moving: frozenset[str], curve: ExampleCurve) -> None:
        if curve.alphas != self.grid:
            raise ModeconnectError(
                f"layerwise_barriers: the full curve's alphas {list(curve.alphas)} differ from "
                f"the layer-wise grid {list(self.grid)}; compute both on one grid"
            )
        for alpha, result in zip(curve.alphas, curve.results, strict=True):
            self.results.setdefault(self.key(from_b, moving, alpha), result)

    def curve(self, from_b: frozenset[str], moving: frozenset[str]) -> ExampleCurve:
        keys = [self.key(from_b, moving, t) for t in self.grid]
        wanted: dict[_Key, float] = {}
        for t, k in zip(self.grid, keys, strict=True):
            if k not in self.results:
                wanted.setdefault(k, t)
        missing = list(wanted.values())
        if missing:
            x0 = {**self.a, **{k: self.b[k] for k in from_b}}
            x1 = {**x0, **{k: self.b[k] for k in moving}}
            found = self._evaluate(x0, x1, moving, missing)
            for alpha, result in zip(found.alphas, found.results, strict=True):
                self.results.setdefault(self.key(from_b, moving, alpha), result)
            self.evaluated += len(missing)
        return ExampleCurve(self.grid, tuple(self.results[k] for k in keys))

    def _cut(self, moved: frozenset[str], correct: Any) -> Prefix | None:
        """:func:`split_prefix`, the same :class:`Prefix` for every path cut at one child:
        its suffix module keeps what is decided once per model (the BatchNorm fold's trace
        and check, :mod:`modeconnect.evaluation.folding`)."""
        cut = split_prefix(self.model, moved, correct)
        return cut if cut is None else self.cuts.setdefault(cut.names, cut)

    def _evaluate(
        self, x0: StateDict, x1: StateDict, moved: frozenset[str], alphas: Sequence[float]
    ) -> ExampleCurve:
        """The path ``x0 -> x1`` at ``alphas``: from the cached output of the unchanged prefix
        (:func:`split_prefix`) where the model allows, else whole. ``moved`` are the keys
        that differ along the path (not those taken from B at both ends: a ``from_b``
        path's prefix is B's, run once like A's)."""
        correct = self.correction(x0, x1) if self.correction is not None else None
        cut = self._cut(moved, correct) if self.cache_prefix else None
        if cut is not None and not cut.fits(x0, self.batches, correct):
            cut = None
        model: nn.Module = self.model
        batches: Iterable[Batch] = self.batches
        point: Any = linear_path(x0, x1)
        if cut is not None:
            model = cut.suffix
            batches, point = cut.inputs(x0, x1, self.batches, correct)
        elif correct is not None:
            point = corrected_path(point, correct)
        found = example_curves(
            model, point, alphas, {"data": batches}, loss=self.loss, alpha_batch=self.alpha_batch,
            cluster=self.cluster,
        )  # fmt: skip
        return found["data"]


@dataclass(frozen=True, eq=False)
class Prefix:
    """A sequential model cut before its first child that moves on a layer-wise path.

    Every point of such a path runs the same ``prefix`` (children before the cut, with
    ``x0``'s tensors) on the same data: its outputs are computed once, and the points
    run only ``suffix`` on them. With a BatchNorm reset the prefix's statistics are
    reset once and its training-mode outputs on the training data are kept too, on
    which each point's suffix statistics are reset: the same numbers as the whole
    model's reset, without the prefix's share of the forward passes.
    """

    prefix: nn.Sequential
    suffix: nn.Sequential
    names: frozenset[str]

    def fits(self, x0: StateDict, batches: Iterable[Batch], correct: Any) -> bool:
        """Whether the cached outputs stay under :data:`PREFIX_BYTES` (estimated from the
        first batch; data of unknown length is not cached). A BatchNorm reset's training
        outputs count only the batches the reset reads (its ``max_batches``)."""
        train = correct.batches if isinstance(correct, BatchNormReset) else []
        if not isinstance(batches, Sized) or not isinstance(train, Sized):
            return False
        first = next(iter(batches), None)
        if first is None:
            return False
        head = {k: v for k, v in x0.items() if k.partition(".")[0] in self.names}
        with eval_mode(self.prefix), torch.no_grad():
            (out,) = over_batches(self.prefix, head, [first], lambda out, b: out)
        size = out.numel() * out.element_size() if isinstance(out, Tensor) else PREFIX_BYTES
        return size * cached_batches(batches, correct) <= PREFIX_BYTES

    def inputs(
        self, x0: StateDict, x1: StateDict, batches: Iterable[Batch], correct: Any
    ) -> tuple[list[Any], Any]:
        """The prefix's outputs on ``batches`` (as ``(h, y)``) and the suffix's path."""
        head = {k: v for k, v in x0.items() if k.partition(".")[0] in self.names}
        tail = [k for k in x0 if k.partition(".")[0] not in self.names]
        path: Any = linear_path({k: x0[k] for k in tail}, {k: x1[k] for k in tail})
        if isinstance(correct, BatchNormReset):
            kept = training_outputs(self.prefix, head, correct.batches, correct.max_batches)
            path = corrected_path(path, BatchNormReset(self.suffix, kept))
            head = reset_batchnorm(
                self.prefix, head, correct.batches, max_batches=correct.max_batches
            )
        with eval_mode(self.prefix), torch.no_grad():
            cached = over_batches(self.prefix, head, batches, lambda out, b: (out, b[1]))
        return cached, path


PREFIX_BYTES = 2**30
"""Cached prefix outputs (evaluation and training data together) stay under this size."""


def cached_batches(batches: Sized, correct: Any) -> int:
    """The batches whose prefix outputs a path caches: every evaluation batch, and the
    training batches a BatchNorm reset ``correct`` reads (at most its ``max_batches``).

    >>> data = [(torch.zeros(2, 1), torch.zeros(2))] * 5
    >>> reset = BatchNormReset(nn.Sequential(nn.BatchNorm1d(1)), data * 4, max_batches=3)
    >>> cached_batches(data, None), cached_batches(data, reset)
    (5, 8)
    """
    count = len(batches)
    if isinstance(correct, BatchNormReset) and isinstance(correct.batches, Sized):
        train = len(correct.batches)
        count += train if correct.max_batches is None else min(train, correct.max_batches)
    return count


def split_prefix(model: nn.Module, moved: Iterable[str], correct: Any) -> Prefix | None:
    """The cut of ``model`` before the first top-level child holding a ``moved`` key.

    ``None`` where nothing is gained or it would not be exact: a model that is not an
    ``nn.Sequential``, a path that moves the first child, or a correction other than
    a BatchNorm reset (REPAIR measures the whole model).
    """
    if type(model) is not nn.Sequential or (
        correct is not None and not isinstance(correct, BatchNormReset)
    ):
        return None
    names = [n for n, _ in model.named_children()]
    tops = {k.partition(".")[0] for k in moved}
    first = next((i for i, n in enumerate(names) if n in tops), 0)
    if first == 0:
        return None
    children = list(model.named_children())
    prefix = nn.Sequential(OrderedDict(children[:first]))
    suffix = nn.Sequential(OrderedDict(children[first:]))
    return Prefix(prefix, suffix, frozenset(names[:first]))


def training_outputs(
    model: nn.Module, state: StateDict, batches: Iterable[Batch], max_batches: int | None
) -> list[Any]:
    """``(model(x), y)`` for the first ``max_batches`` batches, BatchNorm layers normalising
    with batch statistics (training mode), as during a BatchNorm reset; ``state``'s
    running statistics are not written (the pass runs on copies)."""
    copies = {k: v.clone() if k.endswith(("running_mean", "running_var")) else v
              for k, v in state.items()}  # fmt: skip
    norms = [m for _, m in batchnorm_layers(model)]
    with eval_mode(model), torch.no_grad():
        for bn in norms:
            bn.train()
        return over_batches(
            model, copies, itertools.islice(batches, max_batches), lambda out, b: (out, b[1])
        )
