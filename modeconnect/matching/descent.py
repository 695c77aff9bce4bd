"""Coordinate descent over permutation groups: the engine of every hard matching method.

Weight matching, activation matching and OT alignment all choose one permutation
per group to maximise a sum of linear assignments

    P = argmax_P  Σ_g Σ_i  S_g[i, P_g(i)]

where the similarity ``S_g`` of A's units (rows) to B's units (columns) depends
on the current permutations of the groups that share a tensor or an activation
site with ``g``. The descent re-solves one group at a time, in a seeded random
order, with every other group held fixed, and keeps a step only when it raises
the objective; a sweep that gains no more than ``tol`` ends it (Git Re-Basin,
Ainsworth et al. 2023, Algorithm 1).

Per-block inner groups (``batch_over``: attention head dims, GroupNorm channels)
are solved jointly with their outer group: for every pair of blocks (A's block
``a``, B's block ``b``) the best inner assignment of the block-pair similarity
``X[a, b]`` ``(k, k)`` is found, and its score is added to ``S_outer[a, b]``
before the outer assignment is solved.

A method supplies a :class:`SimilaritySource` (``S_g`` and ``X``) and a
:data:`Solve` that turns a similarity into a permutation: an exact linear
assignment for weight and activation matching, a hardened transport plan for
OT. Inner assignments are always exact linear assignments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor

from ..spec import PermutationSpec, identity_permutation
from .assignment import DEFAULT_SOLVER, solve_assignment


class SimilaritySource(Protocol):
    """What the descent needs: per-group similarity of A's units to B's, others held fixed."""

    def similarity(self, group: str, perm: Mapping[str, Tensor]) -> Tensor:
        """``(n, n)`` float64: row ``i`` A's unit ``i``, column ``j`` B's unit ``j``."""
        ...

    def cross(self, outer: str, inner: str, perm: Mapping[str, Tensor]) -> Tensor | None:
        """``(n_outer, n_outer, n_inner, n_inner)`` block-pair similarity, or None if unseen."""
        ...

    def objective(self, perm: Mapping[str, Tensor]) -> float: ...


Solve = Callable[[str, Tensor], Tensor]
"""``solve(group, similarity) -> permutation`` maximising ``Σ_i similarity[i, p[i]]``."""


def children_of(spec: PermutationSpec) -> dict[str, list[str]]:
    """Outer group -> the inner groups batched over it."""
    kids: dict[str, list[str]] = {}
    for name, g in spec.groups.items():
        if g.batch_over is not None:
            kids.setdefault(g.batch_over, []).append(name)
    return kids


def coordinate_descent(
    spec: PermutationSpec,
    source: SimilaritySource,
    solve: Solve,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-12,
    inner_solver: str = DEFAULT_SOLVER,
) -> tuple[dict[str, Tensor], int]:
    """Re-solve one group at a time, in a seeded random order, until a sweep gains ``≤ tol``.

    Each step maximises ``Σ_i S_g[i, P(i)]`` with the other groups fixed; a
    step is kept only when it raises the objective. Outer groups are solved
    jointly with their inner groups, whose per-block assignments use
    ``inner_solver``. Runs at least one sweep and at most ``max_iter``.
    Returns the permutation and the number of sweeps.
    """
    kids = children_of(spec)
    order = [n for n, g in spec.groups.items() if g.batch_over is None]
    perm = identity_permutation(spec)
    gen = torch.Generator().manual_seed(seed)
    sweeps = 0
    while sweeps < max(1, max_iter):
        sweeps += 1
        improved = False
        for i in torch.randperm(len(order), generator=gen).tolist():
            name = order[i]
            if name in kids:
                gain = _step_blocks(spec, source, solve, name, kids[name], perm, inner_solver)
            else:
                gain = _step_plain(source, solve, name, perm)
            improved |= gain > tol
        if not improved:
            break
    return perm, sweeps


def _matched(similarity: Tensor, p: Tensor) -> Tensor:
    """``Σ_i similarity[i, p[i]]``, the score of assignment ``p`` (a 0-d tensor)."""
    return similarity[torch.arange(similarity.shape[0]), p].sum()


def _step_plain(
    source: SimilaritySource, solve: Solve, name: str, perm: dict[str, Tensor]
) -> float:
    """Re-solve one group without block structure; returns the gain in objective."""
    s = source.similarity(name, {k: v for k, v in perm.items() if k != name})
    new = solve(name, s)
    gain = float(_matched(s, new) - _matched(s, perm[name]))
    if gain > 0:
        perm[name] = new
    return gain


def _step_blocks(
    spec: PermutationSpec,
    source: SimilaritySource,
    solve: Solve,
    name: str,
    kids: list[str],
    perm: dict[str, Tensor],
    inner_solver: str,
) -> float:
    """Re-solve an outer group jointly with its per-block inner groups; returns the gain."""
    n = spec.groups[name].size
    rows = torch.arange(n)
    free = {k: v for k, v in perm.items() if k != name and k not in kids}
    score = source.similarity(name, free)
    old = float(_matched(score, perm[name]))
    best: dict[str, Tensor] = {}
    for kid in kids:
        cross = source.cross(name, kid, free)
        if cross is None:  # never observed: keep every block's inner order
            best[kid] = torch.arange(spec.groups[kid].size).expand(n, n, -1)
            continue
        best[kid], pair = _best_inner(cross, inner_solver)
        score = score + pair
        old += float(torch.gather(cross[rows, perm[name]], 2, perm[kid][..., None]).sum())
    new = solve(name, score)
    gain = float(_matched(score, new)) - old
    if gain > 0:
        perm[name] = new
        for kid in kids:
            perm[kid] = best[kid][rows, new].clone()
    return gain


def _best_inner(cross: Tensor, solver: str) -> tuple[Tensor, Tensor]:
    """Per block pair ``(a, b)``, the best assignment of ``cross[a, b]`` and its score.

    ``cross`` is ``(n, n, k, k)``; returns assignments ``(n, n, k)`` and scores ``(n, n)``.
    """
    n = cross.shape[0]
    inner = torch.stack(
        [torch.stack([solve_assignment(cross[i, j], solver) for j in range(n)]) for i in range(n)]
    )
    return inner, torch.gather(cross, 3, inner[..., None]).squeeze(-1).sum(-1)


__all__ = [
    "SimilaritySource",
    "Solve",
    "children_of",
    "coordinate_descent",
]
