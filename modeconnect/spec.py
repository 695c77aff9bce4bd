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

A group whose :attr:`PermGroup.batch_over` names another group has one
permutation *per element* of that outer group (each attention head or
GroupNorm group carries its own inner permutation); its permutation tensor
then has shape ``(outer size, size)``.

The spec is derived from the model's graph by :func:`modeconnect.graph.derive_spec`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Fixed:
    """An axis (or part of one) of ``size`` positions that is never permuted."""

    size: int


@dataclass(frozen=True)
class Leaf:
    """An axis (or part of one) permuted by the group named ``group``."""

    group: str
    size: int


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


Layout = Fixed | Leaf | Concat | Product


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
    """An axis the analysis left unpermuted, with the operation that fixed it."""

    key: str
    axis: int
    size: int
    reason: str


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
    weights); aliases are permuted exactly as their source.
    """

    groups: Mapping[str, PermGroup]
    layouts: Mapping[str, tuple[Layout, ...]]
    fixed: tuple[FixedAxis, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    sites: Mapping[str, tuple[ActivationSite, ...]] = field(default_factory=dict)

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
                {"key": f.key, "axis": f.axis, "size": f.size, "reason": f.reason}
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
    elif isinstance(layout, (Concat, Product)):
        for child in layout.parts if isinstance(layout, Concat) else layout.factors:
            yield from leaves(child)


def axis_index(layout: Layout, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The gather index that applies ``perm`` to an axis with this layout.

    ``permuted = tensor.index_select(axis, axis_index(layout, perm))``.
    Groups missing from ``perm`` are left as they are.
    """
    if isinstance(layout, Fixed):
        return torch.arange(layout.size)
    if isinstance(layout, Leaf):
        p = perm.get(layout.group)
        return torch.arange(layout.size) if p is None or p.dim() != 1 else p
    if isinstance(layout, Concat):
        out, offset = [], 0
        for part in layout.parts:
            out.append(axis_index(part, perm) + offset)
            offset += part.size
        return torch.cat(out)
    return _product_index(layout, perm)


def _product_index(layout: Product, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
    # Row-major flattening: index = ((i0 * n1) + i1) * n2 + i2 ...  A batched
    # factor takes its row from the position of the factor just before it.
    idx = torch.zeros(1, dtype=torch.long)
    prev: Layout | None = None
    for factor in layout.factors:
        n = factor.size
        p = perm.get(factor.group) if isinstance(factor, Leaf) else None
        if p is not None and p.dim() == 2 and isinstance(factor, Leaf):
            if not isinstance(prev, Leaf):
                raise ValueError(f"batched group {factor.group} must follow its outer group")
            outer_pos = torch.arange(idx.numel()) % prev.size
            inner = p[outer_pos]  # (len(idx), n)
            idx = (idx[:, None] * n + inner).reshape(-1)
        else:
            idx = (idx[:, None] * n + axis_index(factor, perm)[None, :]).reshape(-1)
        prev = factor
    return idx


def apply_permutation(
    state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, perm: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Permute every tensor of ``state_dict`` by ``perm``, by indexing (exact, no products).

    Keys the spec does not know are copied unchanged. The input is never modified.
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
    """A uniformly random permutation of every group (each block on its own for batched groups)."""
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
