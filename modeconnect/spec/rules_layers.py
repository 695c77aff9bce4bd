"""Rules for the layers that carry weights: linear maps, convolutions, norms, embeddings.

A linear map opens a new group on its output (the weight's output axis) and ties
its input features to the weight's input axis, which is where a layer *reads* an
activation (an activation site); norms tie their parameters and statistics to the
channels they normalise (Git Re-Basin, Ainsworth et al. 2023, Appendix A).
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
    fresh_from_val,
    maybe_tuple,
    site,
    unify_trailing,
    unknown,
    weight_output,
)
from .unionfind import PROD


def linear(ctx: Context, node: torch.fx.Node) -> Dims:
    """``y = x Wᵀ + b``: ``W`` (out, in), ``x`` (..., in)."""
    b = bind(node)
    x, w = dims(ctx, b["input"]), dims(ctx, b["weight"])
    out = fresh(ctx, node)
    if x is None or w is None or len(w) != 2 or len(out) != len(x):
        return unknown(ctx, node)
    vs = ctx.vars
    for i in range(len(x) - 1):
        vs.union(out[i], x[i], "linear")
    vs.union(x[-1], w[1], "linear")
    vs.mix(x[-1])
    site(ctx, b["input"], -1)
    vs.union(out[-1], w[0], "linear")
    weight_output(ctx, w[0])
    bias = dims(ctx, b.get("bias"))
    if bias is not None:
        vs.union(out[-1], bias[-1], "linear")
    return out


def addmm(ctx: Context, node: torch.fx.Node) -> Dims:
    """``addmm(bias, x, w) = bias + x @ w``: Hugging Face ``Conv1D`` stores ``w`` as (in, out)."""
    b = bind(node)
    bias, x, w = dims(ctx, b["self"]), dims(ctx, b["mat1"]), dims(ctx, b["mat2"])
    out = fresh(ctx, node)
    if x is None or w is None:
        return unknown(ctx, node)
    vs = ctx.vars
    vs.union(out[0], x[0], "addmm")
    vs.union(x[1], w[0], "addmm")
    vs.mix(x[1])
    site(ctx, b["mat1"], 1)
    vs.union(out[1], w[1], "addmm")
    weight_output(ctx, w[1])
    if bias is not None:
        for k in range(1, len(bias) + 1):
            if vs.size[bias[-k]] == vs.size[out[-k]]:
                vs.union(out[-k], bias[-k], "addmm")
    return out


def matmul(ctx: Context, node: torch.fx.Node) -> Dims:
    """``a @ c``: contracts ``a``'s last dim with ``c``'s second-to-last; batch dims broadcast."""
    a, c = dims(ctx, args(node)[0]), dims(ctx, args(node)[1])
    out = fresh(ctx, node)
    if a is None or c is None or len(a) < 2 or len(c) < 2:
        return unknown(ctx, node)
    vs = ctx.vars
    vs.union(a[-1], c[-2], "matmul")
    vs.mix(a[-1])
    vs.union(out[-2], a[-2], "matmul")
    vs.union(out[-1], c[-1], "matmul")
    weight_output(ctx, c[-1])
    for k in range(3, len(out) + 1):
        for d in (a, c):
            if k <= len(d) and vs.size[d[-k]] == vs.size[out[-k]]:
                vs.union(out[-k], d[-k], "matmul")
    return out


def baddbmm(ctx: Context, node: torch.fx.Node) -> Dims:
    """``baddbmm(bias, a, c) = bias + a @ c`` (BLOOM's ALiBi scores): a matmul, plus a
    bias that broadcasts against the result (tied to it, or fixing it when constant)."""
    b = bind(node)
    a, c, bias = dims(ctx, b["batch1"]), dims(ctx, b["batch2"]), dims(ctx, b["self"])
    if a is None or c is None or len(a) != 3 or len(c) != 3:
        return unknown(ctx, node)
    out = fresh(ctx, node)
    vs = ctx.vars
    vs.union(a[-1], c[-2], "baddbmm")
    vs.mix(a[-1])
    for o, x in ((out[0], a[0]), (out[0], c[0]), (out[1], a[1]), (out[2], c[2])):
        vs.union(o, x, "baddbmm")
    if bias is not None:
        unify_trailing(ctx, out, bias, "baddbmm")
    return out


def einsum(ctx: Context, node: torch.fx.Node) -> Dims:
    """``einsum``: dims with one letter are one axis; summed letters mix their axis."""
    b = bind(node)
    operands = [dims(ctx, t) for t in b["tensors"]]
    out = fresh(ctx, node)
    parsed = _einsum_letters(str(b["equation"]), [len(d) if d else 0 for d in operands])
    if parsed is None or any(d is None for d in operands):
        return unknown(ctx, node)
    inputs, output = parsed
    vs = ctx.vars
    seen: dict[str, int] = {}
    for letters, d in zip(inputs, operands):
        for letter, v in zip(letters, d or []):
            if vs.size[v] == 1:
                continue  # broadcast
            if letter in seen:
                vs.union(seen[letter], v, "einsum")
            else:
                seen[letter] = v
            if letter not in output:
                vs.mix(v)
    if len(output) != len(out):
        return unknown(ctx, node)
    for letter, o in zip(output, out):
        if letter in seen and vs.size[o] == vs.size[seen[letter]]:
            vs.union(o, seen[letter], "einsum")
        elif vs.size[o] != 1:
            return unknown(ctx, node)
    return out


def _einsum_letters(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """Per operand and for the output, one symbol per dim (``...`` expanded to digits)."""
    equation = equation.replace(" ", "")
    if "->" not in equation:
        return None
    lhs, rhs = equation.split("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    width = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks)), default=0)
    ellipsis = "".join(str(i) for i in range(max(width, 0)))

    def expand(term: str, rank: int) -> str:
        if "..." not in term:
            return term
        k = rank - len(term.replace("...", ""))
        return term.replace("...", ellipsis[len(ellipsis) - k :] if k > 0 else "")

    inputs = [expand(t, r) for t, r in zip(terms, ranks)]
    if any(len(t) != r for t, r in zip(inputs, ranks)):
        return None
    return inputs, rhs.replace("...", ellipsis)


def prelu(ctx: Context, node: torch.fx.Node) -> Dims:
    """``prelu(x, weight)``: one slope per channel (dim 1), or one for all."""
    x, w = dims(ctx, args(node)[0]), dims(ctx, args(node)[1])
    if x is None or w is None or len(w) != 1:
        return unknown(ctx, node)
    if ctx.vars.size[w[0]] != 1:
        ctx.vars.union(x[1] if len(x) > 1 else x[0], w[0], "prelu")
    return list(x)


def conv(ctx: Context, node: torch.fx.Node) -> Dims:
    """Convolutions: channels like a linear map, kernel taps and spatial axes fixed.

    A grouped convolution sees its channels as (group, channel within group) on both
    sides: whole groups move together and each side permutes within a group.
    """
    b = bind(node)
    x, w = dims(ctx, b["input"]), dims(ctx, b["weight"])
    bias = dims(ctx, b.get("bias"))
    groups = int(b.get("groups") or 1)
    transposed = bool(b.get("transposed", False)) or "transpose" in str(node.target)
    out = fresh(ctx, node)
    if x is None or w is None or len(x) != len(out):
        return unknown(ctx, node)
    vs = ctx.vars
    vs.union(out[0], x[0], "conv")
    for v in out[2:]:
        vs.freeze(v, "spatial axis of a convolution")
    for v in w[2:]:
        vs.freeze(v, "convolution kernel taps")
    w_in, w_out = (w[0], w[1]) if transposed else (w[1], w[0])
    cin, cout = x[1], out[1]
    if bias is not None:
        vs.union(cout, bias[0], "conv bias")
    vs.mix(cin)
    site(ctx, b["input"], 1)
    weight_output(ctx, w_out)
    if groups == 1:
        vs.union(cin, w_in, "conv")
        vs.union(cout, w_out, "conv")
        return out
    g = vs.new(groups)
    gi = vs.new(vs.size[cin] // groups)
    go = vs.new(vs.size[cout] // groups)
    vs.define(cin, PROD, [g, gi], "grouped conv")
    vs.define(cout, PROD, [g, go], "grouped conv")
    if transposed:
        vs.define(w_in, PROD, [g, gi], "grouped conv")
        vs.union(w_out, go, "grouped conv")
    else:
        vs.define(w_out, PROD, [g, go], "grouped conv")
        vs.union(w_in, gi, "grouped conv")
    return out


def batch_norm(ctx: Context, node: torch.fx.Node) -> Any:
    """Weight, bias and running statistics follow the channel axis (dim 1)."""
    b = bind(node)
    x = dims(ctx, b["input"])
    if x is None or len(x) < 2:
        return unknown(ctx, node)
    for name in ("weight", "bias", "running_mean", "running_var"):
        d = dims(ctx, b.get(name))
        if d is not None:
            ctx.vars.union(x[1], d[0], "batch_norm")
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        rest = [fresh_from_val(ctx, v) for v in val[1:]]
        for r in rest:  # saved mean / invstd per channel in training mode
            if r and ctx.vars.size[r[-1]] == ctx.vars.size[x[1]]:
                ctx.vars.union(r[-1], x[1], "batch_norm")
        return [list(x), *rest]
    return list(x)


def layer_norm(ctx: Context, node: torch.fx.Node) -> Any:
    """Normalises over the trailing ``normalized_shape`` dims (mixing them); affine follows."""
    b = bind(node)
    x = dims(ctx, b["input"])
    if x is None:
        return unknown(ctx, node)
    k = len(b["normalized_shape"])
    for name in ("weight", "bias"):
        d = dims(ctx, b.get(name))
        if d is not None:
            for i in range(1, k + 1):
                ctx.vars.union(x[-i], d[-i], "layer_norm")
    for i in range(1, k + 1):
        ctx.vars.mix(x[-i])
    return maybe_tuple(ctx, node, list(x))


def group_norm(ctx: Context, node: torch.fx.Node) -> Any:
    """Channels are (group, channel within group): whole groups or channels within one."""
    b = bind(node)
    x = dims(ctx, b["input"])
    if x is None or len(x) < 2:
        return unknown(ctx, node)
    groups = int(b["num_groups"] if "num_groups" in b else b.get("group", 1))
    vs = ctx.vars
    c = x[1]
    if groups > 1:
        g, inner = vs.new(groups), vs.new(vs.size[c] // groups)
        vs.define(c, PROD, [g, inner], "group_norm")
    vs.mix(c)
    for name in ("weight", "bias"):
        d = dims(ctx, b.get(name))
        if d is not None:
            vs.union(c, d[0], "group_norm")
    return maybe_tuple(ctx, node, list(x))


def embedding(ctx: Context, node: torch.fx.Node) -> Dims:
    """A lookup table: its rows (the vocabulary) stay fixed, its columns follow the output."""
    b = bind(node)
    w, idx = dims(ctx, b["weight"]), dims(ctx, b["indices"])
    out = fresh(ctx, node)
    if w is None or len(w) != 2:
        return unknown(ctx, node)
    ctx.vars.freeze(w[0], "vocabulary axis of an embedding")
    if idx is not None:
        for i, v in enumerate(idx):
            ctx.vars.union(out[i], v, "embedding")
    ctx.vars.union(out[-1], w[1], "embedding")
    weight_output(ctx, w[1])
    return out
