"""Weight matching (Git Re-Basin, Ainsworth et al. 2023, Algorithm 1).

Coordinate descent over permutation groups in random order. For group ``g``
with every other permutation held fixed, the best ``P_g`` solves one linear
assignment

    P_g = argmax_P  Σ_{(W, axis) ∋ g}  ⟨ W_A[axis→0],  P · W_B'[axis→0] ⟩

where ``W_B'`` is B with all other current permutations applied. A sweep that
improves no group by more than ``tol`` (or, with ``rtol``, the objective by no
more than ``rtol · |objective|``) ends the descent.

Groups with per-block inner permutations (attention heads, GroupNorm groups)
are solved jointly with their outer group: for every pair of blocks the best
inner assignment is found first, and its score feeds the outer assignment.

The descent is the shared one (:mod:`modeconnect.matching.descent`), with
warm-started assignments (:class:`~.assignment.WarmStart`); this module supplies
the similarity (:class:`WeightSource`, also the ground cost of OT alignment),
which keeps each tensor's product ``W_A · W_B'ᵀ`` and, when a neighbouring
permutation changes, updates it by the columns of ``W_B'`` that moved instead of
recomputing it.

Memory: by default the source keeps A's rows of every term (a float32 copy of A) and
one float64 ``n × n`` product per term, far more than the model for wide layers (a
1.1 B-parameter Llama: ~22 GB of products). ``max_bytes`` bounds what it keeps: A's
rows are then read from ``a`` again for each product (``a`` may be a lazy mapping
that reads from disk), and products are kept only while they fit; the others are
recomputed when needed. ``device`` runs the products there (``A_rows · B_rowsᵀ`` on a
GPU); everything else stays on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..progress import ProgressFn
from ..spec import (
    Layout,
    Member,
    PermutationSpec,
    axis_index,
    exposure,
    identity_permutation,
    leaves,
    permute_tensor,
)
from .assignment import DEFAULT_SOLVER, WarmStart
from .descent import DEFAULT_RTOL, Descent, children_of, descend
from .options import check_descent, strict
from .result import Alignment

StateDict = Mapping[str, Tensor]

FIXED_CHUNK = 4096
"""Columns converted at once in a bounded source's products that read no permutation."""
FULL_PRODUCT_ABOVE = 0.5
"""Recompute a product when more than this fraction of its columns moved; else update it.

An update costs ``n · n · k`` for ``k`` moved columns against ``n · n · F`` for the
whole product, plus gathers of ``n · k``."""


@dataclass(frozen=True)
class _Term:
    """One tensor axis of a group: its key, axis, exposure index, and the groups it reads."""

    key: str
    axis: int
    index: Tensor  # (n, m) or (n_outer, n, m)
    reads: tuple[str, ...]  # groups on the tensor other than the term's own


@dataclass(frozen=True)
class _Product:
    """A cached ``A_rows · B_rowsᵀ`` (float64) and what it was made from.

    ``perms``: the permutations the term reads, as given (compared by identity);
    ``index``: the gather index of every axis of B under them.
    """

    perms: tuple[Tensor | None, ...]
    index: tuple[Tensor, ...]
    value: Tensor


def _rows(tensor: Tensor, axis: int, index: Tensor) -> Tensor:
    """``tensor`` gathered along ``axis`` by ``index`` and flattened to ``(*index.shape[:-1], -1)``.

    Columns are ordered ``(c, rest)``: the ``m = index.shape[-1]`` positions of a unit
    along ``axis``, then the other axes in order. A plain leaf axis needs no gather:
    the result is then a view (for 2-D weights, ``W`` or ``Wᵀ``), which the matrix
    product reads without copying.
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


def _moved_columns(
    axis: int, m: int, shape: tuple[int, ...], old: tuple[Tensor, ...], new: tuple[Tensor, ...]
) -> Tensor | None:
    """Columns of :func:`_rows` whose source changed from gather indices ``old`` to ``new``.

    A column moves when its coordinate on some other axis is gathered from another
    place. ``None`` when the term's own axis is gathered differently (another group
    shares it): then rows move too, and the product must be recomputed.
    """
    if not torch.equal(old[axis], new[axis]):
        return None
    rest = [d for d in range(len(shape)) if d != axis]
    mask = torch.zeros([shape[d] for d in rest], dtype=torch.bool)
    for k, d in enumerate(rest):
        changed = old[d] != new[d]
        if bool(changed.any()):
            mask |= changed.view([-1 if j == k else 1 for j in range(len(rest))])
    return mask.reshape(-1).repeat(m).nonzero().squeeze(1)


def _columns(
    b: Tensor, axis: int, units: Tensor, index: tuple[Tensor, ...], cols: Tensor
) -> Tensor:
    """``_rows(permuted b, axis, units)[:, cols]``, gathered from ``b`` alone.

    ``index`` holds the gather index of every axis of ``b`` (:func:`axis_index`);
    column ``c = slot · R + r`` of the rows is position ``units[:, slot]`` on ``axis``
    and the row-major position ``r`` of the other axes (``R`` of them). ``(n, len(cols))``.
    """
    rest = [d for d in range(b.dim()) if d != axis]
    sizes = [b.shape[d] for d in rest]
    mat = b.movedim(axis, 0).reshape(b.shape[axis], -1)
    span = mat.shape[1]
    slots, flat = cols // span, cols % span
    source = torch.zeros_like(flat)
    stride = span
    for d, size in zip(rest, sizes):
        stride //= size
        source += index[d][(flat // stride) % size] * stride
    rows = index[axis][units]  # (n, m): the axis may hold other parts (a concatenation)
    if rows.shape == (len(mat), 1) and torch.equal(rows[:, 0], torch.arange(len(mat))):
        return mat.index_select(1, source)
    return mat[rows[:, slots], source]


def _full(a_rows: Tensor, b_rows: Tensor, device: torch.device | None = None) -> Tensor:
    """``A_rows · B_rowsᵀ`` ``(n, n)``: the product in the working dtype, kept in float64.

    With ``device`` the product runs there and comes back to the CPU.
    """
    if device is not None and device != a_rows.device:
        return (a_rows.to(device) @ b_rows.to(device).T).to(torch.float64).cpu()
    return (a_rows @ b_rows.T).to(torch.float64)


def _updated(
    value: Tensor, a_rows: Tensor, old: Tensor, new: Tensor, scratch: Tensor | None = None
) -> Tensor:
    """``value + a_rows · (new − old)ᵀ`` in place: ``A_rows · B_rowsᵀ`` after columns moved.

    ``old`` and ``new`` are the moved columns of ``B_rows`` before and after
    ``(n, k)``, ``a_rows`` A's matching columns. Exact in exact arithmetic; the
    update is a product in the working dtype (into ``scratch`` when given) added to
    the float64 ``value``, so rounding does not pile up over many updates.
    """
    return value.add_(torch.mm(a_rows, (new - old).T, out=scratch))


class WeightSource:
    """``S_g[u, v] = Σ_(W, axis) ∋ g ⟨W_A[u], π_others(W_B)[v]⟩`` over the exposed rows.

    The similarity weight matching maximises (Ainsworth et al. 2023), and the
    ground cost of OT alignment with weight costs (``−S_g`` up to per-row and
    per-column constants). A :class:`~.descent.SimilaritySource`: holds A's exposed
    rows; each plain term's product ``A_rows · B_rowsᵀ`` (in ``dtype``, summed in
    float64) is cached, and when a permutation it reads changes it is updated by
    the columns of ``B_rows`` that moved (:func:`_updated`). With ``max_bytes``, A's
    rows are not kept and products only while they fit (module docstring);
    ``device`` is where the full products run.
    """

    def __init__(
        self,
        spec: PermutationSpec,
        a: StateDict,
        b: StateDict,
        dtype: torch.dtype = torch.float32,
        *,
        max_bytes: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.spec, self.a, self.b, self.dtype = spec, a, b, dtype
        self.max_bytes, self.kept = max_bytes, 0
        self.device = torch.device(device) if device is not None else None
        kids = children_of(spec)
        self.direct: dict[str, list[_Term]] = {}
        self.joint: dict[tuple[str, str], list[_Term]] = {}
        for name, g in spec.groups.items():
            if g.batch_over is not None:
                continue
            self.direct[name] = self._terms(name, None, set(kids.get(name, ())))
            for kid in kids.get(name, ()):
                self.joint[name, kid] = self._terms(kid, name, set())
        terms = [t for ts in (*self.direct.values(), *self.joint.values()) for t in ts]
        keep = max_bytes is None
        self.a_rows = {id(t): self._read_a(t) for t in terms} if keep else {}
        self.cache: dict[int, _Product] = {}
        self.bases: dict[str, Tensor | None] = {}
        self.scratch: dict[tuple[str, tuple[int, ...], torch.dtype], Tensor] = {}

    def _read_a(self, term: _Term) -> Tensor:
        return _rows(self.a[term.key].to(self.dtype), term.axis, term.index)

    def _a(self, term: _Term) -> Tensor:
        """A's exposed rows of ``term``: kept, or (under ``max_bytes``) read again."""
        rows = self.a_rows.get(id(term))
        return rows if rows is not None else self._read_a(term)

    def _fits(self, value: Tensor) -> bool:
        """Whether ``value`` may be kept; counts it against ``max_bytes`` if so."""
        if self.max_bytes is None:
            return True
        size = value.numel() * value.element_size()
        if self.kept + size > self.max_bytes:
            return False
        self.kept += size
        return True

    def _terms(self, group: str, outer: str | None, skip: set[str]) -> list[_Term]:
        terms = []
        for m in self.spec.groups[group].members:
            layouts = self.spec.layouts[m.key]
            if {leaf.group for leaf in leaves(layouts[m.axis])} & skip:
                continue
            reads = {leaf.group for lay in layouts for leaf in leaves(lay)} - {group}
            index = exposure(layouts[m.axis], group, outer)
            terms.append(_Term(m.key, m.axis, index, tuple(sorted(reads))))
        return terms

    def depends_on(self, group: str) -> frozenset[str]:
        """The groups whose permutations the similarity of ``group`` reads."""
        terms = [*self.direct.get(group, ())]
        terms += [t for (outer, _), ts in self.joint.items() if outer == group for t in ts]
        terms += [t for (_, inner), ts in self.joint.items() if inner == group for t in ts]
        return frozenset(g for t in terms for g in t.reads)

    def similarity(self, group: str, perm: Mapping[str, Tensor]) -> Tensor:
        """``Σ_terms A_rows · B_rowsᵀ``: products in the working dtype, the sum in float64.

        The terms that read no permutation (the layer's own input weights, biases)
        are summed once and carried inside the first term that does, so building
        ``S_g`` costs one float64 pass per further term. The result may be a tensor
        the source keeps: read it before the next call, never modify it.
        """
        moving = [t for t in self.direct.get(group, ()) if t.reads]
        base = self._base(group)
        if not moving:
            n = self.spec.groups[group].size
            return base if base is not None else torch.zeros(n, n, dtype=torch.float64)
        first = self.product(moving[0], perm, base)
        if len(moving) == 1:
            return first
        hit = self.cache.get(id(moving[0]))
        if hit is not None and hit.value is first:  # kept: sum into a scratch tensor
            name = "sum" if self.max_bytes is not None else f"sum {group}"  # one per size will do
            out = self._scratch(name, tuple(first.shape), torch.float64)
            s = torch.add(first, self.product(moving[1], perm), out=out)
        else:  # not kept (max_bytes): ours to sum into, one product alive at a time
            s = first.add_(self.product(moving[1], perm))
        for t in moving[2:]:
            s += self.product(t, perm)
        return s

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A tensor kept for reuse: a large one would cost fresh pages at every allocation.

        Under ``max_bytes`` it counts against the bound; past it, a fresh one each time.
        """
        key = (name, shape, dtype)
        if key not in self.scratch:
            fresh = torch.empty(shape, dtype=dtype)
            if not self._fits(fresh):
                return fresh
            self.scratch[key] = fresh
        return self.scratch[key]

    def _base(self, group: str) -> Tensor | None:
        """The sum (float64) of the group's terms that read no permutation, computed once.

        ``None`` when every term reads one (nothing to add).
        """
        if group in self.bases:
            return self.bases[group]
        fixed = [t for t in self.direct.get(group, ()) if not t.reads]
        base = None
        for t in fixed:
            value = self._fixed_product(t)
            base = value if base is None else base.add_(value)
        if base is None or self._fits(base):
            self.bases[group] = base
        return base

    def _fixed_product(self, term: _Term) -> Tensor:
        """``A_rows · B_rowsᵀ`` of a term that reads no permutation.

        Under ``max_bytes`` the rows are taken as stored and converted to the working
        dtype :data:`FIXED_CHUNK` columns at a time (the partial products summed in
        float64): an embedding or output head (vocabulary × hidden) is the largest
        tensor of a language model, and two float32 copies of it cost 4x its bfloat16 size.
        """
        if self.max_bytes is None:
            return _full(self._a(term), self.b_rows(term, {}), self.device)
        ra = _rows(self.a[term.key], term.axis, term.index)
        rb = _rows(self.b[term.key], term.axis, term.index)
        total: Tensor | None = None
        for c in range(0, ra.shape[-1], FIXED_CHUNK):
            part = _full(ra[..., c : c + FIXED_CHUNK].to(self.dtype),
                         rb[..., c : c + FIXED_CHUNK].to(self.dtype), self.device)  # fmt: skip
            total = part if total is None else total.add_(part)
        return total if total is not None else torch.zeros(len(ra), len(rb), dtype=torch.float64)

    def cross(self, outer: str, inner: str, perm: Mapping[str, Tensor]) -> Tensor | None:
        """``(n, n, k, k)`` block-pair similarity, or None if no tensor shows the pair."""
        terms = self.joint.get((outer, inner))
        if not terms:
            return None
        n, k = self.spec.groups[outer].size, self.spec.groups[inner].size
        total = torch.zeros(n, n, k, k, dtype=torch.float64)
        for t in terms:
            rows_b = self.b_rows(t, perm)
            total += torch.einsum("aum,bvm->abuv", self._a(t), rows_b).double()
        return total

    def objective(self, perm: Mapping[str, Tensor]) -> float:
        return objective(self.spec, self.a, self.b, perm)

    def product(
        self, term: _Term, perm: Mapping[str, Tensor], base: Tensor | None = None
    ) -> Tensor:
        """``base + A_rows · B_rowsᵀ`` (float64) for one term, kept between calls.

        When a permutation it reads changes, only the columns of ``B_rows`` that moved
        are gathered and multiplied, unless more than :data:`FULL_PRODUCT_ABOVE` of
        them moved (or rows moved): then the product is recomputed. ``base`` is added
        when the product is (re)computed; a term always gets the same one.
        """
        perms = tuple(perm.get(g) for g in term.reads)
        hit = self.cache.get(id(term))
        if hit is not None and all(x is y for x, y in zip(hit.perms, perms)):
            return hit.value
        index = tuple(axis_index(layout, perm) for layout in self._layouts(term.key))
        a_rows = self._a(term)
        b = self.b[term.key].to(self.dtype)
        moved = None
        if hit is not None:
            moved = _moved_columns(term.axis, term.index.shape[-1], b.shape, hit.index, index)
        if hit is None or moved is None or moved.numel() > FULL_PRODUCT_ABOVE * a_rows.shape[1]:
            value = _full(a_rows, self._b_rows(b, term, perm), self.device)
            value = value if base is None else value.add_(base)
        elif moved.numel() == 0:
            value = hit.value
        else:
            old = _columns(b, term.axis, term.index, hit.index, moved)
            new = _columns(b, term.axis, term.index, index, moved)
            scratch = self._scratch("update", tuple(hit.value.shape), a_rows.dtype)
            value = _updated(hit.value, a_rows.index_select(1, moved), old, new, scratch)
        if hit is not None or self._fits(value):
            self.cache[id(term)] = _Product(perms, index, value)
        return value

    def b_rows(self, term: _Term, perm: Mapping[str, Tensor]) -> Tensor:
        return self._b_rows(self.b[term.key].to(self.dtype), term, perm)

    def _b_rows(self, b: Tensor, term: _Term, perm: Mapping[str, Tensor]) -> Tensor:
        w = permute_tensor(b, self._layouts(term.key), perm)
        return _rows(w, term.axis, term.index)

    def _layouts(self, key: str) -> tuple[Layout, ...]:
        return self.spec.layouts[self.spec.aliases.get(key, key)]


@strict("weight")
def match_weights(
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    *,
    seed: int = 0,
    restarts: int = 1,
    max_iter: int = 100,
    tol: float = 1e-12,
    rtol: float = DEFAULT_RTOL,
    solver: str = DEFAULT_SOLVER,
    dtype: torch.dtype = torch.float32,
    max_bytes: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    model: object = None,
    data: object = None,
) -> Alignment:
    """Permute B's units to best match A's weights (Git Re-Basin weight matching).

    Runs ``restarts`` descents from seeds ``seed, seed+1, ...`` (each visits the
    groups in its own random order) and keeps the highest objective
    ``Σ_W ⟨W_A, π(W_B)⟩``. Deterministic for a given seed. ``model`` and
    ``data`` are accepted for a uniform method signature and not used.
    ``max_bytes`` bounds what the similarity keeps, ``device`` is where its products
    run (:class:`WeightSource`); ``progress(task, done, total)`` hears of each group
    visited in a sweep.
    ``Alignment.profile`` holds the sweeps, assignments solved and skipped, and
    the seconds spent in similarity products and in assignments (summed over
    restarts).

    Examples
    --------
    Weight matching recovers a hidden permutation of a network exactly:
    ``alignment.perm`` carries B back into A's basis.

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import permuted_pair
    >>> _, _, spec, a, b, _ = permuted_pair()  # a small MLP and a permuted copy
    >>> alignment = mc.match_weights(spec, a, b)
    >>> alignment.method, alignment.iterations > 0
    ('weight', True)
    >>> aligned = mc.apply_permutation(b, spec, alignment.perm)
    >>> all(torch.equal(aligned[key], a[key]) for key in a)
    True
    """
    start = time.perf_counter()
    check_descent("weight", solver=solver, tol=tol, rtol=rtol, max_iter=max_iter)
    runs = []
    for r in range(max(1, restarts)):
        # fresh per restart: each is a run of its seed
        source = WeightSource(spec, a, b, dtype, max_bytes=max_bytes, device=device)
        run = _descend(source, seed + r, max_iter, tol, rtol, solver, progress)
        runs.append((source.objective(run.perm), -r, run))
    value, neg_r, best = max(runs, key=lambda run: run[:2])  # ties: the first seed
    return Alignment(
        method="weight",
        perm=best.perm,
        objective=value,
        iterations=best.sweeps,
        seconds=time.perf_counter() - start,
        seed=seed - neg_r,
        params={
            "restarts": restarts,
            "max_iter": max_iter,
            "solver": solver,
            "seed": seed,
            "tol": tol,
            "rtol": rtol,
        },  # fmt: skip
        profile=_total_profile([run for _, _, run in runs]),
    )


def _descend(
    source: WeightSource,
    seed: int,
    max_iter: int,
    tol: float,
    rtol: float,
    solver: str,
    progress: ProgressFn | None = None,
) -> Descent:
    if max_iter < 1:  # weight matching honours max_iter=0; the shared descent always sweeps once
        return Descent(identity_permutation(source.spec), 0, 0, 0, 0.0, 0.0)
    return descend(
        source.spec,
        source,
        WarmStart(solver),
        seed=seed,
        max_iter=max_iter,
        tol=tol,
        rtol=rtol,
        inner_solver=solver,
        progress=progress,
    )


def _total_profile(runs: list[Descent]) -> dict[str, float | int]:
    total: dict[str, float | int] = {}
    for run in runs:
        for key, value in run.profile().items():
            total[key] = total.get(key, 0) + value
    return total


def objective(
    spec: PermutationSpec, a: StateDict, b: StateDict, perm: Mapping[str, Tensor]
) -> float:
    """``Σ_W ⟨W_A, π(W_B)⟩`` over every floating tensor the spec permutes, in float64."""
    total = 0.0
    for key, layouts in spec.layouts.items():
        wa = a.get(key)
        if wa is None or not wa.is_floating_point():
            continue
        total += _dot(wa, permute_tensor(b[key], layouts, perm))
    return total


DOT_CHUNK = 1 << 22
"""Entries per float64 partial dot product: a whole float64 copy of an embedding would
cost 4x its bfloat16 size (0.5 GB for a 32000 x 2048 one)."""


def _dot(x: Tensor, y: Tensor) -> float:
    """``⟨x, y⟩`` in float64, :data:`DOT_CHUNK` entries at a time (one chunk: one dot)."""
    x, y = x.reshape(-1), y.reshape(-1)
    return sum(
        float(torch.dot(x[i : i + DOT_CHUNK].double(), y[i : i + DOT_CHUNK].double()))
        for i in range(0, len(x), DOT_CHUNK)
    )


__all__ = ["DEFAULT_RTOL", "WeightSource", "match_weights", "objective", "Member"]
