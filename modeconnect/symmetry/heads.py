"""Invertible maps inside attention heads: the V·O class.

Within one head, ``o = W_o,h softmax(·) W_v,h x``: the attention mixes positions, never
the head's value dims, so ``W_v,h -> M_h W_v,h`` (and its bias) with ``W_o,h -> W_o,h
M_h⁻¹`` leaves the function unchanged for any invertible ``M_h``. With grouped-query
attention one ``M_h`` per key/value head serves every query head that shares it.

In the spec such a group is batched over the heads (``PermGroup.batch_over``), and every
axis it appears in is a product whose outer factor is the heads and whose last factor is
the group, or holds it as one part of a concatenation (a fused q/k/v projection whose
heads interleave: GPT-NeoX's ``query_key_value``). :func:`head_maps` takes the groups
where some of those axes are a weight's output (*writers*: ``W_v``'s rows, its bias) and
some are a weight's input (*readers*: ``W_o``'s columns); a Q·K group (two writers, a
bilinear form between them) has no reader and is left out, and
:func:`~modeconnect.symmetry.align.align_full` checks a random map on the probe before it
trusts a group.

The weight-based solver is least squares with both sides linear in ``M``:
``min_M ‖V_A − M V_B‖² + ‖O_A M − O_B‖²``, whose normal equations are the Sylvester
equation ``O_Aᵀ O_A M + M V_B V_Bᵀ = V_A V_Bᵀ + O_Aᵀ O_B``, solved in the two
eigenbases. A map whose condition number exceeds ``max_condition`` is replaced by its
orthogonal polar factor (condition 1), so the guard's float tolerance still holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..spec import Concat, Leaf, PermutationSpec, Product

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class HeadGroup:
    """A V·O group: per-head maps of ``size`` dims, over ``heads`` heads (group ``over``).

    ``members`` are ``(key, axis, writer)``: whether the axis is an output (a writer);
    ``positions`` each member's places of the group's dims along its axis
    (:func:`layout_positions`), found once by :func:`head_maps`.
    """

    group: str
    heads: int
    size: int
    members: tuple[tuple[str, int, bool], ...]
    over: str
    positions: Mapping[str, torch.Tensor] = field(default_factory=dict, compare=False)


def head_maps(spec: PermutationSpec, state: StateDict) -> list[HeadGroup]:
    """The spec's V·O groups (module docstring)."""
    found = []
    for name, g in spec.groups.items():
        if g.batch_over is None:
            continue
        members, positions = [], {}
        for m in g.members:
            places = layout_positions(spec.layouts[m.key][m.axis], g.batch_over, name)
            if places is None:
                break
            ndim = state[m.key].ndim
            writer = ndim == 1 or m.axis in spec.weight_outputs.get(m.key, ())
            members.append((m.key, m.axis, writer))
            positions[m.key] = places
        else:
            if any(w for *_, w in members) and not all(w for *_, w in members):
                heads = spec.groups[g.batch_over].size
                found.append(HeadGroup(name, heads, g.size, tuple(members), g.batch_over,
                                       positions))  # fmt: skip
    return found


def layout_positions(layout: object, outer: str, inner: str) -> torch.Tensor | None:
    """``(heads, n, rest)``: where each head's dims of group ``inner`` sit along an axis of
    ``layout`` (a product with one factor of the heads ``outer`` and ``inner`` its last
    factor, or one part of the last factor's concatenation: a fused q/k/v projection whose
    heads interleave, GPT-NeoX's ``query_key_value``); ``None`` for any other layout.

    A concatenation of such products, one of which holds ``inner`` (GPT-2's ``c_attn``:
    the queries, the keys, then the values, each ``heads × head_dim``), gives that part's
    places, offset by the parts before it.

    >>> from modeconnect.spec import Concat, Fixed, Leaf, Product
    >>> fused = Product((Leaf("H", 2), Concat((Fixed(2), Leaf("V", 1, "H")))))
    >>> layout_positions(fused, "H", "V").flatten().tolist()
    [2, 5]
    >>> qkv = Concat((Product((Leaf("H", 2), Leaf("K", 1, "H"))), Product((Leaf("H", 2),
    ...               Leaf("V", 1, "H")))))
    >>> layout_positions(qkv, "H", "V").flatten().tolist()
    [2, 3]
    """
    if isinstance(layout, Concat):
        found = [(i, p) for i, p in enumerate(layout.parts) if _holds(p, inner)]
        if len(found) != 1:
            return None
        i, part = found[0]
        places = layout_positions(part, outer, inner)
        offset = sum(p.size for p in layout.parts[:i])
        return None if places is None else places + offset
    if not isinstance(layout, Product):
        return None
    factors = layout.factors
    heads = [i for i, f in enumerate(factors) if isinstance(f, Leaf) and f.group == outer]
    index = torch.arange(layout.size).reshape([f.size for f in factors])
    last = factors[-1]
    dims = [len(factors) - 1] if isinstance(last, Leaf) and last.group == inner else []
    if isinstance(last, Concat):
        parts = [i for i, p in enumerate(last.parts) if isinstance(p, Leaf) and p.group == inner]
        if len(parts) != 1:
            return None
        start = sum(p.size for p in last.parts[: parts[0]])
        index = index[..., start : start + last.parts[parts[0]].size]
        dims = [len(factors) - 1]
    if len(heads) != 1 or len(dims) != 1:
        return None
    order = [heads[0], dims[0], *[i for i in range(len(factors)) if i not in (heads[0], dims[0])]]
    index = index.permute(order)
    return index.reshape(index.shape[0], index.shape[1], -1)


def _holds(layout: object, group: str) -> bool:
    """Whether ``layout`` has a factor or part of ``group`` (at any depth)."""
    if isinstance(layout, Leaf):
        return layout.group == group
    parts = getattr(layout, "factors", None) or getattr(layout, "parts", None) or ()
    return any(_holds(p, group) for p in parts)


def apply_head_maps(
    state: StateDict, group: HeadGroup, maps: torch.Tensor, positions: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with writers ``-> M_h ·`` and readers ``-> · M_h⁻¹`` (``maps``: ``(heads, n, n)``).

    ``positions`` gives each member's places of the group's dims (:func:`head_positions`).
    """
    out = dict(state)
    inverse_t = torch.linalg.inv(maps.double()).transpose(1, 2)
    for key, axis, writer in group.members:
        t = out[key]
        m = maps.double() if writer else inverse_t
        out[key] = per_head(t, axis, positions[key], m)
    return out


def head_positions(spec: PermutationSpec, group: HeadGroup) -> dict[str, torch.Tensor]:
    """Each member's places of the group's dims along its axis (:func:`layout_positions`),
    as :func:`head_maps` found them in ``spec``."""
    return dict(group.positions)


def per_head(t: torch.Tensor, axis: int, positions: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``t`` with ``m[h] @`` the dims of head ``h`` (at ``positions[h]``) along ``axis``."""
    moved = t.double().movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1).clone()
    positions = positions.to(flat.device)
    x = flat[positions]  # (heads, n, rest, columns)
    flat[positions] = torch.einsum("hij,hjrc->hirc", m, x)
    return flat.reshape(moved.shape).movedim(0, axis).to(t.dtype)


def _blocks(t: torch.Tensor, axis: int, positions: torch.Tensor) -> torch.Tensor:
    """``(heads, n, rest)``: the group's dims of each head, everything else flattened."""
    moved = t.double().movedim(axis, 0)
    x = moved.reshape(moved.shape[0], -1)[positions]  # (heads, n, rest, columns)
    return x.reshape(x.shape[0], x.shape[1], -1)


def solve_head_maps(
    a: StateDict,
    b: StateDict,
    group: HeadGroup,
    positions: Mapping[str, torch.Tensor],
    max_condition: float = 100.0,
) -> tuple[torch.Tensor, list[float]]:
    """Per-head least-squares maps (module docstring) and each one's condition number."""
    n = group.size
    lhs = torch.zeros(group.heads, n, n, dtype=torch.float64)  # O_Aᵀ O_A
    rhs_b = torch.zeros_like(lhs)  # V_B V_Bᵀ
    c = torch.zeros_like(lhs)
    for key, axis, writer in group.members:
        xa = _blocks(a[key], axis, positions[key])
        xb = _blocks(b[key], axis, positions[key])
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
