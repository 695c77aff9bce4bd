"""Rules for attention: ``scaled_dot_product_attention`` and ``softmax``.

In ``softmax(q kᵀ + mask) v``, queries and keys share their last dim (one
permutation per head: the dot product is invariant when both move together), keys
and values share their positions, and the output carries the value dims.

An additive mask or position bias (``attn_mask``) is added to the scores
``(..., heads, L, S)``: its dims are tied to those of the scores they broadcast
against, so a per-head bias (T5's relative position bias, ALiBi slopes) permutes
with the heads, or fixes them when it is a constant. Ignoring it would give a spec
whose permuted model computes another function.

Grouped-query attention (``enable_gqa=True``): query heads are (key/value head,
query head within the group); the query heads of one group may permute among
themselves.
"""

from __future__ import annotations

from typing import Any

import torch

from .context import (
    Context,
    Dims,
    args,
    bind,
    dims,
    fresh,
    maybe_tuple,
    norm_dim,
    of_input,
    site,
    unify_trailing,
    unknown,
)
from .unionfind import PROD


def sdpa(ctx: Context, node: torch.fx.Node) -> Any:
    b = bind(node)
    q, k, v = (dims(ctx, b[n]) for n in ("query", "key", "value"))
    out = fresh(ctx, node)
    if q is None or k is None or v is None or min(len(q), len(k), len(v)) < 2:
        return unknown(ctx, node)
    vs = ctx.vars
    vs.union(q[-1], k[-1], "attention: query and key dims")
    vs.mix(q[-1])
    for name in ("query", "key", "value"):
        site(ctx, b[name], -1)
    vs.union(k[-2], v[-2], "attention: key and value positions")
    vs.mix(k[-2])
    gqa = bool(b.get("enable_gqa", False))
    for i in range(len(q) - 2):
        for d in (k, v):
            if len(d) != len(q):
                continue
            if vs.size[d[i]] == 1 or vs.size[q[i]] == 1:
                continue  # broadcast (multi-query attention: one key/value head)
            if gqa and i == len(q) - 3 and vs.size[q[i]] != vs.size[d[i]]:
                rep = vs.new(vs.size[q[i]] // max(1, vs.size[d[i]]))
                vs.define(q[i], PROD, [d[i], rep], "grouped-query attention")
            else:
                vs.union(q[i], d[i], "attention batch dims")
    for i in range(len(out) - 1):
        vs.union(out[i], q[i], "attention")
    vs.union(out[-1], v[-1], "attention")
    mask = dims(ctx, b.get("attn_mask"))
    if mask is not None:
        scores = [*q[:-1], k[-2]]
        unify_trailing(ctx, scores, mask, "attention mask")
    return maybe_tuple(ctx, node, out)


@of_input
def softmax(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    """Softmax along a dim mixes values along it (and is equivariant to permuting it)."""
    ctx.vars.mix(x[norm_dim(int(args(node)[1]), len(x))])
    return list(x)
