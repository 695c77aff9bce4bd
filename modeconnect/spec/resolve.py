"""From axis variables to a :class:`~modeconnect.spec.permutations.PermutationSpec`.

After the pass over the graph, every free class of variables that reaches a
parameter axis becomes a permutation group (``P0``, ``P1``, ... in the order the
parameters come). Each parameter axis gets a layout tree over those groups; each
axis a layer reads gets an activation site.

A group is *batched* over an outer group (one permutation per block: per attention
head, per key/value head, per GroupNorm group) when every place it occurs has that
outer group's coordinate at each of its positions, and no op mixes values across
the outer group's blocks: on a parameter axis the outer group must be an earlier
factor of an enclosing product (heads × head dim); in an activation it may also be
a factor of another dim of the same tensor (``(batch, heads, tokens, head dim)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .context import Dims
from .permutations import (
    ActivationSite,
    Concat,
    Fixed,
    FixedAxis,
    Layout,
    Leaf,
    Member,
    PermGroup,
    PermutationSpec,
    Product,
    Shuffle,
    leaves,
)
from .unionfind import CAT, PROD, SHUFFLE, AxisVars

NEVER_ACTIVE = "parameter axis that never meets an activation"


class Resolver:
    """Names groups and builds layouts from the variables of a finished pass."""

    def __init__(self, vs: AxisVars) -> None:
        self.vs = vs
        self.names: dict[int, str] = {}  # leaf root -> group name
        self.over: dict[int, int] = {}  # batched leaf root -> outer leaf root

    def layout(self, v: int, create: bool = True) -> Layout:
        """The layout of ``v``; new leaves get the next group name (or, with
        ``create=False``, count as fixed: they reach no parameter)."""
        vs = self.vs
        r = vs.find(v)
        if vs.frozen[r] is not None:
            return Fixed(vs.size[r])
        d = vs.defs.get(r)
        if d is None:
            if r not in self.names and not create:
                return Fixed(vs.size[r])
            name = self.names.setdefault(r, f"P{len(self.names)}")
            outer = self.over.get(r)
            return Leaf(name, vs.size[r], self.names[outer] if outer is not None else None)
        children = [self.layout(c, create) for c in d.parts]
        if all(isinstance(c, Fixed) for c in children):
            return Fixed(vs.size[r])
        if d.kind == SHUFFLE:
            return Shuffle(children[0], d.order)
        if d.kind == CAT:  # nested concatenations and products are spliced into one
            return Concat(tuple(p for c in children for p in _parts(c, Concat)))
        return Product(tuple(f for c in children for f in _parts(c, Product)))

    def leaf_roots(self, v: int) -> list[int]:
        r = self.vs.find(v)
        if self.vs.frozen[r] is not None:
            return []
        d = self.vs.defs.get(r)
        if d is None:
            return [r]
        return [x for c in d.parts for x in self.leaf_roots(c)]

    def reason(self, v: int) -> str:
        """Why an axis ended up fixed: its own reason, or the first of its parts'."""
        vs = self.vs
        r = vs.find(v)
        if vs.frozen[r] is not None and vs.frozen[r] != "size 1":
            return vs.frozen[r] or ""
        d = vs.defs.get(r)
        for c in d.parts if d is not None else ():
            if vs.size[c] > 1 and (vs.frozen[vs.find(c)] is not None or vs.find(c) in vs.defs):
                return self.reason(c)
        return vs.frozen[r] or "fixed"

    def fixed_parts(self, v: int) -> list[tuple[int, str]]:
        """The largest fixed parts (size > 1) inside a partly free axis: (size, reason)."""
        vs = self.vs
        r = vs.find(v)
        if vs.frozen[r] is not None:
            return [(vs.size[r], self.reason(r))] if vs.size[r] > 1 else []
        d = vs.defs.get(r)
        return [p for c in d.parts for p in self.fixed_parts(c)] if d is not None else []

    # ------------------------------------------------------------------ batched groups

    def find_batched(self, params: Mapping[str, Dims], activations: Iterable[Dims]) -> None:
        """Decide which leaves carry one permutation per block of an outer leaf."""
        self._candidates: dict[int, set[int]] = {}
        for axes in params.values():
            for v in axes:
                self._walk(v, set())
        for tensor in activations:
            whole = [self._always(v) for v in tensor]
            for i, v in enumerate(tensor):
                others = set().union(*(w for j, w in enumerate(whole) if j != i))
                self._walk(v, others)
        inner = {c for c, cands in self._candidates.items() if cands}
        for c, cands in self._candidates.items():
            usable = sorted(o for o in cands if not self.vs.mixed[o] and o not in inner)
            if usable:
                self.over[c] = usable[-1]

    def _seen(self, leaf: int, context: set[int]) -> None:
        """Keep, for each leaf, the outer leaves present at every place it occurs."""
        known = self._candidates.get(leaf)
        self._candidates[leaf] = set(context) if known is None else known & context

    def _walk(self, v: int, context: set[int]) -> None:
        vs = self.vs
        r = vs.find(v)
        if vs.frozen[r] is not None:
            return
        d = vs.defs.get(r)
        if d is None:
            if r in self.names:
                self._seen(r, context - {r})
            return
        if d.kind != PROD:
            for c in d.parts:
                self._walk(c, context)
            return
        earlier = set(context)
        for c in d.parts:
            self._walk(c, earlier)
            earlier |= self._always(c)

    def _always(self, v: int) -> set[int]:
        """Named leaves with a coordinate at every position of ``v`` (products of leaves)."""
        vs = self.vs
        r = vs.find(v)
        if vs.frozen[r] is not None:
            return set()
        d = vs.defs.get(r)
        if d is None:
            return {r} if r in self.names else set()
        if d.kind != PROD:
            return set()
        return set().union(*(self._always(c) for c in d.parts))


def _parts(layout: Layout, kind: type) -> tuple[Layout, ...]:
    if kind is Concat and isinstance(layout, Concat):
        return layout.parts
    if kind is Product and isinstance(layout, Product):
        return layout.factors
    return (layout,)


def resolve(
    vs: AxisVars,
    params: Mapping[str, Dims],
    env: Mapping[str, Any],
    reads: Sequence[tuple[str, int]],
    aliases: Mapping[str, str],
    outputs: Mapping[str, tuple[int, ...]],
) -> PermutationSpec:
    """The spec: groups, a layout per parameter axis, fixed axes, weight output axes and
    activation sites (``reads``: the (node, dim) pairs that layers read)."""
    for axes in params.values():
        for v in axes:
            r = vs.find(v)
            if not vs.active[r] and r not in vs.defs:
                vs.freeze(r, NEVER_ACTIVE)
    for r in list(vs.defs):  # freezing reaches factors of frozen axes
        if vs.find(r) == r and vs.frozen[r] is not None:
            vs.freeze(r, vs.frozen[r] or "")
    res = Resolver(vs)
    for axes in params.values():  # name the groups in parameter order
        for v in axes:
            res.layout(v)
    res.find_batched(params, _tensors(env))
    layouts: dict[str, tuple[Layout, ...]] = {}
    members: dict[int, list[Member]] = {}
    fixed: list[FixedAxis] = []
    for key, axes in params.items():
        layouts[key] = tuple(res.layout(v) for v in axes)
        for axis, v in enumerate(axes):
            for root in dict.fromkeys(vs.find(x) for x in res.leaf_roots(v)):
                members.setdefault(root, []).append(Member(key, axis))
            fixed += _fixed_axes(res, key, axis, v, layouts[key][axis])
    groups = {
        name: PermGroup(name, vs.size[r], tuple(members.get(r, ())),
                        res.names[res.over[r]] if r in res.over else None)
        for r, name in res.names.items()
    }  # fmt: skip
    return PermutationSpec(
        groups, layouts, tuple(fixed), dict(aliases), _sites(res, env, reads), dict(outputs)
    )


def _tensors(env: Mapping[str, Any]) -> list[Dims]:
    """Every tensor's variables in the pass (ops with several outputs give several)."""
    out: list[Dims] = []
    for value in env.values():
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            out.append(value)
        elif isinstance(value, list):
            out += [t for t in value if isinstance(t, list) and all(isinstance(v, int) for v in t)]
    return out


def _fixed_axes(res: Resolver, key: str, axis: int, v: int, layout: Layout) -> list[FixedAxis]:
    size = res.vs.size[v]
    if isinstance(layout, Fixed):
        return [FixedAxis(key, axis, size, res.reason(v))] if size > 1 else []
    sizes: dict[str, int] = {}
    for n, why in res.fixed_parts(v):
        sizes[why] = sizes.get(why, 0) + n
    return [FixedAxis(key, axis, n, why, partial=True) for why, n in sizes.items()]


def _sites(
    res: Resolver, env: Mapping[str, Any], reads: Sequence[tuple[str, int]]
) -> dict[str, tuple[ActivationSite, ...]]:
    """For each group, the activations that layers read along an axis carrying the group."""
    by_group: dict[str, list[ActivationSite]] = {}
    for node, dim in dict.fromkeys(reads):
        tensor = env.get(node)
        if not isinstance(tensor, list) or dim >= len(tensor) or not isinstance(tensor[dim], int):
            continue
        layout = res.layout(tensor[dim], create=False)
        for group in dict.fromkeys(lf.group for lf in leaves(layout)):
            by_group.setdefault(group, []).append(ActivationSite(node, dim, layout))
    return {g: tuple(v) for g, v in by_group.items()}
