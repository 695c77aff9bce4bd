"""Weight matching (Git Re-Basin, Ainsworth et al. 2023, Algorithm 1).

Coordinate descent over permutation groups in random order. For group ``g``
with every other permutation held fixed, the best ``P_g`` solves one linear
assignment

    P_g = argmax_P  Σ_{(W, axis) ∋ g}  ⟨ W_A[axis→0],  P · W_B'[axis→0] ⟩

where ``W_B'`` is B with all other current permutations applied. A sweep that
improves no group by more than ``tol`` ends the descent.

Groups with per-block inner permutations (attention heads, GroupNorm groups)
are solved jointly with their outer group: for every pair of blocks the best
inner assignment is found first, and its score feeds the outer assignment.

The descent is the shared one (:mod:`modeconnect.matching.descent`); this module
supplies the similarity, caching each tensor's product ``W_A · W_B'ᵀ`` until a
permutation it depends on changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..spec import Member, PermutationSpec, exposure, identity_permutation, leaves, permute_tensor
from .assignment import DEFAULT_SOLVER, solve_assignment
from .descent import children_of, coordinate_descent
from .result import Alignment

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class _Term:
    """One tensor axis of a group: its key, axis, and the exposure index."""

    key: str
    axis: int
    index: torch.Tensor  # (n, m) or (n_outer, n, m)


def _rows(tensor: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """``tensor`` gathered along ``axis`` by ``index`` and flattened to ``(*index.shape[:-1], -1)``.

    A plain leaf axis needs no gather: the result is then a view (for 2-D weights,
    ``W`` or ``Wᵀ``), which the matrix product reads without copying.
    """
    if (
        index.shape[-1] == 1
        and index.numel() == tensor.shape[axis]
        and torch.equal(index.reshape(-1), torch.arange(index.numel()))
    ):
        return tensor.movedim(axis, 0).reshape(*index.shape[:-1], -1)
    g = tensor.index_select(axis, index.reshape(-1))
    g = g.movedim(axis, 0).reshape(*index.shape, -1)
    return g.reshape(*index.shape[:-1], -1)


def _terms(spec: PermutationSpec, group: str, outer: str | None, skip: set[str]) -> list[_Term]:
    terms = []
    for m in spec.groups[group].members:
        layout = spec.layouts[m.key][m.axis]
        names = {leaf.group for leaf in leaves(layout)}
        if names & skip:
            continue
        terms.append(_Term(m.key, m.axis, exposure(layout, group, outer)))
    return terms


class _Problem:
    """The fixed parts of one weight-matching run, as a :class:`~.descent.SimilaritySource`.

    Holds A's exposed rows and the index sets; the products ``A_rows · B_rowsᵀ``
    of plain terms are cached between steps (:meth:`product`).
    """

    def __init__(self, spec: PermutationSpec, a: StateDict, b: StateDict, dtype: torch.dtype):
        self.spec, self.a, self.b, self.dtype = spec, a, b, dtype
        children = children_of(spec)
        self.direct: dict[str, list[_Term]] = {}
        self.joint: dict[tuple[str, str], list[_Term]] = {}
        for name, g in spec.groups.items():
            if g.batch_over is not None:
                continue
            kids = children.get(name, [])
            self.direct[name] = _terms(spec, name, None, set(kids))
            for kid in kids:
                self.joint[name, kid] = _terms(spec, kid, name, set())
        self.a_rows = {
            (t.key, t.axis, id(t)): _rows(a[t.key].to(dtype), t.axis, t.index)
            for terms in [*self.direct.values(), *self.joint.values()]
            for t in terms
        }
        # A term's product only changes when a permutation of *another* group on
        # the same tensor changes; cache it keyed by those permutation tensors.
        self.deps = {
            id(t): sorted({lf.group for lay in spec.layouts[t.key] for lf in leaves(lay)} - {name})
            for name, terms in self.direct.items()
            for t in terms
        }
        self.cache: dict[int, tuple[tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def similarity(self, group: str, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``Σ_terms A_rows · B_rowsᵀ``: products in the working dtype, the sum in float64."""
        n = self.spec.groups[group].size
        s = torch.zeros(n, n, dtype=torch.float64)
        for t in self.direct[group]:
            s += self.product(t, perm)
        return s

    def cross(self, outer: str, inner: str, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(n, n, k, k)`` block-pair similarity; zeros (never None) if no tensor shows it."""
        n, k = self.spec.groups[outer].size, self.spec.groups[inner].size
        cross = torch.zeros(n, n, k, k, dtype=torch.float64)
        for t in self.joint[outer, inner]:
            cross += torch.einsum("aum,bvm->abuv", self.a_of(t), self.b_rows(t, perm)).double()
        return cross

    def objective(self, perm: Mapping[str, torch.Tensor]) -> float:
        return objective(self.spec, self.a, self.b, perm)

    def product(self, term: _Term, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``A_rows · B_rowsᵀ`` for one term, reused while its neighbours' permutations stand."""
        deps = tuple(perm[g] for g in self.deps.get(id(term), ()) if g in perm)
        hit = self.cache.get(id(term))
        if (
            hit is not None
            and len(hit[0]) == len(deps)
            and all(x is y for x, y in zip(hit[0], deps))
        ):
            return hit[1]
        value = self.a_of(term) @ self.b_rows(term, perm).T
        self.cache[id(term)] = (deps, value)
        return value

    def b_rows(self, term: _Term, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
        key = self.spec.aliases.get(term.key, term.key)
        w = permute_tensor(self.b[term.key].to(self.dtype), self.spec.layouts[key], perm)
        return _rows(w, term.axis, term.index)

    def a_of(self, term: _Term) -> torch.Tensor:
        return self.a_rows[term.key, term.axis, id(term)]


def match_weights(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    seed: int = 0,
    restarts: int = 1,
    max_iter: int = 100,
    tol: float = 1e-12,
    solver: str = DEFAULT_SOLVER,
    dtype: torch.dtype = torch.float32,
    model: object = None,
    data: object = None,
) -> Alignment:
    """Permute B's units to best match A's weights (Git Re-Basin weight matching).

    Runs ``restarts`` descents from seeds ``seed, seed+1, ...`` (each visits the
    groups in its own random order) and keeps the highest objective
    ``Σ_W ⟨W_A, π(W_B)⟩``. Deterministic for a given seed. ``model`` and
    ``data`` are accepted for a uniform method signature and not used.
    """
    start = time.perf_counter()
    prob = _Problem(spec, a, b, dtype)
    runs = []
    for r in range(max(1, restarts)):
        perm, sweeps = _descend(prob, seed + r, max_iter, tol, solver)
        runs.append((prob.objective(perm), -r, perm, sweeps))
    value, neg_r, perm, sweeps = max(runs, key=lambda run: run[:2])  # ties: the first seed
    used_seed = seed - neg_r
    return Alignment(
        method="weight",
        perm=perm,
        objective=value,
        iterations=sweeps,
        seconds=time.perf_counter() - start,
        seed=used_seed,
        params={"restarts": restarts, "max_iter": max_iter, "solver": solver, "seed": seed},
    )


def _descend(
    prob: _Problem, seed: int, max_iter: int, tol: float, solver: str
) -> tuple[dict[str, torch.Tensor], int]:
    if max_iter < 1:  # weight matching honours max_iter=0; the shared descent always sweeps once
        return identity_permutation(prob.spec), 0
    return coordinate_descent(
        prob.spec,
        prob,
        lambda _g, s: solve_assignment(s, solver),
        seed=seed,
        max_iter=max_iter,
        tol=tol,
        inner_solver=solver,
    )


def objective(
    spec: PermutationSpec, a: StateDict, b: StateDict, perm: Mapping[str, torch.Tensor]
) -> float:
    """``Σ_W ⟨W_A, π(W_B)⟩`` over every floating tensor the spec permutes, in float64."""
    total = 0.0
    for key, layouts in spec.layouts.items():
        if key not in a or not a[key].is_floating_point():
            continue
        pb = permute_tensor(b[key], layouts, perm)
        total += float((a[key].double() * pb.double()).sum())
    return total


__all__ = ["match_weights", "objective", "Member"]
