"""Merge and unmerge matrices, and carrying them through every tensor of a model.

A fusion of models ``j = 1..N`` into a target of width ``t_g`` for each group ``g``
is, per group, a pair of matrices per model (ZipIt!, Stoica et al. 2024, §4):

* the **merge** matrix ``M_j`` ``(t_g, n_j)``: merged unit ``c`` is
  ``Σ_j Σ_f M_j[c, f] · unit_f of model j``. Over all models the rows sum to 1
  (each merged unit is a weighted average of the units merged into it);
* the **unmerge** matrix ``U_j`` ``(n_j, t_g)``: model ``j``'s unit ``f`` is read
  back as ``Σ_c U_j[f, c] · merged unit c``.

Every axis that *produces* a group's units (a Linear's rows, a bias, a norm's
scale, running statistics: the axes the spec lists in ``weight_outputs``, and
every axis of a tensor that is not a weight) is multiplied by ``M_j``; every axis
that *reads* them (a Linear's columns) by ``U_jᵀ``. A tensor with no producing
group axis (the output head, its bias) is weighted by the model's weight ``w_j``.
The fused tensor is the sum over models. For permutations ``P_j`` into a common
basis (``M_j = w_j P_j``, ``U_j = P_jᵀ``) this is the weighted average of the
permuted models, so every permutation-based merge is a special case.

The merged model is the object evaluated: nothing here claims it computes what
any input computes, and no equivalence guard applies to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ModeconnectError
from ..spec import Concat, Fixed, Layout, Leaf, PermutationSpec, Product

StateDict = Mapping[str, Tensor]

__all__ = ["GroupMap", "concat_map", "corresponding_groups", "fuse_state_dicts", "target_shapes"]


@dataclass(frozen=True)
class GroupMap:
    """One group's merge matrices ``merge[j]`` ``(t, n_j)`` and unmerge ones ``unmerge[j]``
    ``(n_j, t)``, one of each per model."""

    merge: tuple[Tensor, ...]
    unmerge: tuple[Tensor, ...]

    @property
    def width(self) -> int:
        """The target width ``t``."""
        return int(self.merge[0].shape[0])


def corresponding_groups(
    specs: Sequence[PermutationSpec], labels: Sequence[str]
) -> list[dict[str, str]]:
    """For each spec, its group name for each group of ``specs[0]`` (matched by members).

    Models of one family have the same tensors with the same group structure and may
    differ only in the sizes of their groups. Anything else raises a one-line
    :class:`ModeconnectError` naming the model and what differs.
    """
    first = _member_sets(specs[0])
    out = []
    for spec, label in zip(specs, labels, strict=True):
        if spec.layouts.keys() != specs[0].layouts.keys():
            extra = sorted(spec.layouts.keys() ^ specs[0].layouts.keys())[:3]
            raise ModeconnectError(
                f"{label}: its tensors differ from {labels[0]}'s (e.g. {extra}); models fused "
                "across widths must come from one architecture family (one constructor)"
            )
        mine = {members: name for name, members in _member_sets(spec).items()}
        names: dict[str, str] = {}
        for name, members in first.items():
            if members not in mine:
                blocks = {g.batch_over for g in specs[0].groups.values()}
                heads = (
                    " (its blocks, e.g. heads, are grouped differently: for attention, fuse "
                    "models of one query to key/value head ratio)"
                    if members[1] or name in blocks
                    else ""
                )
                raise ModeconnectError(
                    f"{label}: group {name} of {labels[0]} ({sorted(members[0])[:2]}...) has no "
                    f"counterpart; the models are not one architecture family{heads}"
                )
            names[name] = mine[members]
        _check_fixed(specs[0], spec, labels[0], label)
        out.append(names)
    return out


def _member_sets(spec: PermutationSpec) -> dict[str, tuple[frozenset[tuple[str, int]], bool]]:
    """Each group's axes, and whether it is one per block of another (a head's dimensions
    share their axes with the heads: GPT-2's fused ``c_attn``)."""
    return {
        n: (frozenset((m.key, m.axis) for m in g.members), g.batch_over is not None)
        for n, g in spec.groups.items()
    }


def _check_fixed(first: PermutationSpec, spec: PermutationSpec, a: str, b: str) -> None:
    """Axes that no group owns must have one size in every model (inputs, outputs, taps)."""
    for key, layouts in first.layouts.items():
        other = spec.layouts[key]
        if len(other) != len(layouts):
            raise ModeconnectError(
                f"{b}: tensor {key!r} has {len(other)} axes but {a}'s has {len(layouts)}; "
                "the models are not one architecture family"
            )
        for axis, (x, y) in enumerate(zip(layouts, other, strict=True)):
            if isinstance(x, Fixed) and (not isinstance(y, Fixed) or x.size != y.size):
                raise ModeconnectError(
                    f"{b}: tensor {key!r} axis {axis} has size {y.size} but {a}'s has {x.size} "
                    "and no width group owns it; only hidden widths may differ"
                )
            inner = _fixed_factor(x, y)
            if inner is not None:
                raise ModeconnectError(
                    f"{b}: tensor {key!r} axis {axis} has a fixed factor of size {inner[1]} (e.g. "
                    f"a head dimension) where {a}'s has {inner[0]}; blocks such as heads keep "
                    "their shape, only their number may change: fuse models of one head_dim"
                )


def _fixed_factor(x: Layout, y: Layout) -> tuple[int, int] | None:
    """The sizes of the first fixed factor inside two products that differ, if any."""
    if not isinstance(x, Product) or not isinstance(y, Product):
        return None
    if len(x.factors) != len(y.factors):
        return None
    for f, g in zip(x.factors, y.factors, strict=True):
        if isinstance(f, Fixed) and isinstance(g, Fixed) and f.size != g.size:
            return f.size, g.size
        found = _fixed_factor(f, g)
        if found is not None:
            return found
    return None


def concat_map(sizes: Sequence[int]) -> GroupMap:
    """Every model's units kept side by side (width ``Σ n_j``): model ``j``'s block holds its
    own units unchanged, so layers between such groups become block-diagonal (one head
    per model). Partial zipping uses it for the groups it does not merge.

    >>> concat_map([1, 2]).merge[1]
    tensor([[0., 0.],
            [1., 0.],
            [0., 1.]], dtype=torch.float64)
    """
    total, out, start = sum(sizes), [], 0
    for n in sizes:
        m = torch.zeros(total, n, dtype=torch.float64)
        m[start : start + n] = torch.eye(n, dtype=torch.float64)
        out.append(m)
        start += n
    return GroupMap(tuple(out), tuple(m.T for m in out))


def target_shapes(spec: PermutationSpec, widths: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``spec`` once its groups have ``widths``."""
    return {
        key: tuple(_resized(layout, widths) for layout in layouts)
        for key, layouts in spec.layouts.items()
    }


def _resized(layout: Layout, widths: Mapping[str, int]) -> int:
    if isinstance(layout, Leaf):
        return widths.get(layout.group, layout.size)
    if isinstance(layout, Concat):
        return sum(_resized(p, widths) for p in layout.parts)
    if isinstance(layout, Product):
        n = 1
        for f in layout.factors:
            n *= _resized(f, widths)
        return n
    return layout.size


def _apply(t: Tensor, axis: int, layout: Layout, mats: Mapping[str, Tensor]) -> Tensor:
    """``t`` with the units of ``layout`` on ``axis`` replaced by ``mats[group] @ units``."""
    if isinstance(layout, Fixed):
        return t
    if isinstance(layout, Leaf):
        # A per-block group (head dims inside heads) gets one map for every block: fusion
        # keeps such groups at their width with identity maps (``w_j I``), never merges them.
        mat = mats.get(layout.group)
        if mat is None:
            return t
        moved = t.movedim(axis, -1)
        return (moved @ mat.T.to(moved.dtype)).movedim(-1, axis)
    if isinstance(layout, Concat):
        parts = torch.split(t, [p.size for p in layout.parts], dim=axis)
        if not isinstance(mats, _Producing):
            return torch.cat(
                [_apply(x, axis, p, mats) for x, p in zip(parts, layout.parts, strict=True)],
                dim=axis,
            )
        # Each part holds its own elements (GPT-2's c_attn: queries, keys, values), so the
        # model's weight enters each part once: by its first group, else by itself.
        start, out = mats.used, []
        for x, p in zip(parts, layout.parts, strict=True):
            mats.used = start
            y = _apply(x, axis, p, mats)
            out.append(y if mats.used else y * mats.weight)
        mats.used = True
        return torch.cat(out, dim=axis)
    if isinstance(layout, Product):
        sizes = [f.size for f in layout.factors]
        shape = list(t.shape)
        t = t.reshape(*shape[:axis], *sizes, *shape[axis + 1 :])
        for i, factor in enumerate(layout.factors):
            t = _apply(t, axis + i, factor, mats)
        return t.reshape(*shape[:axis], -1, *shape[axis + 1 :])
    raise ModeconnectError(
        f"a {type(layout).__name__} axis (a channel shuffle) cannot change width; "
        "fuse models of this architecture at one width"
    )


def _produces(spec: PermutationSpec, key: str, axis: int) -> bool:
    outputs = spec.weight_outputs.get(key)
    return outputs is None or axis in outputs


class _Producing(Mapping[str, Tensor]):
    """Model ``j``'s merge matrices for one tensor's producing axes. The model's weight is in
    each merge matrix; when several groups produce one tensor (heads × head dims), it must
    enter once: the first group met gives its merge matrix, the others theirs with each
    row scaled to sum to 1 (``w_j I`` becomes ``I``)."""

    def __init__(self, merge: Mapping[str, Tensor], weight: float) -> None:
        self.merge, self.used, self.weight = merge, False, weight

    def __getitem__(self, group: str) -> Tensor:
        m = self.merge[group]
        if self.used:
            sums = m.sum(1, keepdim=True)
            m = torch.where(sums != 0, m / torch.where(sums != 0, sums, 1.0), 0.0)
        self.used = True
        return m

    def __iter__(self) -> Iterator[str]:
        return iter(self.merge)

    def __len__(self) -> int:
        return len(self.merge)


def _carried(
    t: Tensor,
    key: str,
    spec: PermutationSpec,
    names: Mapping[str, str],
    maps: Mapping[str, GroupMap],
    j: int,
    weight: float,
) -> Tensor:
    """Model ``j``'s tensor ``key`` in the target basis (its share of the fused tensor)."""
    source = spec.aliases.get(key, key)
    layouts = spec.layouts.get(source)
    x = t.double()
    if layouts is None:
        return x * weight
    own = {names[g]: m for g, m in maps.items()}
    merge = _Producing({g: m.merge[j] for g, m in own.items()}, weight)
    unmerge = {g: m.unmerge[j].T for g, m in own.items()}
    for axis, layout in enumerate(layouts):
        x = _apply(x, axis, layout, merge if _produces(spec, source, axis) else unmerge)
    return x if merge.used else x * weight  # the weight entered through a merge matrix


def fuse_state_dicts(
    state_dicts: Sequence[StateDict],
    specs: Sequence[PermutationSpec],
    names: Sequence[Mapping[str, str]],
    maps: Mapping[str, GroupMap],
    weights: Sequence[float],
) -> dict[str, Tensor]:
    """``Σ_j`` model ``j``'s tensors carried through ``maps`` (module docstring), per key.

    ``names[j]`` maps the groups of ``maps`` (named as in ``specs[0]``) to model ``j``'s;
    ``weights`` weigh the tensors with no producing group axis. Sums run in float64 and
    are cast to model 0's dtypes; tensors that are not floating point come from model 0.

    >>> import torch
    >>> from modeconnect.spec import PermutationSpec, PermGroup, Member, Leaf, Fixed
    >>> spec = PermutationSpec(
    ...     groups={"P0": PermGroup("P0", 2, (Member("w1", 0), Member("w2", 1)))},
    ...     layouts={"w1": (Leaf("P0", 2), Fixed(1)), "w2": (Fixed(1), Leaf("P0", 2))},
    ...     weight_outputs={"w1": (0,), "w2": (0,)})
    >>> sd = {"w1": torch.tensor([[1.0], [1.0]]), "w2": torch.tensor([[2.0, 3.0]])}
    >>> both = GroupMap((torch.tensor([[0.5, 0.5]]),), (torch.tensor([[1.0], [1.0]]),))
    >>> fuse_state_dicts([sd], [spec], [{"P0": "P0"}], {"P0": both}, [1.0])["w2"]
    tensor([[5.]])
    """
    out: dict[str, Tensor] = {}
    for key, first in state_dicts[0].items():
        if not first.is_floating_point():
            out[key] = first
            continue
        parts = [
            _carried(sd[key], key, specs[j], names[j], maps, j, weights[j])
            for j, sd in enumerate(state_dicts)
        ]
        out[key] = torch.stack(parts).sum(0).to(first.dtype)
    return out
