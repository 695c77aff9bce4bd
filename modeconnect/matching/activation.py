"""Activation matching (Git Re-Basin, Ainsworth et al. 2023, §3.1; Li et al. 2015).

Run A and B on the same data, observe every group's units where a layer reads
them (the spec's activation *sites*), and choose for each group the permutation

    P_g = argmax_P  Σ_i  C_g[i, P(i)],    C_g[i, j] = Σ_sites corr(a_i, b_j)

with one linear assignment per group. The statistic is the Pearson correlation
by default, or the uncentred cross-moment ``E[a_i b_j]`` that Git Re-Basin uses
(``statistic="moment"``). Correlation is the default because independently
trained networks give the same feature different scales and offsets (BatchNorm,
biases, ReLU thresholds); the uncentred moment rewards large-magnitude units
rather than matching ones, so a few loud units decide the assignment. REPAIR
(Jordan et al. 2023) and ZipIt! (Stoica et al. 2024) match on correlation for
the same reason. Dead units (zero variance) correlate 0 with everything.

Statistics are streamed over the batches in float64 with Chan et al.'s
pairwise update of means and co-moments, never holding more than one batch of
activations. B's activations are taken with B's own weights; the permutation is
applied once, at the end.

Structured sites. A site whose axis is a product (channels × spatial positions
after ``Flatten``) counts its fixed factors as extra samples of each unit. When a
site carries several groups (heads × head dim, or two groups in a product), the
units of one group are compared at equal coordinates of the others *after* the
others' current permutation is applied to B, so groups are solved by
coordinate descent (:mod:`modeconnect.matching.descent`), exactly as in weight
matching (a sweep without gain ends it; sites with one group converge in one
sweep). Per-block inner groups (``batch_over``: attention head dims, GroupNorm
channels) are solved jointly with their outer group: for every pair of blocks
the best inner assignment is found, and its score feeds the outer assignment.
When a site shows an inner group on one axis and its outer group on another
(queries ``(batch, head, token, head dim)``), the outer axis is found by
permuting B's blocks once and seeing which axis moves.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModeconnectError
from ..spec import (
    ActivationSite,
    Fixed,
    GraphRunner,
    Layout,
    Leaf,
    PermutationSpec,
    Product,
    apply_permutation,
    axis_index,
    coordinates,
    exposure,
    leaves,
)
from .assignment import DEFAULT_SOLVER, WarmStart
from .descent import DEFAULT_RTOL, SimilaritySource, children_of, coordinate_descent, descend
from .descent import Solve as Solve  # re-exported: the engine lived here before descent.py
from .options import check_descent, strict
from .result import Alignment

StateDict = Mapping[str, Tensor]
STATISTICS = ("correlation", "moment")

# A unit whose standard deviation is below this fraction of its mean is constant:
# activations are float32 (resolution ~6e-8), so smaller fluctuations are rounding.
_DEAD_RELATIVE = 1e-6


# ----------------------------------------------------------------------------
# Where units are observed
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One place units are observed: node ``node``'s output with ``dims`` merged into a unit axis.

    The merged axis (``dims`` in order, row-major) has factors of sizes
    ``factors``; those with ``keep`` false are fixed (spatial positions) and count
    as samples. ``layout`` is the layout of the remaining unit axis, of size ``m``.
    """

    node: str
    dims: tuple[int, ...]
    factors: tuple[int, ...]
    keep: tuple[bool, ...]
    layout: Layout

    @property
    def m(self) -> int:
        return self.layout.size

    def units(self, x: Tensor) -> Tensor:
        """``x`` (the node's output) as a ``(samples, m)`` float64 matrix."""
        k = len(self.dims)
        x = x.movedim(self.dims, tuple(range(x.dim() - k, x.dim())))
        x = x.reshape(*x.shape[: x.dim() - k], *self.factors)
        lead = x.dim() - len(self.factors)
        fixed = [lead + i for i, keep in enumerate(self.keep) if not keep]
        kept = [lead + i for i, keep in enumerate(self.keep) if keep]
        return x.permute(*range(lead), *fixed, *kept).reshape(-1, self.m).double()


def _factors(layout: Layout) -> list[Layout]:
    """The factors of a (possibly nested) row-major product; any other layout is one factor."""
    if isinstance(layout, Product):
        return [f for factor in layout.factors for f in _factors(factor)]
    return [layout]


def _observation(node: str, dims: tuple[int, ...], layout: Layout) -> Observation:
    factors = _factors(layout)
    keep = tuple(not isinstance(f, Fixed) for f in factors)
    free = [f for f, k in zip(factors, keep, strict=True) if k]
    unit = free[0] if len(free) == 1 else Product(tuple(free))
    return Observation(node, dims, tuple(f.size for f in factors), keep, unit)


def _groups_in(layout: Layout) -> list[str]:
    return list(dict.fromkeys(leaf.group for leaf in leaves(layout)))


def _unique_sites(spec: PermutationSpec) -> list[ActivationSite]:
    return list(dict.fromkeys(s for sites in spec.sites.values() for s in sites))


def _needs_outer(spec: PermutationSpec, site: ActivationSite) -> str | None:
    """The outer group of an inner group seen at ``site`` without it (heads on another axis)."""
    present = set(_groups_in(site.layout))
    outers = {
        spec.groups[g].batch_over
        for g in present
        if g in spec.groups and spec.groups[g].batch_over not in (None, *present)
    }
    return next(iter(outers)) if len(outers) == 1 else None


def _batch_inputs(batch: Any) -> tuple[Any, ...]:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _locate_outer(
    runner: GraphRunner,
    spec: PermutationSpec,
    b: StateDict,
    inputs: tuple[Any, ...],
    sites: Sequence[tuple[ActivationSite, str]],
) -> dict[ActivationSite, int]:
    """For each site, the axis of its node that carries ``outer``, found by moving B's blocks.

    Permuting B's outer groups by a cyclic shift permutes exactly the axes that
    carry them (the function, and every other axis, is unchanged); the axis of
    the site's node that moved is the one. One extra forward pass for all sites.
    """
    outers = list(dict.fromkeys(o for _, o in sites))
    shifts = {o: (torch.arange(spec.groups[o].size) + 1) % spec.groups[o].size for o in outers}
    nodes = [s.node for s, _ in sites]
    base = runner.run(b, inputs, nodes)
    moved = runner.run(apply_permutation(b, spec, shifts), inputs, nodes)
    found: dict[ActivationSite, int] = {}
    for site, outer in sites:
        axis = _moved_axis(base[site.node], moved[site.node], site.dim, shifts[outer])
        if axis is not None:
            found[site] = axis
    return found


def _moved_axis(before: Tensor, after: Tensor, skip: int, shift: Tensor) -> int | None:
    scale = float(before.abs().max()) if before.numel() else 0.0
    for axis in range(before.dim()):
        if axis == skip or before.shape[axis] != shift.numel():
            continue
        if torch.allclose(before.index_select(axis, shift), after, rtol=1e-5, atol=1e-6 * scale):
            return axis
    return None


def observations(
    spec: PermutationSpec, outer_axes: Mapping[ActivationSite, int] | None = None
) -> tuple[Observation, ...]:
    """The spec's activation sites as observations, one per distinct node and axes.

    ``outer_axes`` gives, for sites that show an inner group without its outer
    group, the node axis carrying the outer group; such a site without an entry
    is left out (its blocks could not be told apart).
    """
    outer_axes = outer_axes or {}
    seen: dict[tuple[str, tuple[int, ...]], Observation] = {}
    for site in _unique_sites(spec):
        outer = _needs_outer(spec, site)
        if outer is None:
            obs = _observation(site.node, (site.dim,), site.layout)
        elif site in outer_axes:
            layout = Product((Leaf(outer, spec.groups[outer].size), site.layout))
            obs = _observation(site.node, (outer_axes[site], site.dim), layout)
        else:
            continue
        seen.setdefault((obs.node, obs.dims), obs)
    return tuple(seen.values())


# ----------------------------------------------------------------------------
# Streaming statistics
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossMoments:
    """Running statistics of one observation's units in A and in B, in float64.

    ``count`` samples; means ``mean_a``, ``mean_b`` ``(m,)``; sums of squared
    deviations ``m2_a``, ``m2_b`` ``(m,)``; co-moment
    ``co[i, j] = Σ_s (a_si - mean_a_i)(b_sj - mean_b_j)`` ``(m, m)``.
    """

    count: int
    mean_a: Tensor
    mean_b: Tensor
    m2_a: Tensor
    m2_b: Tensor
    co: Tensor

    def live_a(self) -> Tensor:
        return _live(self.mean_a, self.m2_a, self.count)

    def live_b(self) -> Tensor:
        return _live(self.mean_b, self.m2_b, self.count)

    def correlation(self) -> Tensor:
        """``corr(a_i, b_j)`` ``(m, m)``; 0 wherever either unit is dead (constant)."""
        sa = self.m2_a.clamp_min(0).sqrt()
        sb = self.m2_b.clamp_min(0).sqrt()
        live = self.live_a()[:, None] & self.live_b()[None, :]
        denom = torch.where(live, sa[:, None] * sb[None, :], torch.ones(()))
        return torch.where(live, self.co / denom, torch.zeros(())).clamp(-1.0, 1.0)

    def moment(self) -> Tensor:
        """The uncentred cross-moment ``E[a_i b_j]`` ``(m, m)`` (Git Re-Basin's statistic)."""
        return self.co / max(self.count, 1) + self.mean_a[:, None] * self.mean_b[None, :]

    def similarity(self, statistic: str) -> Tensor:
        return self.correlation() if statistic == "correlation" else self.moment()


def _live(mean: Tensor, m2: Tensor, count: int) -> Tensor:
    std = (m2.clamp_min(0) / max(count, 1)).sqrt()
    floor = torch.maximum(_DEAD_RELATIVE * mean.abs(), 1e-12 * std.max().clamp_min(1e-300))
    return std > floor


class _Accumulator:
    """Chan et al.'s pairwise update: merge each batch's centred sums into the running ones."""

    def __init__(self, m: int) -> None:
        z = torch.zeros(m, dtype=torch.float64)
        self.count = 0
        self.mean_a, self.mean_b, self.m2_a, self.m2_b = z.clone(), z.clone(), z.clone(), z.clone()
        self.co = torch.zeros(m, m, dtype=torch.float64)

    def update(self, xa: Tensor, xb: Tensor) -> None:
        k = xa.shape[0]
        if k == 0:
            return
        ma, mb = xa.mean(0), xb.mean(0)
        da, db = xa - ma, xb - mb
        total = self.count + k
        dmean_a, dmean_b = ma - self.mean_a, mb - self.mean_b
        w = self.count * k / total
        self.co += da.T @ db + w * dmean_a[:, None] * dmean_b[None, :]
        self.m2_a += (da * da).sum(0) + w * dmean_a**2
        self.m2_b += (db * db).sum(0) + w * dmean_b**2
        self.mean_a += dmean_a * (k / total)
        self.mean_b += dmean_b * (k / total)
        self.count = total

    def freeze(self) -> CrossMoments:
        return CrossMoments(self.count, self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.co)


@dataclass(frozen=True)
class ActivationStatistics:
    """Cross statistics of A's and B's units at every observation, and what was seen.

    ``unobserved`` names groups that no observation shows (they stay unpermuted).
    """

    observations: tuple[Observation, ...]
    moments: tuple[CrossMoments, ...]
    batches: int
    unobserved: tuple[str, ...]


def activation_statistics(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    model: nn.Module | None,
    data: Iterable[Any] | None,
    max_batches: int | None = None,
) -> ActivationStatistics:
    """Stream A's and B's activations at the spec's sites over ``data`` (at most ``max_batches``).

    ``data`` yields ``(x, y)`` batches (``y`` unused); both models run in eval
    mode through the exported graph, each with its own weights.
    """
    model, data = _check_data(model, data, max_batches)
    runner = GraphRunner(model)
    batches = iter(data if max_batches is None else islice(data, max_batches))
    first = next(batches, None)
    if first is None:
        raise ModeconnectError("activation statistics need data, but the data yielded no batch")
    pending = [(s, o) for s in _unique_sites(spec) if (o := _needs_outer(spec, s)) is not None]
    outer_axes = _locate_outer(runner, spec, b, _batch_inputs(first), pending) if pending else {}
    lost = sorted({s.node for s, _ in pending if s not in outer_axes})
    if lost:
        warnings.warn(
            f"activation sites {', '.join(lost)} show per-block units (head dims, group "
            "channels) on an axis whose blocks could not be located; they are not used",
            stacklevel=2,
        )
    obs = observations(spec, outer_axes)
    accs = [_Accumulator(o.m) for o in obs]
    nodes = list(dict.fromkeys(o.node for o in obs))
    count = _accumulate(runner, a, b, first, obs, accs, nodes)
    for batch in batches:
        count += _accumulate(runner, a, b, batch, obs, accs, nodes)
    seen = {g for o in obs for g in _groups_in(o.layout)}
    unobserved = tuple(g for g in spec.groups if g not in seen)
    return ActivationStatistics(obs, tuple(acc.freeze() for acc in accs), count, unobserved)


def _accumulate(
    runner: GraphRunner,
    a: StateDict,
    b: StateDict,
    batch: Any,
    obs: Sequence[Observation],
    accs: Sequence[_Accumulator],
    nodes: list[str],
) -> int:
    inputs = _batch_inputs(batch)
    out_a, out_b = runner.run(a, inputs, nodes), runner.run(b, inputs, nodes)
    missing = sorted(set(nodes) - set(out_a))
    if missing:
        raise ModeconnectError(
            f"graph nodes {missing} of the spec's activation sites do not occur when the model "
            f"runs on inputs of shape {[tuple(getattr(x, 'shape', ())) for x in inputs]}; "
            "derive the spec with inputs shaped like the data"
        )
    for o, acc in zip(obs, accs, strict=True):
        acc.update(o.units(out_a[o.node]), o.units(out_b[o.node]))
    return 1


def _check_data(
    model: nn.Module | None, data: Iterable[Any] | None, max_batches: int | None
) -> tuple[nn.Module, Iterable[Any]]:
    if model is None or data is None:
        raise ModeconnectError(
            "activation statistics need the model and data: pass --train (or --data) "
            "on the command line, or model= and data= to the library"
        )
    if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
        raise ModeconnectError(f"max_batches must be a positive integer, got {max_batches!r}")
    return model, data


# ----------------------------------------------------------------------------
# Similarity from activation statistics
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    mat: Tensor  # (m, m) A-units x B-units
    layout: Layout
    index: Tensor  # exposure: (n, r) or (n_outer, n, r)


def _gather(t: _Term, perm: Mapping[str, Tensor]) -> Tensor:
    """``Σ_c M[pos(u, c), idx[pos(v, c)]]`` over units ``u, v`` (flattened with their block)."""
    index = t.index.reshape(-1, t.index.shape[-1])  # (units, r)
    bpos = axis_index(t.layout, perm)[index]
    out = torch.zeros(len(index), len(index), dtype=torch.float64)
    for c in range(index.shape[1]):  # r is 1 unless other groups share the axis
        out += t.mat.index_select(0, index[:, c]).index_select(1, bpos[:, c])
    return out


class MatrixSource:
    """Similarity from one ``(m, m)`` A-unit × B-unit matrix per observation.

    With ``idx`` the gather index of the other groups' permutation on B's axis,

        S_g[u, v] = Σ_obs Σ_c  M[pos(u, c), idx[pos(v, c)]]

    where ``pos(u, c)`` is the position of ``g``'s unit ``u`` at coordinate ``c``
    of the other factors (:func:`~modeconnect.spec.exposure`).
    """

    def __init__(self, spec: PermutationSpec, mats: Sequence[tuple[Layout, Tensor]]) -> None:
        self.spec, self.mats = spec, list(mats)
        kids = children_of(spec)
        self.direct: dict[str, list[_Term]] = {}
        self.joint: dict[tuple[str, str], list[_Term]] = {}
        for layout, mat in self.mats:
            present = _groups_in(layout)
            for g in present:
                outer = spec.groups[g].batch_over
                if outer is not None and outer in present:
                    self.joint.setdefault((outer, g), []).append(
                        _Term(mat, layout, exposure(layout, g, outer))
                    )
                elif outer is None and not set(kids.get(g, ())) & set(present):
                    self.direct.setdefault(g, []).append(_Term(mat, layout, exposure(layout, g)))

    def depends_on(self, group: str) -> frozenset[str]:
        """The groups whose permutations the similarity of ``group`` reads."""
        terms = [*self.direct.get(group, ())]
        terms += [t for pair, ts in self.joint.items() if group in pair for t in ts]
        return frozenset(g for t in terms for g in _groups_in(t.layout)) - {group}

    def similarity(self, group: str, perm: Mapping[str, Tensor]) -> Tensor:
        n = self.spec.groups[group].size
        s = torch.zeros(n, n, dtype=torch.float64)
        for t in self.direct.get(group, ()):
            s += _gather(t, perm)
        return s

    def cross(self, outer: str, inner: str, perm: Mapping[str, Tensor]) -> Tensor | None:
        terms = self.joint.get((outer, inner))
        if not terms:
            return None
        n_outer, n, _ = terms[0].index.shape
        total = torch.zeros(n_outer * n, n_outer * n, dtype=torch.float64)
        for t in terms:
            total += _gather(t, perm)
        # rows (a, u), columns (b, v) -> (a, b, u, v)
        return total.reshape(n_outer, n, n_outer, n).permute(0, 2, 1, 3)

    def objective(self, perm: Mapping[str, Tensor]) -> float:
        """``Σ_obs Σ_p M[p, idx(p)]`` over the positions that carry a group."""
        total = 0.0
        for layout, mat in self.mats:
            idx = axis_index(layout, perm)
            unit = torch.zeros(layout.size, dtype=torch.bool)
            for g in _groups_in(layout):
                unit |= coordinates(layout, g) >= 0
            pos = torch.arange(layout.size)[unit]
            total += float(mat[pos, idx[pos]].sum())
        return total


def statistics_source(
    stats: ActivationStatistics, spec: PermutationSpec, statistic: str
) -> MatrixSource:
    """A :class:`MatrixSource` of the chosen statistic (``correlation`` or ``moment``)."""
    _check_statistic(statistic)
    return MatrixSource(
        spec,
        [
            (o.layout, m.similarity(statistic))
            for o, m in zip(stats.observations, stats.moments, strict=True)
        ],
    )


def _check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise ModeconnectError(
            f"unknown activation statistic {statistic!r}; valid statistics: {', '.join(STATISTICS)}"
        )


def warn_unobserved(unobserved: Sequence[str], method: str) -> None:
    """Say which groups no activation site shows (they stay unpermuted)."""
    if unobserved:
        warnings.warn(
            f"{method}: groups {', '.join(unobserved)} are not observed at any activation site "
            "and stay unpermuted; use --method weight for this model",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------


@strict("activation")
def match_activations(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    model: nn.Module | None = None,
    data: Iterable[Any] | None = None,
    seed: int = 0,
    statistic: str = "correlation",
    max_batches: int | None = None,
    solver: str = DEFAULT_SOLVER,
    max_iter: int = 100,
    tol: float = 1e-12,
    rtol: float = DEFAULT_RTOL,
) -> Alignment:
    """Permute B's units to best match A's activations on ``data`` (Git Re-Basin, §3.1).

    ``P = argmax_P Σ_g Σ_i C_g[i, P_g(i)]`` with ``C_g`` the correlation (default)
    or uncentred cross-moment of A's and B's units, summed over the group's
    activation sites; statistics from at most ``max_batches`` batches.
    ``objective`` is that sum at the solution (for correlation: the summed
    correlation of matched units). ``seed`` orders the groups in the descent.
    """
    start = time.perf_counter()
    _check_statistic(statistic)
    check_descent("activation", solver=solver, tol=tol, rtol=rtol, max_iter=max_iter)
    stats = activation_statistics(spec, a, b, model=model, data=data, max_batches=max_batches)
    warn_unobserved(stats.unobserved, "activation matching")
    source = statistics_source(stats, spec, statistic)
    run = descend(
        spec, source, WarmStart(solver), seed=seed, max_iter=max_iter, tol=tol, rtol=rtol,
        inner_solver=solver,
    )  # fmt: skip
    return Alignment(
        method="activation",
        perm=run.perm,
        objective=source.objective(run.perm),
        iterations=run.sweeps,
        seconds=time.perf_counter() - start,
        seed=seed,
        params={
            "statistic": statistic,
            "max_batches": max_batches,
            "batches": stats.batches,
            "solver": solver,
            "unobserved": list(stats.unobserved),
        },
        profile=run.profile(),
    )


__all__ = [
    "STATISTICS",
    "ActivationStatistics",
    "CrossMoments",
    "MatrixSource",
    "Observation",
    "SimilaritySource",  # re-exported from .descent
    "activation_statistics",
    "children_of",  # re-exported from .descent
    "coordinate_descent",  # re-exported from .descent
    "match_activations",
    "observations",
    "statistics_source",
]
