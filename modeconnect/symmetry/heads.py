"""Invertible maps inside attention heads: the V·O class.

Within one head, ``o = W_o,h softmax(·) W_v,h x``: the attention mixes positions, never
the head's value dims, so ``W_v,h -> M_h W_v,h`` (and its bias) with ``W_o,h -> W_o,h
M_h⁻¹`` leaves the function unchanged for any invertible ``M_h``. With grouped-query
attention one ``M_h`` per key/value head serves every query head that shares it.

In the spec such a group is batched over the heads (``PermGroup.batch_over``), and every
axis it appears in is a product whose outer factor is the heads and whose last factor is
the group. :func:`head_maps` takes the groups where some of those axes are a weight's
output (*writers*: ``W_v``'s rows, its bias) and some are a weight's input (*readers*:
``W_o``'s columns); a Q·K group (two writers, a bilinear form between them) has no
reader and is left out, and :func:`~modeconnect.symmetry.align.align_full` checks a
random map on the probe before it trusts a group.

The weight-based solver is least squares with both sides linear in ``M``:
``min_M ‖V_A − M V_B‖² + ‖O_A M − O_B‖²``, whose normal equations are the Sylvester
equation ``O_Aᵀ O_A M + M V_B V_Bᵀ = V_A V_Bᵀ + O_Aᵀ O_B``, solved in the two
eigenbases. A map whose condition number exceeds ``max_condition`` is replaced by its
orthogonal polar factor (condition 1), so the guard's float tolerance still holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..spec import Leaf, PermutationSpec, Product

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class HeadGroup:
    """A V·O group: per-head maps of ``size`` dims, over ``heads`` heads.

    ``members`` are ``(key, axis, outer, inner, writer)``: the axis's product factors'
    positions of the heads and of the group, and whether the axis is an output.
    """

    group: str
    heads: int
    size: int
    members: tuple[tuple[str, int, int, int, bool], ...]


def head_maps(spec: PermutationSpec, state: StateDict) -> list[HeadGroup]:
    """The spec's V·O groups (module docstring)."""
    found = []
    for name, g in spec.groups.items():
        if g.batch_over is None:
            continue
        members = []
        for m in g.members:
            layout = spec.layouts[m.key][m.axis]
            if not isinstance(layout, Product):
                break
            spots = _spots(layout, g.batch_over, name)
            if spots is None:
                break
            ndim = state[m.key].ndim
            writer = ndim == 1 or m.axis in spec.weight_outputs.get(m.key, ())
            members.append((m.key, m.axis, *spots, writer))
        else:
            if any(w for *_, w in members) and not all(w for *_, w in members):
                heads = spec.groups[g.batch_over].size
                found.append(HeadGroup(name, heads, g.size, tuple(members)))
    return found


def _spots(layout: Product, outer: str, inner: str) -> tuple[int, int] | None:
    factors = layout.factors
    last = factors[-1]
    if not (isinstance(last, Leaf) and last.group == inner):
        return None
    heads = [i for i, f in enumerate(factors) if isinstance(f, Leaf) and f.group == outer]
    return (heads[0], len(factors) - 1) if len(heads) == 1 else None


def apply_head_maps(
    state: StateDict, group: HeadGroup, maps: torch.Tensor, sizes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """``state`` with writers ``-> M_h ·`` and readers ``-> · M_h⁻¹`` (``maps``: ``(heads, n, n)``).

    ``sizes`` gives each member's axis factor sizes (:func:`factor_sizes`).
    """
    out = dict(state)
    inverse_t = torch.linalg.inv(maps.double()).transpose(1, 2)
    for key, axis, outer, inner, writer in group.members:
        t = state[key]
        m = maps.double() if writer else inverse_t
        out[key] = _per_head(t.double(), axis, sizes[key], outer, inner, m).to(t.dtype)
    return out


def factor_sizes(spec: PermutationSpec, group: HeadGroup) -> dict[str, tuple[int, ...]]:
    """Each member's axis as its product's factor sizes."""
    out = {}
    for key, axis, *_ in group.members:
        layout = spec.layouts[key][axis]
        out[key] = tuple(f.size for f in layout.factors)  # type: ignore[union-attr]
    return out


def _per_head(
    t: torch.Tensor, axis: int, sizes: tuple[int, ...], outer: int, inner: int, m: torch.Tensor
) -> torch.Tensor:
    """``m[h] @`` the group's dims of head ``h``, along ``axis`` of ``t``."""
    moved = t.movedim(axis, 0)
    rest = moved.shape[1:]
    x = moved.reshape(*sizes, -1)
    k = len(sizes)
    order = [outer, *[i for i in range(k) if i not in (outer, inner)], inner, k]
    x = x.permute(order)
    shape = x.shape
    x = x.reshape(shape[0], -1, shape[-2], shape[-1])
    x = torch.einsum("hij,hojr->hoir", m, x).reshape(shape)
    back = [order.index(i) for i in range(k + 1)]
    return x.permute(back).reshape(moved.shape[0], *rest).movedim(0, axis)


def _blocks(
    t: torch.Tensor, axis: int, sizes: tuple[int, ...], outer: int, inner: int
) -> torch.Tensor:
    """``(heads, n, rest)``: the group's dims of each head, everything else flattened."""
    moved = t.double().movedim(axis, 0)
    x = moved.reshape(*sizes, -1)
    k = len(sizes)
    order = [outer, inner, *[i for i in range(k) if i not in (outer, inner)], k]
    x = x.permute(order)
    return x.reshape(x.shape[0], x.shape[1], -1)


def solve_head_maps(
    a: StateDict,
    b: StateDict,
    group: HeadGroup,
    sizes: Mapping[str, tuple[int, ...]],
    max_condition: float = 100.0,
) -> tuple[torch.Tensor, list[float]]:
    """Per-head least-squares maps (module docstring) and each one's condition number."""
    n = group.size
    lhs = torch.zeros(group.heads, n, n, dtype=torch.float64)  # O_Aᵀ O_A
    rhs_b = torch.zeros_like(lhs)  # V_B V_Bᵀ
    c = torch.zeros_like(lhs)
    for key, axis, outer, inner, writer in group.members:
        xa = _blocks(a[key], axis, sizes[key], outer, inner)
        xb = _blocks(b[key], axis, sizes[key], outer, inner)
        if writer:
            rhs_b += xb @ xb.transpose(1, 2)
            c += xa @ xb.transpose(1, 2)
        else:  # a reader's column block is ``O[:, block]ᵀ``: O_A M ≈ O_B
            lhs += xa @ xa.transpose(1, 2)
            c += xa @ xb.transpose(1, 2)
    maps, conditions = [], []
    for h in range(group.heads):
        m = _sylvester(lhs[h], rhs_b[h], c[h])
        cond = float(torch.linalg.cond(m)) if bool(torch.isfinite(m).all()) else float("inf")
        if not cond <= max_condition:
            u, _, vh = torch.linalg.svd(c[h])
            m, cond = u @ vh, 1.0
        maps.append(m)
        conditions.append(cond)
    return torch.stack(maps), conditions


def _sylvester(p: torch.Tensor, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``X`` with ``p X + X q = c`` for symmetric positive semi-definite ``p``, ``q``."""
    dp, up = torch.linalg.eigh(p)
    dq, uq = torch.linalg.eigh(q)
    denom = dp[:, None] + dq[None, :]
    scale = float(denom.abs().max())
    denom = denom.clamp_min(1e-12 * max(scale, 1e-300))
    return up @ ((up.T @ c @ uq) / denom) @ uq.T
