"""Axis variables: union-find over tensor dimensions, with concat, product and shuffle definitions.

Every dimension of every tensor in the graph is a variable. Two variables that an
op relates (a residual ``add``, a layer's input and the tensor feeding it) are
unioned: they must carry the same permutation. A variable may also be *defined*
in terms of others:

* ``CAT``: a concatenation of parts (``torch.cat``, ``split``, ``slice``);
* ``PROD``: a row-major product of factors (``view``/``reshape``: heads × head dim);
* ``SHUFFLE``: another variable's positions in a fixed order (a channel shuffle).

A variable may be *frozen* (fixed to the identity) with a reason; freezing reaches
every part or factor of a frozen variable. Definitions that meet are reconciled:
two products or two concatenations are refined to common atoms, a product cut into
parts at multiples of its inner size becomes a product of a concatenation, a
shuffle cut into parts is split into runs of its inner positions; anything else
freezes both sides, which is always sound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PROD, CAT, SHUFFLE = "product", "concat", "shuffle"


@dataclass(frozen=True)
class Definition:
    """``kind`` of ``parts``; a shuffle has one part and its ``order`` (position i holds
    the part's position ``order[i]``)."""

    kind: str
    parts: tuple[int, ...]
    order: tuple[int, ...] = ()


class AxisVars:
    """Axis variables with union-find, freezing, and concat/product/shuffle definitions."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[str | None] = []  # reason, on roots
        self.active: list[bool] = []  # touches an activation (not parameter-only)
        self.mixed: list[bool] = []  # some op mixes values along this axis
        self.defs: dict[int, Definition] = {}

    def new(self, size: int, *, active: bool = True, frozen: str | None = None) -> int:
        v = len(self.parent)
        self.parent.append(v)
        self.size.append(size)
        self.frozen.append(frozen if frozen is not None else (None if size != 1 else "size 1"))
        self.active.append(active)
        self.mixed.append(False)
        return v

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def definition(self, v: int) -> Definition | None:
        return self.defs.get(self.find(v))

    def mix(self, v: int) -> None:
        """Record that an op mixes values along ``v`` (a layer's input, a reduction)."""
        self.mixed[self.find(v)] = True

    def union(self, a: int, b: int, why: str = "") -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            mismatch = f"{why}: sizes {self.size[ra]} and {self.size[rb]} do not match"
            self.freeze(ra, mismatch)
            self.freeze(rb, mismatch)
            return
        self.parent[rb] = ra
        self.active[ra] = self.active[ra] or self.active[rb]
        self.mixed[ra] = self.mixed[ra] or self.mixed[rb]
        reason = self.frozen[ra] or self.frozen[rb]
        da, db = self.defs.pop(ra, None), self.defs.pop(rb, None)
        if da is not None and db is not None:
            self._meet(ra, da, db, why)
        elif da is not None:
            self.defs[ra] = da
        elif db is not None:
            self.defs[ra] = db
        if reason:
            self.freeze(ra, reason)

    def freeze(self, v: int, reason: str) -> None:
        """Fix ``v``'s class to the identity, and with it every factor or part of it."""
        stack, seen = [v], set()
        while stack:
            r = self.find(stack.pop())
            if r in seen:
                continue
            seen.add(r)
            if self.frozen[r] is None:
                self.frozen[r] = reason
            d = self.defs.get(r)
            if d is not None:
                stack.extend(d.parts)

    def freeze_all(self, vs: Sequence[int], reason: str) -> None:
        for v in vs:
            self.freeze(v, reason)

    def define(self, v: int, kind: str, parts: Sequence[int], why: str) -> None:
        """Declare ``v`` to be the concatenation or product of ``parts``."""
        parts = [p for p in parts if kind == CAT or self.size[p] != 1]
        if len(parts) == 1:
            self.union(v, parts[0], why)
            return
        self._set(v, Definition(kind, tuple(parts)), why)

    def define_shuffle(self, v: int, inner: int, order: Sequence[int], why: str) -> None:
        """Declare ``v`` to hold ``inner``'s positions in ``order``."""
        if list(order) == list(range(len(order))):
            self.union(v, inner, why)
            return
        self._set(v, Definition(SHUFFLE, (inner,), tuple(order)), why)

    def _set(self, v: int, new: Definition, why: str) -> None:
        r = self.find(v)
        existing = self.defs.pop(r, None)
        if existing is None:
            self.defs[r] = new
        else:
            self._meet(r, existing, new, why)
        r = self.find(r)
        if self.frozen[r] is not None:
            self.freeze(r, self.frozen[r] or why)

    def _meet(self, r: int, a: Definition, b: Definition, why: str) -> None:
        """Reconcile two definitions of the root ``r`` (which holds neither yet)."""
        kinds = {a.kind, b.kind}
        if a.kind == b.kind and a.kind != SHUFFLE:
            self.defs[r] = a
            self.unify_sequences(a.kind, a.parts, b.parts, why)
        elif a.kind == b.kind:
            self.defs[r] = a
            if a.order == b.order:
                self.union(a.parts[0], b.parts[0], why)
            else:
                self.freeze_all([r, *a.parts, *b.parts], f"{why}: two different shuffles meet")
        elif kinds == {CAT, PROD}:
            prod, cat = (a, b) if a.kind == PROD else (b, a)
            self.defs[r] = prod
            self._cut_product(r, prod, cat, why)
        elif kinds == {CAT, SHUFFLE}:
            shuffle, cat = (a, b) if a.kind == SHUFFLE else (b, a)
            self.defs[r] = shuffle
            self._cut_shuffle(shuffle, cat, why)
        else:
            self.defs[r] = a
            self.freeze_all([r, *a.parts, *b.parts], f"{why}: a shuffled axis is reshaped")

    def _cut_product(self, r: int, prod: Definition, cat: Definition, why: str) -> None:
        """``PROD[f0, rest] = CAT[p0, p1, ...]``: cuts at multiples of ``|rest|`` cut ``f0``.

        Then ``f0 = CAT[a0, a1, ...]`` and each ``p_i = PROD[a_i, rest]``; any other cut
        splits a block of ``f0`` and freezes both sides.
        """
        factors = self._flat(PROD, prod.parts)
        parts = [p for p in self._flat(CAT, cat.parts) if self.size[p] > 0]
        stride = self.size[r] // self.size[factors[0]]
        if any(self.size[p] % stride for p in parts):
            self.freeze_all([r, *factors, *parts], f"{why}: a concatenated axis is reshaped")
            return
        pieces = [self.new(self.size[p] // stride) for p in parts]
        self.define(factors[0], CAT, pieces, why)
        for part, piece in zip(parts, pieces):
            self.define(part, PROD, [piece, *factors[1:]], why)

    def _cut_shuffle(self, shuffle: Definition, cat: Definition, why: str) -> None:
        """``SHUFFLE(inner, order) = CAT[p0, p1, ...]``: split ``inner`` into runs by part.

        Each maximal run of inner positions that lands in one part becomes an atom;
        ``inner`` is the concatenation of the atoms, and each part holds its atoms in
        its own (possibly shuffled) order.
        """
        inner, order = shuffle.parts[0], shuffle.order
        parts = [p for p in self._flat(CAT, cat.parts) if self.size[p] > 0]
        owner = [0] * len(order)
        bounds, start = [], 0
        for k, p in enumerate(parts):
            for i in range(start, start + self.size[p]):
                owner[order[i]] = k
            bounds.append((start, start + self.size[p]))
            start += self.size[p]
        runs: list[tuple[int, int, int]] = []  # (first inner position, length, part)
        for pos, k in enumerate(owner):
            if runs and runs[-1][2] == k and runs[-1][0] + runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, k)
            else:
                runs.append((pos, 1, k))
        atoms = [self.new(n) for _, n, _ in runs]
        self.define(inner, CAT, atoms, why)
        for k, (lo, hi) in enumerate(bounds):
            mine = [a for a, run in zip(atoms, runs) if run[2] == k]
            positions = sorted(order[lo:hi])
            rank = {p: i for i, p in enumerate(positions)}
            local = [rank[order[i]] for i in range(lo, hi)]
            whole = self.new(hi - lo)
            self.define(whole, CAT, mine, why)
            self.define_shuffle(parts[k], whole, local, why)

    def _flat(self, kind: str, vs: Sequence[int]) -> list[int]:
        out: list[int] = []
        for v in vs:
            d = self.defs.get(self.find(v))
            if d is not None and d.kind == kind:
                out.extend(self._flat(kind, d.parts))
            elif kind == CAT or self.size[v] != 1:
                out.append(v)
        return out

    def unify_sequences(self, kind: str, xs: Sequence[int], ys: Sequence[int], why: str) -> None:
        """Relate two factorizations (product) or splittings (concat) of one axis.

        Both sides are refined to common atoms: for products the atom sizes
        come from greatest common divisors (``[2, 12]`` and ``[6, 4]`` share
        ``[2, 3, 4]``), for concatenations from the union of the cut points.
        Each variable is then defined as the product/concat of its atoms. Two
        factorizations with no common refinement (``[2, 3]`` against ``[3, 2]``,
        a reshape that really mixes dimensions) freeze both sides.
        """
        xs, ys = self._flat(kind, xs), self._flat(kind, ys)
        if kind == CAT:
            xs = [x for x in xs if self.size[x] > 0]
            ys = [y for y in ys if self.size[y] > 0]
        step = math.gcd if kind == PROD else min
        unit = 1 if kind == PROD else 0
        atoms_x: list[list[int]] = [[] for _ in xs]
        atoms_y: list[list[int]] = [[] for _ in ys]
        i = j = 0
        rx = self.size[xs[0]] if xs else 0
        ry = self.size[ys[0]] if ys else 0
        while i < len(xs) and j < len(ys):
            g = step(rx, ry)
            if g <= unit:
                self.freeze_all([*xs, *ys], f"{why}: reshape mixes dimensions")
                return
            atom = self.new(g)
            atoms_x[i].append(atom)
            atoms_y[j].append(atom)
            rx, ry = (rx // g, ry // g) if kind == PROD else (rx - g, ry - g)
            if rx == unit:
                i += 1
                rx = self.size[xs[i]] if i < len(xs) else 0
            if ry == unit:
                j += 1
                ry = self.size[ys[j]] if j < len(ys) else 0
        if i < len(xs) or j < len(ys):
            self.freeze_all([*xs, *ys], f"{why}: shapes do not factor")
            return
        for v, atoms in [*zip(xs, atoms_x), *zip(ys, atoms_y)]:
            self.define(v, kind, atoms, why)
