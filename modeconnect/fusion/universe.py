"""N models matched through one universe basis (C2M3-style, Crisostomi et al. 2024).

Each model ``j`` gets a permutation ``P_j`` ``(n, n)`` of its units onto a shared
universe; the map from model ``j`` to model ``k`` is ``P_j P_kᵀ``, so maps compose
around any cycle to the identity *by construction*. The ``P_j`` maximise the
summed pairwise agreement of activations

    max_{P_1..P_N}  Σ_{j<k}  tr(P_jᵀ R_jk P_k),    R_jk = corr(units of j, units of k)

by Frank-Wolfe over doubly stochastic matrices, as C2M3 does over weights: the
gradient ``G_j = Σ_{k≠j} R_jk P_k`` gives a vertex by one linear assignment per
model, the step size is the exact maximiser of the quadratic along the direction,
and the relaxed solution is projected back to permutations at the end. It starts
from every model matched to model 0 directly.

:func:`cycle_error` measures how far maps are from composing to the identity: the
fraction of units that do not come back around triangles ``i → j → k → i``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations

import torch
from torch import Tensor

from ..errors import ModeconnectError
from ..matching.assignment import solve_assignment
from .maps import GroupMap

__all__ = ["cycle_error", "pairwise_maps", "universe_map", "universe_permutations"]


def _lap(score: Tensor) -> Tensor:
    """The permutation matrix ``(n, n)`` maximising ``Σ score[f, perm(f)]``."""
    col = solve_assignment(score.double(), solver="scipy")
    out = torch.zeros_like(score, dtype=torch.float64)
    out[torch.arange(score.shape[0]), torch.as_tensor(col)] = 1.0
    return out


def _blocks(corr: Tensor, sizes: Sequence[int]) -> list[list[Tensor]]:
    rows = corr.double().split(list(sizes), dim=0)
    return [list(r.split(list(sizes), dim=1)) for r in rows]


def universe_permutations(
    corr: Tensor, sizes: Sequence[int], *, iterations: int = 100, tol: float = 1e-9
) -> list[Tensor]:
    """``P_j`` ``(n, n)`` (unit ``f`` of model ``j`` ↦ universe unit ``c`` where ``P_j[f, c] = 1``).

    >>> import torch
    >>> corr = torch.eye(6)
    >>> perms = universe_permutations(corr, [2, 2, 2])
    >>> [p.shape for p in perms] == [torch.Size([2, 2])] * 3
    True
    """
    if len(set(sizes)) != 1:
        raise ModeconnectError(
            f"universe matching needs models of one width, got {list(sizes)}; fuse across "
            "widths with --method otfusion or zip"
        )
    r = _blocks(corr, sizes)
    n_models = len(sizes)
    p = [_lap(r[j][0]) for j in range(n_models)]  # each model matched to model 0
    for _ in range(iterations):
        grads = [sum(r[j][k] @ p[k] for k in range(n_models) if k != j) for j in range(n_models)]
        d = [_lap(g) - pj for g, pj in zip(grads, p, strict=True)]  # type: ignore[arg-type]
        lin = sum(float((g * dj).sum()) for g, dj in zip(grads, d, strict=True))  # type: ignore[misc]
        if lin <= tol:
            break
        quad = sum(
            float((d[j] * (r[j][k] @ d[k])).sum())
            for j in range(n_models) for k in range(j + 1, n_models)
        )  # fmt: skip
        # f(P + sD) = f(P) + s·lin + s²·quad: the exact maximiser on [0, 1]
        step = 1.0 if quad >= 0 else min(1.0, max(0.0, -lin / (2 * quad)))
        if step <= 0:
            break
        p = [pj + step * dj for pj, dj in zip(p, d, strict=True)]
    return [_lap(pj) for pj in p]


def universe_map(
    corr: Tensor, sizes: Sequence[int], weights: Sequence[float], *, iterations: int = 100
) -> GroupMap:
    """Merge ``w_j P_jᵀ`` and unmerge ``P_j``: the weighted average in the universe basis."""
    perms = universe_permutations(corr, sizes, iterations=iterations)
    return GroupMap(tuple(w * p.T for w, p in zip(weights, perms, strict=True)), tuple(perms))


def pairwise_maps(perms: Sequence[Tensor]) -> dict[tuple[int, int], Tensor]:
    """Index maps ``(j, k) -> idx``: ``idx[f]`` is model ``k``'s unit matched to model ``j``'s
    unit ``f``, from universe permutation matrices (``P_j P_kᵀ``)."""
    return {
        (j, k): (perms[j] @ perms[k].T).argmax(1)
        for j in range(len(perms)) for k in range(len(perms)) if j != k
    }  # fmt: skip


def cycle_error(maps: Mapping[tuple[int, int], Tensor], n_models: int) -> float:
    """The fraction of units not mapped back to themselves around triangles ``i → j → k → i``,
    averaged over all ordered triangles of distinct models (0: cycle-consistent).

    >>> import torch
    >>> ident = {(j, k): torch.arange(3) for j in range(3) for k in range(3) if j != k}
    >>> cycle_error(ident, 3)
    0.0
    >>> ident[(0, 1)] = torch.tensor([1, 0, 2])
    >>> round(cycle_error(ident, 3), 4)
    0.3333
    """
    errors = []
    for i, j, k in permutations(range(n_models), 3):
        units = torch.arange(len(maps[(i, j)]))
        back = maps[(k, i)][maps[(j, k)][maps[(i, j)][units]]]
        errors.append(float((back != units).double().mean()))
    if not errors:
        raise ModeconnectError(f"cycle error needs at least 3 models, got {n_models}")
    return sum(errors) / len(errors)
