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

Two rules cut the work without changing the result:

- **Skipping.** A group none of whose neighbours (``source.depends_on``) changed
  since its last solve has the very same similarity, so solving it again cannot
  gain: the step is skipped. A sweep in which every group is skipped gains nothing
  and ends the descent, as a sweep of zero-gain solves would.
- **Warm starts.** ``solve`` may keep state between calls (:class:`.WarmStart`
  carries each group's dual prices to its next solve).

One rule trades exactness for time: ``rtol`` also ends the descent after a sweep
that raised the objective by no more than ``rtol · |objective|`` (the objective is
tracked as its starting value plus the gains). The methods default to
:data:`DEFAULT_RTOL`; the engine itself is exact unless told otherwise.

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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from ..progress import ProgressFn
from ..spec import PermutationSpec, identity_permutation
from .assignment import DEFAULT_SOLVER, solve_assignment


class SimilaritySource(Protocol):
    """What the descent needs: per-group similarity of A's units to B's, others held fixed.

    A source may also define ``depends_on(group) -> frozenset[str]``: the groups
    whose permutations ``similarity(group, ...)`` and ``cross(group, ...)`` read.
    Without it the descent never skips a step.
    """

    def similarity(self, group: str, perm: Mapping[str, Tensor]) -> Tensor:
        """``(n, n)`` float64: row ``i`` A's unit ``i``, column ``j`` B's unit ``j``."""
        ...

    def cross(self, outer: str, inner: str, perm: Mapping[str, Tensor]) -> Tensor | None:
        """``(n_outer, n_outer, n_inner, n_inner)`` block-pair similarity, or None if unseen."""
        ...

    def objective(self, perm: Mapping[str, Tensor]) -> float: ...


DEFAULT_RTOL = 1e-3
"""The methods stop after a sweep that gains ``≤ 1e-3 · |objective|``; ``rtol=0`` is exact.

Measured on independently trained pairs, seeds 0-2 (``bench_weight_matching.py
--tolerances``): the exact descent's late sweeps each gain ~1e-4 of the objective
while swapping a few dozen units. With ``1e-3`` weight matching stops after 6-8
sweeps instead of 12-19 (16-19 assignments instead of 25-50), at an objective
0.1-0.4 % lower, and the barriers stay within the spread between seeds: digits pair
loss barrier 0.0000 either way, error 0.10-0.52 % (exact 0.12-0.30 %); MNIST-scale
pair 0.0024-0.0050 nats (exact 0.0017-0.0040), error 0.33-0.35 % (exact 0.30-0.36 %).
``1e-6`` changes nothing there; ``1e-2`` stops after 3-4 sweeps and lowers the
objective by up to 1.1 %."""


_T = TypeVar("_T")

Solve = Callable[[str, Tensor], Tensor]
"""``solve(group, similarity) -> permutation`` maximising ``Σ_i similarity[i, p[i]]``."""


@dataclass(frozen=True)
class Descent:
    """The result of one coordinate descent, and where its time went.

    ``solves`` counts the steps that solved an assignment (outer groups; the
    per-block inner assignments are not counted), ``skipped`` the steps whose
    similarity could not have changed. ``similarity_seconds`` is the time spent
    building similarities (the products), ``assignment_seconds`` in ``solve``
    (inner assignments included).
    """

    perm: dict[str, Tensor]
    sweeps: int
    solves: int
    skipped: int
    similarity_seconds: float
    assignment_seconds: float

    def profile(self) -> dict[str, float | int]:
        """The counts and times as a plain dict (for :attr:`Alignment.profile`)."""
        return {
            "sweeps": self.sweeps,
            "solves": self.solves,
            "skipped": self.skipped,
            "similarity_seconds": self.similarity_seconds,
            "assignment_seconds": self.assignment_seconds,
        }


def children_of(spec: PermutationSpec) -> dict[str, list[str]]:
    """Outer group -> the inner groups batched over it."""
    kids: dict[str, list[str]] = {}
    for name, g in spec.groups.items():
        if g.batch_over is not None:
            kids.setdefault(g.batch_over, []).append(name)
    return kids


def coordinate_descent(
    spec: PermutationSpec, source: SimilaritySource, solve: Solve, **options: Any
) -> tuple[dict[str, Tensor], int]:
    """Re-solve one group at a time until a sweep gains ``≤ tol``; ``(perm, sweeps)``.

    The options (``seed``, ``max_iter``, ``tol``, ``rtol``, ``inner_solver``) are
    those of :func:`descend`, which also reports the solves, skips and times.
    """
    out = descend(spec, source, solve, **options)
    return out.perm, out.sweeps


@dataclass
class _Clock:
    """Seconds spent building similarities and solving assignments, and the step counts."""

    similarity: float = 0.0
    assignment: float = 0.0
    solves: int = 0
    skipped: int = 0

    def build(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)``, its time counted as building similarities."""
        start = time.perf_counter()
        out = fn(*args)
        self.similarity += time.perf_counter() - start
        return out

    def assign(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)``, its time counted as solving assignments."""
        start = time.perf_counter()
        out = fn(*args)
        self.assignment += time.perf_counter() - start
        return out


def descend(
    spec: PermutationSpec,
    source: SimilaritySource,
    solve: Solve,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-12,
    rtol: float = 0.0,
    inner_solver: str = DEFAULT_SOLVER,
    progress: ProgressFn | None = None,
) -> Descent:
    """Re-solve one group at a time, in a seeded random order, until a sweep gains ``≤ tol``.

    Each step maximises ``Σ_i S_g[i, P(i)]`` with the other groups fixed; a step
    is kept only when it raises the objective, and skipped when no neighbour of
    ``g`` changed since ``g``'s last solve. Outer groups are solved jointly with
    their inner groups, whose per-block assignments use ``inner_solver``. Runs at
    least one sweep and at most ``max_iter``; with ``rtol > 0`` also stops after a
    sweep that gains ``≤ rtol · |objective|``. ``progress("matching groups", done, total)``
    is called after each group of a sweep (``done`` starts again at each sweep).
    """
    kids = children_of(spec)
    order = [n for n, g in spec.groups.items() if g.batch_over is None]
    deps = _neighbours(source, order, kids)
    perm = identity_permutation(spec)
    gen = torch.Generator().manual_seed(seed)
    changed = dict.fromkeys(order, 0)  # step at which each group last changed
    solved: dict[str, int] = {}  # step of each group's last solve
    clock = _Clock()
    value = source.objective(perm) if rtol > 0 else 0.0
    sweeps = step = 0
    while sweeps < max(1, max_iter):
        sweeps += 1
        improved, gained = False, 0.0
        for done, i in enumerate(torch.randperm(len(order), generator=gen).tolist(), 1):
            if progress is not None:
                progress("matching groups", done - 1, len(order))
            name, step = order[i], step + 1
            last = solved.get(name)
            if last is not None and all(changed[h] < last for h in deps.get(name, order)):
                clock.skipped += 1
                continue
            solved[name] = step
            gain = _step(spec, source, solve, name, kids.get(name), perm, inner_solver, clock)
            if gain > 0:
                changed[name] = step
                gained += gain
            improved |= gain > tol
        if progress is not None:
            progress("matching groups", len(order), len(order))
        value += gained
        if not improved or gained <= rtol * abs(value):
            break
    return Descent(perm, sweeps, clock.solves, clock.skipped, clock.similarity, clock.assignment)


def _neighbours(
    source: SimilaritySource, order: list[str], kids: Mapping[str, list[str]]
) -> dict[str, frozenset[str]]:
    """Outer group -> the outer groups whose change can change its step (empty: unknown).

    A neighbour that is an inner group counts as its outer group, which changes with it.
    """
    depends_on = getattr(source, "depends_on", None)
    if depends_on is None:
        return {}
    outer_of = {kid: outer for outer, ks in kids.items() for kid in ks}
    out: dict[str, frozenset[str]] = {}
    for name in order:
        own = {name, *kids.get(name, ())}
        reads = set().union(*(depends_on(g) for g in own)) - own
        out[name] = frozenset(outer_of.get(g, g) for g in reads)
    return out


def _matched(similarity: Tensor, p: Tensor) -> Tensor:
    """``Σ_i similarity[i, p[i]]``, the score of assignment ``p`` (a 0-d tensor)."""
    return similarity[torch.arange(similarity.shape[0]), p].sum()


def _step(
    spec: PermutationSpec,
    source: SimilaritySource,
    solve: Solve,
    name: str,
    kids: list[str] | None,
    perm: dict[str, Tensor],
    inner_solver: str,
    clock: _Clock,
) -> float:
    clock.solves += 1
    if kids:
        return _step_blocks(spec, source, solve, name, kids, perm, inner_solver, clock)
    return _step_plain(source, solve, name, perm, clock)


def _step_plain(
    source: SimilaritySource, solve: Solve, name: str, perm: dict[str, Tensor], clock: _Clock
) -> float:
    """Re-solve one group without block structure; returns the gain in objective."""
    s = clock.build(source.similarity, name, {k: v for k, v in perm.items() if k != name})
    new = clock.assign(solve, name, s)
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
    clock: _Clock,
) -> float:
    """Re-solve an outer group jointly with its per-block inner groups; returns the gain."""
    n = spec.groups[name].size
    rows = torch.arange(n)
    free = {k: v for k, v in perm.items() if k != name and k not in kids}
    score = clock.build(source.similarity, name, free)
    old = float(_matched(score, perm[name]))
    best: dict[str, Tensor] = {}
    for kid in kids:
        cross = clock.build(source.cross, name, kid, free)
        if cross is None:  # never observed: keep every block's inner order
            best[kid] = torch.arange(spec.groups[kid].size).expand(n, n, -1)
            continue
        best[kid], pair = clock.assign(_best_inner, cross, inner_solver)
        score = score + pair
        old += float(torch.gather(cross[rows, perm[name]], 2, perm[kid][..., None]).sum())
    new = clock.assign(solve, name, score)
    gain = float(_matched(score, new)) - old
    if gain > 0:
        perm[name] = new
        for kid in kids:
            perm[kid] = best[kid][rows, new].clone()
    if _read_each_other(source, kids):
        gain += _siblings(source, name, kids, perm, free, inner_solver, clock)
    return gain


def _read_each_other(source: SimilaritySource, kids: list[str]) -> bool:
    """Whether some inner group's similarity reads a sibling's permutation (unknown: yes).

    Siblings that never meet in a tensor (a ViT's Q·K and V dims) already got their best
    inner orders from :func:`_step_blocks`: re-solving them could not gain.
    """
    depends_on = getattr(source, "depends_on", None)
    if len(kids) < 2 or depends_on is None:
        return len(kids) > 1
    return any(depends_on(kid) & (set(kids) - {kid}) for kid in kids)


_NOISE = 1e-9
"""A sibling step must gain more than this share of its blocks' score to be kept."""
_SIBLING_ROUNDS = 8
"""Rounds of sibling steps, at most, for each inner group of the outer group (a round steps
every inner group once, so ``len(kids) × 8`` rounds): a bound on a loop that stops on its own."""


def _siblings(
    source: SimilaritySource,
    name: str,
    kids: list[str],
    perm: dict[str, Tensor],
    free: Mapping[str, Tensor],
    inner_solver: str,
    clock: _Clock,
) -> float:
    """Re-solve inner groups that share a tensor, each with the others as they now are.

    :func:`_step_blocks` scores each inner group with its siblings in B's order. Where
    siblings meet in one tensor (grouped-query attention: the query heads of a
    key/value group and the value dims, on ``o_proj``'s columns) that can stop the
    descent short of B's true order. Here, on the outer assignment as it stands, each
    inner group is solved block by block with the others applied (B's block ``b``
    carries the inner orders of the A block matched to it), and kept when it gains;
    rounds (each steps every inner group once) go on until none gains, at most
    :data:`_SIBLING_ROUNDS` times the number of inner groups. Each
    kept step raises the objective, so the descent still only climbs. Returns the gain.
    """
    matched = perm[name]
    rows, inverse = torch.arange(matched.numel()), torch.argsort(matched)
    total = 0.0
    for _ in range(len(kids) * _SIBLING_ROUNDS):
        gained = 0.0
        for kid in kids:
            others = {s: perm[s][inverse] for s in kids if s != kid}
            cross = clock.build(source.cross, name, kid, {**free, **others})
            if cross is None:
                continue
            blocks = cross[rows, matched]  # (n, k, k): each A block with its matched B block
            new = clock.assign(_each_block, blocks, inner_solver)
            before = float(torch.gather(blocks, 2, perm[kid][..., None]).sum())
            gain = float(torch.gather(blocks, 2, new[..., None]).sum()) - before
            if gain > _NOISE * abs(before):  # not a reordering of equal scores
                perm[kid], gained = new, gained + gain
        total += gained
        if gained <= 0:
            break
    return total


def _each_block(blocks: Tensor, solver: str) -> Tensor:
    """The best assignment of each ``(k, k)`` block of ``blocks`` ``(n, k, k)``: ``(n, k)``."""
    return torch.stack([solve_assignment(x, solver) for x in blocks])


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
    "DEFAULT_RTOL",
    "Descent",
    "SimilaritySource",
    "Solve",
    "children_of",
    "coordinate_descent",
    "descend",
]
