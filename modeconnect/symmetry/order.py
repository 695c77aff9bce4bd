"""The order of the key/value heads and of the query heads that share one (grouped-query
attention), matched on products that the per-head maps leave unchanged.

Under ``--symmetry full`` each key/value head ``g`` carries a V·O map ``M_g``
(:mod:`~modeconnect.symmetry.heads`: ``W_v,g -> M_g W_v,g`` and, for every query head
``r`` of the group, ``W_o,r -> W_o,r M_g⁻¹``) and a Q·K map ``A_g``
(:mod:`~modeconnect.symmetry.qk`: ``W_q,r -> A_gᵀ W_q,r``, ``W_k,g -> A_g⁻¹ W_k,g``).
Weight matching compares B's rows and columns as they stand, so these maps blur every
signal that orders a group's query heads: ``o_proj``'s columns are mixed by ``M_g⁻¹``
and ``q_proj``'s rows by ``A_gᵀ``, the same map for all of them. It can then keep two
query heads of a group swapped (a rotated and head-mapped copy of a two-key/value-head
Llama came back 0.79 off in its first layer), and fitting the maps afterwards cannot
undo a swap.

The products ``W_o,r W_v,g`` (query head ``r``'s contribution to the output, per unit of
its attention) and ``W_q,rᵀ W_k,g`` (its bilinear score form), biases appended as
columns, are unchanged by any invertible ``M_g`` and ``A_g``, and by any permutation of
the head dims. :func:`head_orders` scores A's query head ``r`` of key/value head ``g``
against B's ``s`` of ``h`` by ``⟨W_o,r W_v,g, W'_o,s W'_v,h⟩ + ⟨W_q,rᵀ W_k,g,
W'_q,sᵀ W'_k,h⟩`` (Frobenius; computed from ``head_dim × head_dim`` Gram matrices, never
forming the products), assigns the query heads within each pair of key/value heads, and
the key/value heads on the best pairs' scores. For B an exact transformed copy of A the
true order scores ``Σ ‖X‖²`` and any other ``Σ ⟨X_r, X_σ(r)⟩``, less unless two heads
are equal (Cauchy-Schwarz): it is recovered whatever the maps.

Only layers with several query heads per key/value head are reordered (a multi-head
layer's head order is weight matching's, unchanged). :func:`~modeconnect.symmetry.align.
align_full` reorders after each matching of its weight rounds (``orthogonal`` too: on
folded weights, without any maps, weight matching's descent also stopped short of a
rotated GQA copy's head order) and after an activation run's rotation under ``full``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..matching.assignment import solve_assignment
from ..spec import Fixed, Leaf, PermutationSpec, Product, apply_permutation, identity_permutation
from .heads import HeadGroup, _blocks
from .qk import QKGroup, _rows, _writes

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class QueryHeads:
    """One grouped-query attention layer: its key/value heads (group ``outer``), the query
    heads of each (group ``inner``, ``per_kv`` of them), and its Q·K and V·O groups.

    Multi-query attention (one key/value head) has no key/value head group: ``outer`` is
    ``None``, ``inner`` a group of its own, and ``qk`` and ``vo`` one head's rows."""

    outer: str | None
    inner: str
    per_kv: int
    qk: QKGroup
    vo: HeadGroup


def query_heads(
    spec: PermutationSpec, qk: Sequence[QKGroup], vo: Sequence[HeadGroup], state: StateDict
) -> list[QueryHeads]:
    """The layers whose query rows are ``(key/value heads, query heads, head dims)`` with
    the query heads a group of their own, and whose V·O group's readers (``o_proj``'s
    columns) hold those query heads as their one other factor; and the multi-query
    layers (:func:`_multi_query`)."""
    found = [x for g in spec.groups if (x := _multi_query(spec, state, g)) is not None]
    for group in qk:
        if group.per_kv < 2 or group.fused is not None or group.axes:
            continue
        layout = spec.layouts[group.q[0]][0]
        if not (isinstance(layout, Product) and len(layout.factors) == 3):
            continue
        inner = layout.factors[1]
        if not (isinstance(inner, Leaf) and inner.over == group.group):
            continue
        values = [g for g in vo if g.over == group.group and _reads(g, group.per_kv)]
        if len(values) == 1:
            found.append(QueryHeads(group.group, inner.group, group.per_kv, group, values[0]))
    return found


def _multi_query(spec: PermutationSpec, state: StateDict, name: str) -> QueryHeads | None:
    """Group ``name`` as the query heads of a multi-query layer, or ``None``.

    Its members are one module's rows ``(query heads × head dims)`` with fixed head dims
    (rotary: the queries, and their bias) and another's columns ``(query heads × value
    dims)`` of a group ``V`` (``o_proj``); ``V``'s other members are rows of one module
    (the values); the keys are the one module beside the queries whose rows are the fixed
    head dims alone.
    """
    g = spec.groups[name]
    if g.batch_over is not None:
        return None
    rows = [m.key for m in g.members if m.axis == 0 and _writes(spec, state, m.key, 0)]
    cols = [m for m in g.members if (m.key, m.axis) not in {(k, 0) for k in rows}]
    shapes = {spec.layouts[k][0] for k in rows}
    if len(shapes) != 1 or len(cols) != 1 or len({_module(k) for k in rows}) != 1:
        return None
    (rows_layout,) = shapes
    out = spec.layouts[cols[0].key][cols[0].axis]
    if not (isinstance(rows_layout, Product) and len(rows_layout.factors) == 2
            and isinstance(out, Product) and len(out.factors) == 2):  # fmt: skip
        return None
    (heads, dims), (again, values) = rows_layout.factors, out.factors
    if not (heads == again == Leaf(name, heads.size) and isinstance(dims, Fixed)
            and isinstance(values, Leaf) and values.over is None):  # fmt: skip
        return None
    writers = [m for m in spec.groups[values.group].members if (m.key, m.axis) != (
        cols[0].key, cols[0].axis)]  # fmt: skip
    if not writers or any(m.axis or not _writes(spec, state, m.key, 0) for m in writers):
        return None
    layer = _module(rows[0]).rsplit(".", 1)[0]
    keys = [k for k in state if _module(k).rsplit(".", 1)[0] == layer and k in spec.layouts
            and spec.layouts[k][0] == dims and _module(k) != _module(rows[0])]  # fmt: skip
    if len({_module(k) for k in keys}) != 1:
        return None
    n, h, nv = dims.size, heads.size, values.size
    qk = QKGroup(name, tuple(rows), tuple(keys), 1, h, n)
    places = {m.key: torch.arange(nv).reshape(1, nv, 1) for m in writers}
    places[cols[0].key] = torch.arange(h * nv).reshape(h, nv).T[None]
    members = (*((m.key, 0, True) for m in writers), (cols[0].key, cols[0].axis, False))
    return QueryHeads(None, name, h, qk, HeadGroup(values.group, 1, nv, members, "", places))


def _module(key: str) -> str:
    """The module a parameter belongs to (``a.b.weight`` -> ``a.b``)."""
    return key.rsplit(".", 1)[0]


def _reads(vo: HeadGroup, per_kv: int) -> bool:
    """Whether ``vo`` has readers, each with the query heads as its one other factor."""
    readers = [k for k, _, writer in vo.members if not writer]
    return bool(readers) and all(vo.positions[k].shape[2] == per_kv for k in readers)


def head_orders(a: StateDict, b: StateDict, layer: QueryHeads) -> tuple[torch.Tensor, torch.Tensor]:
    """B's key/value head order ``(kv,)`` and query head order per (new) key/value head
    ``(kv, per_kv)`` that best match A on the map-invariant products (module docstring).

    """
    qa, qb = _queries(a, layer), _queries(b, layer)
    ka, kb = _stacked(a, layer.qk, layer.qk.k), _stacked(b, layer.qk, layer.qk.k)
    va, vb = _values(a, layer.vo), _values(b, layer.vo)
    oa, ob = _outputs(a, layer), _outputs(b, layer)
    kv = layer.qk.kv_heads
    scores = torch.zeros(kv, kv, dtype=torch.float64)
    inner = torch.zeros(kv, kv, layer.per_kv, dtype=torch.long)
    for g in range(kv):
        for h in range(kv):
            keys = ka[g] @ kb[h].T  # (n, n) for Q·K
            values = va[g] @ vb[h].T  # (n', n') for V·O
            # ⟨X_r, Y_s⟩ = Σ_ij (Q_r Q'_sᵀ)_ij (K K'ᵀ)_ij = ⟨Q_r, (K K'ᵀ) Q'_s⟩, and V·O alike
            cross = torch.einsum("rik,sik->rs", qa[g], torch.einsum("ij,sjk->sik", keys, qb[h]))
            cross += torch.einsum("rik,sik->rs", oa[g], torch.einsum("ij,sjk->sik", values, ob[h]))
            inner[g, h] = solve_assignment(cross)
            scores[g, h] = cross[torch.arange(layer.per_kv), inner[g, h]].sum()
    outer = solve_assignment(scores)
    return outer, inner[torch.arange(kv), outer]


def reorder(
    spec: PermutationSpec, a: StateDict, b: StateDict, layers: Sequence[QueryHeads]
) -> dict[str, torch.Tensor]:
    """``b`` with each layer's key/value and query heads put in A's order (:func:`head_orders`);
    every other group (the value dims among them) keeps its order."""
    if not layers:
        return dict(b)
    perm = identity_permutation(spec)
    for layer in layers:
        outer, inner = head_orders(a, b, layer)
        if layer.outer is None:  # multi-query: the query heads are a group of their own
            perm[layer.inner] = inner[0]
        else:
            perm[layer.outer], perm[layer.inner] = outer, inner
    return apply_permutation(b, spec, perm)


def _stacked(state: StateDict, group: QKGroup, keys: Sequence[str]) -> torch.Tensor:
    """``(kv_heads, head_dim, rest)`` of the key rows of ``keys`` side by side (biases too)."""
    g, n = group.kv_heads, group.head_dim
    return torch.cat([_rows(state[k], group, False).reshape(g, n, -1) for k in keys], dim=2)


def _queries(state: StateDict, layer: QueryHeads) -> torch.Tensor:
    """``(kv_heads, per_kv, head_dim, rest)``: each query head's rows (biases too)."""
    g, n, per = layer.qk.kv_heads, layer.qk.head_dim, layer.per_kv
    parts = [_rows(state[k], layer.qk, True).reshape(g, per, n, -1) for k in layer.qk.q]
    return torch.cat(parts, dim=3)


def _values(state: StateDict, vo: HeadGroup) -> torch.Tensor:
    """``(kv_heads, size, rest)``: the value rows of each key/value head (biases too)."""
    parts = [_blocks(state[k], axis, vo.positions[k]) for k, axis, writer in vo.members
             if writer]  # fmt: skip
    return torch.cat(parts, dim=2)


def _outputs(state: StateDict, layer: QueryHeads) -> torch.Tensor:
    """``(kv_heads, per_kv, size, rest)``: each query head's reader columns (``o_proj``)."""
    vo = layer.vo
    parts = []
    for k, axis, writer in vo.members:
        if not writer:
            x = _blocks(state[k], axis, vo.positions[k])  # (kv, size, per_kv · rest)
            parts.append(x.reshape(x.shape[0], x.shape[1], layer.per_kv, -1).transpose(1, 2))
    return torch.cat(parts, dim=3)
