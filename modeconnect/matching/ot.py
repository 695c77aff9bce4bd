"""Optimal-transport alignment and fusion (OTFusion, Singh & Jaggi 2020), solved with POT.

For each group, the transport plan between A's and B's units with uniform marginals

    T_g = argmin_{T 1 = 1/n, Tᵀ 1 = 1/n}  ⟨T, M_g⟩ − reg · H(T)        (reg = 0: ``ot.emd``)

where the ground cost ``M_g[u, v]`` is the squared distance between A's unit
``u`` and B's unit ``v``: their weight rows (every tensor axis of the group,
incoming and outgoing, as in weight matching) with the other groups' current
permutations applied to B, or their standardised activations at the group's
sites (``cost="activations"``). Since ``‖a_u − b_v‖² = ‖a_u‖² + ‖b_v‖² − 2⟨a_u, b_v⟩``
and a plan with fixed marginals does not change when a constant per row or per
column is added to the cost (the constants move into the dual potentials, for
``emd`` and for Sinkhorn alike), the cost used is ``−S_g`` for the similarity
``S_g`` of weight or activation matching, shifted and scaled to ``[0, 1]`` so
that ``reg`` means the same at every scale and depth.

Groups are solved by coordinate descent (:mod:`modeconnect.matching.descent`: a
step per group with the others held at their current hardened permutations; a
sweep without gain ends it), not in one pass over layers as in the paper: the
spec's groups span residual streams and attention blocks, which have no single
layer order, and one sweep in graph order is the special case. Per-block inner
groups (attention head dims, GroupNorm channels) are matched exactly within each
pair of blocks, and OT decides which blocks pair up.

Two outputs, as in OTFusion:

1. :func:`match_ot`: each plan *hardened* to the permutation carrying the most
   mass (a linear assignment on the plan), so aligned B computes exactly B's
   function and the equivalence guard applies. With ``ot.emd`` and uniform
   marginals the plan is already a permutation matrix (a vertex of the Birkhoff
   polytope).
2. :func:`fuse_ot`: soft fusion. Every tensor of B is transported into A's basis
   along each permuted axis by the barycentric map ``n · T`` (rows sum to 1), then
   averaged with A; biases and norm parameters follow their axis. The previous
   layer's plan acts on a layer's incoming axis, its own on the outgoing one.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModeconnectError
from ..spec import PermutationSpec, apply_permutation, exposure, leaves
from .activation import activation_statistics, statistics_source, warn_unobserved
from .assignment import solve_assignment
from .descent import DEFAULT_RTOL, Descent, SimilaritySource, children_of, descend
from .options import check_descent, strict
from .result import Alignment
from .weight import WeightSource

StateDict = Mapping[str, Tensor]
OT_SOLVERS = ("emd", "sinkhorn")
COSTS = ("weights", "activations")
SINKHORN_ITERMAX = 5000
"""Default Sinkhorn iteration limit: at reg 0.01 the 512-unit layers of the digits MLP
need up to ~800 iterations (10x more at reg 0.003); POT's default of 1000 is tight."""
EMD_ITERMAX = 100_000
LOG_DOMAIN_BELOW = 1e-3
"""Below this ``reg`` (costs scaled to [0, 1]) Sinkhorn runs in the log domain.

Plain Sinkhorn in float64 is exact enough down to ~1e-3 (``exp(-1/reg)`` stays far
from underflow) and, at n = 512, ~70x faster per iteration than POT's
``sinkhorn_log``; below, its plan silently loses its mass (only a warning), so
``sinkhorn_log`` takes over. A plain run whose plan is broken is redone in the log
domain as well."""


def transport_plan(
    similarity: Tensor,
    *,
    solver: str = "emd",
    reg: float = 0.01,
    num_itermax: int | None = None,
    stop_thr: float | None = None,
    group: str = "",
) -> Tensor:
    """The plan ``T`` ``(n, n)`` (rows A's units, columns B's, marginals ``1/n``), float64.

    The cost is ``M = (max S − S) / (max S − min S)``. Sinkhorn stops when the
    marginal error ``‖Tᵀ1 − 1/n‖₂`` drops below ``stop_thr`` (default ``1e-4``
    relative to ``‖1/n‖₂``, plenty for hardening and fusion) or after
    ``num_itermax`` iterations (default :data:`SINKHORN_ITERMAX`; ``ot.emd``:
    :data:`EMD_ITERMAX`). POT's convergence warnings come back as
    :func:`warnings.warn` naming the parameter to change.
    """
    s = similarity.detach().to(torch.float64).cpu().numpy()
    spread = float(s.max() - s.min()) if s.size else 0.0
    cost = (s.max() - s) / spread if spread > 0 else np.zeros_like(s)
    n = cost.shape[0]
    thr = stop_thr if stop_thr is not None else 1e-4 / math.sqrt(max(n, 1))
    method = "emd" if solver == "emd" else "sinkhorn" if reg >= LOG_DOMAIN_BELOW else "sinkhorn_log"
    plan, caught = _pot(cost, method, reg, num_itermax, thr)
    if method == "sinkhorn" and not _valid(plan):
        plan, caught = _pot(cost, "sinkhorn_log", reg, num_itermax, thr)
    for w in caught:
        warnings.warn(_advice(str(w.message), solver, reg, num_itermax, group), stacklevel=2)
    if not _valid(plan):
        fix = "increase num_itermax" if solver == "emd" else "increase --reg or use --ot-solver emd"
        where = f" for group {group}" if group else ""
        raise ModeconnectError(
            f"optimal transport{where} failed ({solver}, reg={reg}): the plan has mass "
            f"{plan.sum():.3g} instead of 1; {fix}"
        )
    return torch.from_numpy(plan)


def _pot(
    cost: np.ndarray, method: str, reg: float, num_itermax: int | None, thr: float
) -> tuple[np.ndarray, list[warnings.WarningMessage]]:
    import ot

    marginal = np.full(cost.shape[0], 1.0 / cost.shape[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "emd":
            plan = ot.emd(marginal, marginal, cost, numItermax=num_itermax or EMD_ITERMAX)
        else:
            plan = ot.sinkhorn(
                marginal, marginal, cost, reg, method=method,
                numItermax=num_itermax or SINKHORN_ITERMAX, stopThr=thr,
            )  # fmt: skip
    return np.asarray(plan, dtype=np.float64), list(caught)


def _valid(plan: np.ndarray) -> bool:
    return bool(np.isfinite(plan).all()) and abs(float(plan.sum()) - 1.0) <= 1e-3


def _advice(message: str, solver: str, reg: float, num_itermax: int | None, group: str) -> str:
    where = f"group {group}: " if group else ""
    if solver == "emd":
        limit = num_itermax or EMD_ITERMAX
        return (
            f"{where}ot.emd stopped at its iteration limit before optimality ({message.strip()}); "
            f"increase num_itermax (now {limit})"
        )
    limit = num_itermax or SINKHORN_ITERMAX
    return (
        f"{where}Sinkhorn at reg={reg} did not converge in {limit} iterations "
        f"({message.strip()}); increase --reg or the iteration limit num_itermax"
    )


def harden(plan: Tensor) -> Tensor:
    """The permutation ``p`` carrying the most mass: ``argmax_p Σ_i T[i, p(i)]``."""
    return solve_assignment(plan)


# ----------------------------------------------------------------------------
# Hardened alignment
# ----------------------------------------------------------------------------


def _check_options(solver: str, reg: float, cost: str) -> None:
    if solver not in OT_SOLVERS:
        raise ModeconnectError(
            f"unknown OT solver {solver!r} (--ot-solver); valid solvers: {', '.join(OT_SOLVERS)}"
        )
    if cost not in COSTS:
        raise ModeconnectError(
            f"unknown OT cost {cost!r} (--cost); valid costs: {', '.join(COSTS)}"
        )
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg):
        raise ModeconnectError(f"--reg must be a positive number, got {reg!r}")
    if reg <= 0:
        raise ModeconnectError(f"--reg must be a positive number, got {reg!r}")


def cost_source(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    cost: str = "weights",
    model: nn.Module | None = None,
    data: Iterable[Any] | None = None,
    statistic: str = "correlation",
    max_batches: int | None = None,
) -> SimilaritySource:
    """The similarity whose negation is the ground cost: from weights or from activations."""
    if cost == "weights":
        return WeightSource(spec, a, b)
    stats = activation_statistics(spec, a, b, model=model, data=data, max_batches=max_batches)
    warn_unobserved(stats.unobserved, "optimal transport")
    return statistics_source(stats, spec, statistic)


@strict("ot")
def match_ot(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    model: nn.Module | None = None,
    data: Iterable[Any] | None = None,
    solver: str = "emd",
    reg: float = 0.01,
    cost: str = "weights",
    statistic: str = "correlation",
    max_batches: int | None = None,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-12,
    rtol: float = DEFAULT_RTOL,
    num_itermax: int | None = None,
) -> Alignment:
    """Permutations from hardened optimal-transport plans (OTFusion, Singh & Jaggi 2020).

    Each step solves ``min_T ⟨T, M_g⟩ − reg·H(T)`` for one group (``solver``
    ``"emd"``: exact, ``reg`` unused; ``"sinkhorn"``: entropic) and keeps
    ``argmax_p Σ_i T[i, p(i)]``. ``objective`` is the matched similarity
    (``Σ⟨W_A, π(W_B)⟩`` for ``cost="weights"``, the activation statistic summed
    over matched units for ``cost="activations"``). ``seed`` orders the groups.
    """
    import ot  # noqa: F401  (POT takes ~0.8 s to import: load it lazily, outside the timing)

    start = time.perf_counter()
    _check_options(solver, reg, cost)
    check_descent("ot", tol=tol, rtol=rtol, max_iter=max_iter)
    source = cost_source(
        spec, a, b, cost=cost, model=model, data=data, statistic=statistic, max_batches=max_batches
    )
    run = _descend(source, spec, solver, reg, num_itermax, seed, max_iter, tol, rtol)
    params: dict[str, Any] = {
        "solver": solver,
        "reg": reg,
        "cost": cost,
        "num_itermax": num_itermax,
    }
    if cost == "activations":
        params.update(statistic=statistic, max_batches=max_batches)
    return Alignment(
        method="ot",
        perm=run.perm,
        objective=source.objective(run.perm),
        iterations=run.sweeps,
        seconds=time.perf_counter() - start,
        seed=seed,
        params=params,
        profile=run.profile(),
    )


def _descend(
    source: SimilaritySource,
    spec: PermutationSpec,
    solver: str,
    reg: float,
    num_itermax: int | None,
    seed: int,
    max_iter: int,
    tol: float,
    rtol: float,
) -> Descent:
    def solve(group: str, similarity: Tensor) -> Tensor:
        plan = transport_plan(
            similarity, solver=solver, reg=reg, num_itermax=num_itermax, group=group
        )
        return harden(plan)

    return descend(spec, source, solve, seed=seed, max_iter=max_iter, tol=tol, rtol=rtol)


# ----------------------------------------------------------------------------
# Soft fusion
# ----------------------------------------------------------------------------


def soft_groups(spec: PermutationSpec) -> list[str]:
    """Groups transported softly in fusion: all but per-block inner groups and their outer groups.

    Heads and GroupNorm groups move as whole blocks, with their inner orders, by
    the hardened permutation: mixing the units of different heads would mix
    their attention patterns.
    """
    kids = children_of(spec)
    return [n for n, g in spec.groups.items() if g.batch_over is None and n not in kids]


def transport_plans(
    spec: PermutationSpec,
    source: SimilaritySource,
    perm: Mapping[str, Tensor],
    *,
    solver: str = "emd",
    reg: float = 0.01,
    num_itermax: int | None = None,
) -> dict[str, Tensor]:
    """One plan per soft group, with every other group held at ``perm`` (a hardened alignment)."""
    return {
        g: transport_plan(
            source.similarity(g, {k: v for k, v in perm.items() if k != g}),
            solver=solver,
            reg=reg,
            num_itermax=num_itermax,
            group=g,
        )
        for g in soft_groups(spec)
    }


def transport_state_dict(
    b: StateDict,
    spec: PermutationSpec,
    perm: Mapping[str, Tensor],
    plans: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """B carried into A's basis: ``perm`` by indexing, then ``n · T_g`` along each axis of ``g``.

    ``perm`` supplies the groups without a plan (heads and their inner groups).
    Keys the spec does not know, and non-floating tensors, are copied unchanged.
    """
    hard = {g: p for g, p in perm.items() if g not in plans}
    out = apply_permutation(b, spec, hard)
    for key, tensor in out.items():
        layouts = spec.layouts.get(spec.aliases.get(key, key))
        if layouts is None or not tensor.is_floating_point():
            continue
        for axis, layout in enumerate(layouts):
            for g in dict.fromkeys(leaf.group for leaf in leaves(layout)):
                if g in plans:
                    tensor = _transport_axis(tensor, axis, exposure(layout, g), plans[g])
        out[key] = tensor
    return out


def _transport_axis(tensor: Tensor, axis: int, index: Tensor, plan: Tensor) -> Tensor:
    """Replace A-position ``i``'s slice of group units by ``Σ_j n·T[i, j]`` · B's unit ``j``'s."""
    n = plan.shape[0]
    moved = tensor.movedim(axis, 0).to(torch.float64)
    flat = index.reshape(-1)
    sel = moved[flat].reshape(n, -1)
    mixed = (n * plan) @ sel
    out = moved.clone()
    out[flat] = mixed.reshape(moved[flat].shape)
    return out.to(tensor.dtype).movedim(0, axis)


@strict("fuse_ot")
def fuse_ot(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    weights: Sequence[float] = (0.5, 0.5),
    alignment: Alignment | None = None,
    model: nn.Module | None = None,
    data: Iterable[Any] | None = None,
    solver: str = "emd",
    reg: float = 0.01,
    cost: str = "weights",
    statistic: str = "correlation",
    max_batches: int | None = None,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-12,
    rtol: float = DEFAULT_RTOL,
    num_itermax: int | None = None,
) -> dict[str, Tensor]:
    """OT fusion: ``θ = w_A·θ_A + w_B·T(θ_B)`` with ``T`` the soft transport into A's basis.

    ``alignment`` (a hardened OT alignment of the same pair) is reused when given;
    otherwise :func:`match_ot` runs first. Plans of the soft groups are then
    solved with the other groups at that alignment. With ``solver="emd"`` the
    result equals interpolating A with aligned B. ``weights`` are normalised to
    sum to 1; non-floating tensors come from A.
    """
    w_a, w_b = _fusion_weights(weights)
    _check_options(solver, reg, cost)
    check_descent("fuse_ot", tol=tol, rtol=rtol, max_iter=max_iter)
    source = cost_source(
        spec, a, b, cost=cost, model=model, data=data, statistic=statistic, max_batches=max_batches
    )
    if alignment is None:
        perm = _descend(source, spec, solver, reg, num_itermax, seed, max_iter, tol, rtol).perm
    else:
        perm = dict(alignment.perm)
    plans = transport_plans(spec, source, perm, solver=solver, reg=reg, num_itermax=num_itermax)
    moved = transport_state_dict(b, spec, perm, plans)
    return {
        k: (w_a * v.double() + w_b * moved[k].double()).to(v.dtype) if v.is_floating_point() else v
        for k, v in a.items()
    }


def _fusion_weights(weights: Sequence[float]) -> tuple[float, float]:
    w = [float(x) for x in weights]
    if len(w) != 2 or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ModeconnectError(
            "fusion weights must be two non-negative numbers (w_A, w_B), not both 0; "
            f"got {weights!r}"
        )
    return w[0] / sum(w), w[1] / sum(w)


__all__ = [
    "COSTS",
    "OT_SOLVERS",
    "WeightSource",
    "cost_source",
    "fuse_ot",
    "harden",
    "match_ot",
    "soft_groups",
    "transport_plan",
    "transport_plans",
    "transport_state_dict",
]
