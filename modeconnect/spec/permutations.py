"""Permutation specs: which tensor axes share a neuron permutation, and how.

A :class:`PermutationSpec` names the permutation *groups* of a model and, for
every state-dict tensor, the :data:`Layout` of each of its axes in terms of
those groups. A layout is a small tree:

* ``Fixed(n)``: the axis is never permuted (model inputs and outputs, kernel
  taps, vocabulary, anything the analysis could not prove safe).
* ``Leaf(group)``: the axis is permuted by one group.
* ``Concat(parts)``: the axis is a concatenation; each part is permuted on its
  own (``torch.cat`` of two feature maps, the q/k/v rows of a fused projection).
* ``Product(factors)``: the axis is a row-major flattening of several factors
  (heads × head dim, channels × spatial positions after ``Flatten``, GroupNorm
  groups × channels per group).
* ``Shuffle(inner, order)``: the axis holds the positions of ``inner`` in a fixed
  order (a channel shuffle: position ``i`` holds ``inner``'s position ``order[i]``).

A group whose :attr:`PermGroup.batch_over` names another group has one
permutation *per element* of that outer group (each attention head or
GroupNorm group carries its own inner permutation); its permutation tensor
then has shape ``(outer size, size)``, and its leaves name the outer group
(``Leaf.over``), which encloses them as an earlier factor of a product.

The spec is derived from the model's graph by :func:`modeconnect.spec.derive_spec`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from ..errors import ModeconnectError


@dataclass(frozen=True)
class Fixed:
    """An axis (or part of one) of ``size`` positions that is never permuted."""

    size: int


@dataclass(frozen=True)
class Leaf:
    """An axis (or part of one) permuted by the group named ``group``.

    ``over`` names the outer group when ``group`` has one permutation per block of it.
    """

    group: str
    size: int
    over: str | None = None


@dataclass(frozen=True)
class Concat:
    """An axis made of consecutive parts, each permuted on its own."""

    parts: tuple[Layout, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(frozen=True)
class Product:
    """An axis that is the row-major flattening of ``factors`` (first factor outermost)."""

    factors: tuple[Layout, ...]

    @property
    def size(self) -> int:
        n = 1
        for f in self.factors:
            n *= f.size
        return n


@dataclass(frozen=True)
class Shuffle:
    """An axis that holds ``inner``'s positions in a fixed order: position ``i`` is
    ``inner``'s position ``order[i]`` (ShuffleNet's channel shuffle)."""

    inner: Layout
    order: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.order)


Layout = Fixed | Leaf | Concat | Product | Shuffle


@dataclass(frozen=True)
class Member:
    """One place a group appears: ``key``'s axis ``axis``, whose layout contains the group."""

    key: str
    axis: int


@dataclass(frozen=True)
class PermGroup:
    """A set of axes that must be permuted together.

    ``batch_over`` names the outer group when every block of that group carries
    its own permutation of this one (heads, GroupNorm groups).
    """

    name: str
    size: int
    members: tuple[Member, ...]
    batch_over: str | None = None


@dataclass(frozen=True)
class FixedAxis:
    """An axis the analysis left unpermuted, with the operation that fixed it.

    ``partial`` marks an axis fixed only in part (RoPE's dims inside a heads × dims
    product); ``size`` then counts the fixed positions of that part.
    """

    key: str
    axis: int
    size: int
    reason: str
    partial: bool = False


@dataclass(frozen=True)
class ActivationSite:
    """An activation a layer reads: node ``node``'s output along ``dim``, laid out as ``layout``.

    Activation-based methods observe a group's units here (Git Re-Basin
    activation matching, OT fusion with activation costs, REPAIR).
    """

    node: str
    dim: int
    layout: Layout


@dataclass(frozen=True)
class PermutationSpec:
    """Groups, and the layout of every axis of every state-dict tensor.

    ``aliases`` maps a state-dict key to the key whose tensor it shares (tied
    weights); aliases are permuted exactly as their source. ``sites`` lists, per
    group, where layers read its units in the traced graph (activation matching).
    ``weight_outputs`` maps each weight (a tensor some op uses as its weights) to its
    output-feature axes: a Linear's rows, an Embedding's columns (both for an embedding
    tied to an output head).
    """

    groups: Mapping[str, PermGroup]
    layouts: Mapping[str, tuple[Layout, ...]]
    fixed: tuple[FixedAxis, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    sites: Mapping[str, tuple[ActivationSite, ...]] = field(default_factory=dict)
    weight_outputs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything in the spec as JSON-ready data; :meth:`from_dict` reads it back exactly."""
        return spec_to_dict(self)

    @staticmethod
    def from_dict(data: Any) -> PermutationSpec:
        """A spec from :meth:`to_dict`'s data, checked as untrusted input.

        Raises :class:`~modeconnect.ModeconnectError` on anything malformed or
        inconsistent (unknown groups, sizes that do not add up, orders that are not
        permutations).
        """
        return spec_from_dict(data)

    def group_sizes(self) -> dict[str, int]:
        return {name: g.size for name, g in self.groups.items()}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: groups with their members, and the fixed axes."""
        return {
            "groups": [
                {
                    "name": g.name,
                    "size": g.size,
                    "batch_over": g.batch_over,
                    "members": [[m.key, m.axis] for m in g.members],
                }
                for g in self.groups.values()
            ],
            "fixed": [
                {
                    "key": f.key,
                    "axis": f.axis,
                    "size": f.size,
                    "reason": f.reason,
                    "partial": f.partial,
                }
                for f in self.fixed
            ],
            "aliases": dict(self.aliases),
        }


Permutation = dict[str, torch.Tensor]
"""One index tensor per group: ``perm[g][i]`` is the old unit placed at new position ``i``.

Batched groups hold a ``(outer size, size)`` tensor, row ``a`` for the new block ``a``.
"""


def leaves(layout: Layout) -> Iterator[Leaf]:
    """All leaves of a layout, left to right."""
    if isinstance(layout, Leaf):
        yield layout
    elif isinstance(layout, Shuffle):
        yield from leaves(layout.inner)
    elif isinstance(layout, (Concat, Product)):
        for child in layout.parts if isinstance(layout, Concat) else layout.factors:
            yield from leaves(child)


def axis_index(layout: Layout, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The gather index that applies ``perm`` to an axis with this layout.

    ``permuted = tensor.index_select(axis, axis_index(layout, perm))``.
    Groups missing from ``perm`` are left as they are.
    """
    return _rows(layout, perm, {}, 1)[0]


def _rows(
    layout: Layout, perm: Mapping[str, torch.Tensor], outer: Mapping[str, torch.Tensor], n: int
) -> torch.Tensor:
    """The gather index of a sub-axis for each of ``n`` enclosing positions: ``(n, size)``.

    ``outer[g]`` holds, for each enclosing position, the new coordinate of group ``g``
    there; a batched leaf takes its row of the permutation from its outer group's
    coordinate (new block ``a`` holds row ``a``).
    """
    if isinstance(layout, Leaf):
        p = perm.get(layout.group)
        if p is None:
            return torch.arange(layout.size).expand(n, layout.size)
        if p.dim() == 1:
            return p.expand(n, layout.size)
        over = layout.over if layout.over is not None else _PREVIOUS
        if over not in outer:
            raise ModeconnectError(
                f"axis_index: group {layout.group} has one permutation per block of "
                f"{layout.over}, but the layout does not enclose it in {layout.over}; "
                "derive the spec again"
            )
        return p[outer[over]]
    if isinstance(layout, Concat):
        out, offset = [], 0
        for part in layout.parts:
            out.append(_rows(part, perm, outer, n) + offset)
            offset += part.size
        return torch.cat(out, dim=1)
    if isinstance(layout, Product):
        return _product_rows(layout, perm, outer, n)
    if isinstance(layout, Shuffle):
        order = torch.tensor(layout.order, dtype=torch.long)
        inner = _rows(layout.inner, perm, outer, n)
        # position i holds inner position order[i]: new i reads inner's new order[i],
        # which is inner's old position inner[order[i]], found at argsort(order) of it.
        return torch.argsort(order)[inner[:, order]]
    return torch.arange(layout.size).expand(n, layout.size)


def _product_rows(
    layout: Product, perm: Mapping[str, torch.Tensor], outer: Mapping[str, torch.Tensor], n: int
) -> torch.Tensor:
    # Row-major flattening: index = ((i0 * n1) + i1) * n2 + i2 ... over ``rows``
    # prefixes (enclosing position, earlier factors); each step records the new
    # coordinate of a leaf factor for the batched factors after it.
    idx = torch.zeros(n, dtype=torch.long)
    coords = dict(outer)
    for factor in layout.factors:
        size, rows = factor.size, idx.numel()
        sub = _rows(factor, perm, coords, rows)
        idx = (idx[:, None] * size + sub).reshape(-1)
        coords = {g: c.repeat_interleave(size) for g, c in coords.items() if g != _PREVIOUS}
        if isinstance(factor, Leaf):
            coords[factor.group] = coords[_PREVIOUS] = torch.arange(size).repeat(rows)
    return idx.reshape(n, layout.size)


_PREVIOUS = ""
"""Where a batched leaf without ``over`` finds its block: the factor just before it
(the convention of hand-written specs)."""


def apply_permutation(
    state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, perm: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Permute every tensor of ``state_dict`` by ``perm``, by indexing (exact, no products).

    Keys the spec does not know are copied unchanged. The input is never modified.

    Examples
    --------
    A permuted network computes the same function with different weights:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> x = torch.randn(5, 4)
    >>> spec = mc.derive_spec(model, (x,))
    >>> perm = mc.random_permutation(spec, seed=1)
    >>> permuted = mc.apply_permutation(model.state_dict(), spec, perm)
    >>> torch.equal(permuted["1.weight"], model.state_dict()["1.weight"])
    False
    >>> twin = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> twin.load_state_dict(permuted)
    <All keys matched successfully>
    >>> torch.allclose(twin(x), model(x), atol=1e-6)
    True
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        layouts = spec.layouts.get(spec.aliases.get(key, key))
        out[key] = tensor if layouts is None else permute_tensor(tensor, layouts, perm)
    return out


def permute_tensor(
    tensor: torch.Tensor, layouts: tuple[Layout, ...], perm: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Apply ``perm`` to each axis of one tensor according to its layouts."""
    for axis, layout in enumerate(layouts):
        if any(leaf.group in perm for leaf in leaves(layout)):
            tensor = tensor.index_select(axis, axis_index(layout, perm).to(tensor.device))
    return tensor


def identity_permutation(spec: PermutationSpec) -> Permutation:
    """The permutation that changes nothing."""
    perm: Permutation = {}
    for name, g in spec.groups.items():
        if g.batch_over is None:
            perm[name] = torch.arange(g.size)
        else:
            outer = spec.groups[g.batch_over].size
            perm[name] = torch.arange(g.size).repeat(outer, 1)
    return perm


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """A uniformly random permutation of every group (each block on its own for batched groups).

    Examples
    --------
    One index tensor per group, the same for the same ``seed``:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> spec = mc.derive_spec(model, (torch.randn(2, 4),))
    >>> perm = mc.random_permutation(spec, seed=0)
    >>> {name: tuple(p.shape) for name, p in perm.items()}
    {'P0': (8,), 'P1': (8,)}
    >>> sorted(perm["P0"].tolist()) == list(range(8))
    True
    >>> torch.equal(perm["P0"], mc.random_permutation(spec, seed=0)["P0"])
    True
    """
    gen = torch.Generator().manual_seed(seed)
    perm: Permutation = {}
    for name, g in spec.groups.items():
        if g.batch_over is None:
            perm[name] = torch.randperm(g.size, generator=gen)
        else:
            outer = spec.groups[g.batch_over].size
            perm[name] = torch.stack([torch.randperm(g.size, generator=gen) for _ in range(outer)])
    return perm


def invert_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The permutation that undoes ``perm``.

    For a batched group, new block ``a`` holds old block ``outer[a]`` with inner
    order ``p[a]``; the inverse places old block ``b = outer[a]`` back at ``b``
    with inner order ``argsort(p[a])``.

    Examples
    --------
    >>> import torch
    >>> from modeconnect.models import mlp
    >>> from modeconnect.spec import derive_spec, invert_permutation, random_permutation
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> spec = derive_spec(model, (torch.randn(2, 4),))
    >>> perm = random_permutation(spec, seed=0)
    >>> inverse = invert_permutation(spec, perm)
    >>> torch.equal(perm["P0"][inverse["P0"]], torch.arange(8))
    True
    """
    inv: Permutation = {name: torch.argsort(p) for name, p in perm.items() if p.dim() == 1}
    for name, p in perm.items():
        if p.dim() == 2:
            outer = spec.groups[name].batch_over
            o = perm[outer] if outer is not None and outer in perm else torch.arange(p.shape[0])
            rows = torch.empty_like(p)
            rows[o] = torch.argsort(p, dim=1)
            inv[name] = rows
    return inv


def coordinates(layout: Layout, group: str) -> torch.Tensor:
    """For each position of an axis, the coordinate of ``group`` there (``-1`` where absent)."""
    if isinstance(layout, Fixed):
        return torch.full((layout.size,), -1, dtype=torch.long)
    if isinstance(layout, Leaf):
        if layout.group == group:
            return torch.arange(layout.size)
        return torch.full((layout.size,), -1, dtype=torch.long)
    if isinstance(layout, Concat):
        return torch.cat([coordinates(p, group) for p in layout.parts])
    if isinstance(layout, Shuffle):
        return coordinates(layout.inner, group)[torch.tensor(layout.order, dtype=torch.long)]
    out = torch.full((layout.size,), -1, dtype=torch.long)
    pos = torch.arange(layout.size)
    stride = layout.size
    for factor in layout.factors:
        stride //= factor.size
        sub = coordinates(factor, group)
        hit = sub[(pos // stride) % factor.size]
        out = torch.where(hit >= 0, hit, out)
    return out


def exposure(layout: Layout, group: str, outer: str | None = None) -> torch.Tensor:
    """Gather positions grouped by ``group``'s coordinate: shape ``(n, m)``.

    Row ``u`` lists, in axis order, the ``m`` positions where ``group`` has
    coordinate ``u``; the same column means the same "rest" coordinate in every
    row, so ``W.index_select(axis, idx.flatten())`` reshaped to ``(n, m, ...)``
    lines up the units of two models. With ``outer``, positions are grouped by
    ``(outer coordinate, group coordinate)`` and the shape is ``(n_outer, n, m)``.
    """
    c = coordinates(layout, group)
    n = int(c.max()) + 1
    if outer is None:
        order = torch.argsort(c * layout.size + torch.arange(layout.size), stable=True)
        order = order[c[order] >= 0]
        return order.reshape(n, -1)
    co = coordinates(layout, outer)
    n_outer = int(co.max()) + 1
    key = (co * n + c) * layout.size + torch.arange(layout.size)
    order = torch.argsort(key, stable=True)
    order = order[(c[order] >= 0) & (co[order] >= 0)]
    return order.reshape(n_outer, n, -1)


# --------------------------------------------------------------------------- as data
#
# A spec as JSON-ready data, and back: an exact round trip, checked on the way in.
# Spec data read back (a cache file) is untrusted: it is only ever parsed as data, and
# spec_from_dict checks every field's type, every size, that each leaf names a group of
# its size (and that group's outer group), that shuffle orders are permutations, and
# that members, aliases and sites refer to what exists. Anything else raises
# ModeconnectError. Layouts are nested lists: ["fixed", n], ["leaf", group, n, outer],
# ["concat", [parts]], ["product", [factors]], ["shuffle", inner, order].


FORMAT = 1
_MAX_DEPTH = 32


def spec_to_dict(spec: PermutationSpec) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "groups": [
            [g.name, g.size, g.batch_over, [[m.key, m.axis] for m in g.members]]
            for g in spec.groups.values()
        ],
        "layouts": {key: [layout_to_data(a) for a in axes] for key, axes in spec.layouts.items()},
        "fixed": [[f.key, f.axis, f.size, f.reason, f.partial] for f in spec.fixed],
        "aliases": dict(spec.aliases),
        "sites": {
            group: [[s.node, s.dim, layout_to_data(s.layout)] for s in sites]
            for group, sites in spec.sites.items()
        },
        "weight_outputs": {key: list(axes) for key, axes in spec.weight_outputs.items()},
    }


def layout_to_data(layout: Layout) -> list[Any]:
    if isinstance(layout, Fixed):
        return ["fixed", layout.size]
    if isinstance(layout, Leaf):
        return ["leaf", layout.group, layout.size, layout.over]
    if isinstance(layout, Concat):
        return ["concat", [layout_to_data(p) for p in layout.parts]]
    if isinstance(layout, Product):
        return ["product", [layout_to_data(f) for f in layout.factors]]
    return ["shuffle", layout_to_data(layout.inner), list(layout.order)]


def spec_from_dict(data: Any) -> PermutationSpec:
    """The spec ``data`` describes; raises :class:`ModeconnectError` if it is malformed."""
    root = _mapping(data, "spec")
    if root.get("format") != FORMAT:
        _fail(f"format {root.get('format')!r} is not {FORMAT}")
    groups = {}
    for item in _list(root.get("groups"), "groups"):
        name, size, outer, members = _fields(item, 4, "group")
        g = PermGroup(_str(name, "group name"), _count(size, "group size"),
                      tuple(_member(m) for m in _list(members, "members")),
                      None if outer is None else _str(outer, "outer group"))  # fmt: skip
        if g.name in groups:
            _fail(f"group {g.name!r} appears twice")
        groups[g.name] = g
    layouts = {
        _str(key, "key"): tuple(layout_from_data(a, groups) for a in _list(axes, "axes"))
        for key, axes in _mapping(root.get("layouts"), "layouts").items()
    }
    aliases = _mapping(root.get("aliases"), "aliases")
    sites = _mapping(root.get("sites"), "sites")
    outputs = _mapping(root.get("weight_outputs"), "weight_outputs")
    spec = PermutationSpec(
        groups,
        layouts,
        tuple(_fixed(f) for f in _list(root.get("fixed"), "fixed")),
        {_str(k, "alias"): _str(v, "alias") for k, v in aliases.items()},
        {g: tuple(_site(s, groups) for s in _list(v, "sites")) for g, v in sites.items()},
        {k: tuple(_index(a, "weight axis") for a in _list(v, "axes")) for k, v in outputs.items()},
    )
    check_consistent(spec)
    return spec


def layout_from_data(data: Any, groups: Mapping[str, PermGroup], depth: int = 0) -> Layout:
    if depth > _MAX_DEPTH:
        _fail("layout nested too deeply")
    item = _list(data, "layout")
    kind = item[0] if item else None
    if kind == "fixed":
        return Fixed(_index(_fields(item, 2, "fixed layout")[1], "size"))
    if kind == "leaf":
        _, name, size, outer = _fields(item, 4, "leaf layout")
        leaf = Leaf(_str(name, "group"), _count(size, "size"),
                    None if outer is None else _str(outer, "outer"))  # fmt: skip
        g = groups.get(leaf.group)
        if g is None or g.size != leaf.size or g.batch_over != leaf.over:
            _fail(f"leaf {leaf} does not match its group")
        return leaf
    if kind in ("concat", "product"):
        children = tuple(
            layout_from_data(c, groups, depth + 1)
            for c in _list(_fields(item, 2, f"{kind} layout")[1], kind)
        )
        if not children:
            _fail(f"empty {kind}")
        return Concat(children) if kind == "concat" else Product(children)
    if kind == "shuffle":
        _, inner, order = _fields(item, 3, "shuffle layout")
        shuffled = Shuffle(layout_from_data(inner, groups, depth + 1),
                           tuple(_index(i, "order") for i in _list(order, "order")))  # fmt: skip
        if sorted(shuffled.order) != list(range(shuffled.inner.size)):
            _fail("a shuffle order is not a permutation of its inner positions")
        return shuffled
    return _fail(f"unknown layout kind {kind!r}")


def check_consistent(spec: PermutationSpec) -> None:
    """Members, aliases, outer groups, sites and weight axes refer to what exists."""
    for g in spec.groups.values():
        outer = spec.groups.get(g.batch_over) if g.batch_over is not None else None
        if g.batch_over is not None and (outer is None or outer.batch_over is not None):
            _fail(f"group {g.name} is batched over {g.batch_over!r}, which is not a plain group")
        for m in g.members:
            axes = spec.layouts.get(m.key, ())
            if m.axis >= len(axes) or g.name not in {lf.group for lf in leaves(axes[m.axis])}:
                _fail(f"group {g.name} lists {m.key} axis {m.axis}, whose layout lacks it")
    for key, source in spec.aliases.items():
        if source not in spec.layouts and key in spec.layouts:
            _fail(f"alias {key} -> {source} has no source layout")
    for key, outputs in spec.weight_outputs.items():
        if not outputs or max(outputs) >= len(spec.layouts.get(key, ())):
            _fail(f"weight {key} has no axes {list(outputs)}")
    for f in spec.fixed:
        if f.axis >= len(spec.layouts.get(f.key, ())):
            _fail(f"fixed axis {f.key} {f.axis} has no layout")


def _member(item: Any) -> Member:
    key, axis = _fields(item, 2, "member")
    return Member(_str(key, "member key"), _index(axis, "member axis"))


def _fixed(item: Any) -> FixedAxis:
    key, axis, size, reason, partial = _fields(item, 5, "fixed axis")
    if not isinstance(partial, bool):
        _fail("fixed axis: partial is not a boolean")
    return FixedAxis(_str(key, "key"), _index(axis, "axis"), _count(size, "size"),
                     _str(reason, "reason"), partial)  # fmt: skip


def _site(item: Any, groups: Mapping[str, PermGroup]) -> ActivationSite:
    node, dim, layout = _fields(item, 3, "site")
    return ActivationSite(_str(node, "node"), _index(dim, "dim"), layout_from_data(layout, groups))


def _fields(item: Any, n: int, what: str) -> list[Any]:
    if not isinstance(item, list) or len(item) != n:
        _fail(f"{what} is not a list of {n} fields")
    return item


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(f"{what} is not a list")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(f"{what} is not an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        _fail(f"{what} is not a string")
    return value


def _index(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _fail(f"{what} is not a non-negative integer")
    return value


def _count(value: Any, what: str) -> int:
    if _index(value, what) == 0:
        _fail(f"{what} is zero")
    return value


def _fail(what: str) -> NoReturn:
    raise ModeconnectError(f"spec data: {what}; derive the spec again")
