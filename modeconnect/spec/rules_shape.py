"""Rules for ops that move values between positions without arithmetic.

Reshapes define an axis as a product of factors, ``cat``/``split``/``slice`` as a
concatenation of parts; transposes and permutes reorder the variables. Ops that
move values *along* an axis by position (``roll``, ``flip``, reflection padding,
indexing and ``gather`` along a dim) fix that axis, and pass the others through.
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
    norm_dim,
    of_input,
    op_name,
    shape,
    unify_trailing,
    unknown,
)
from .unionfind import CAT, PROD


def view(ctx: Context, node: torch.fx.Node) -> Dims:
    """``view``/``reshape``/``flatten``/``unflatten``: both shapes are factorisations of one."""
    x = dims(ctx, args(node)[0])
    out = fresh(ctx, node)
    if x is None:
        return unknown(ctx, node)
    why = f"{op_name(node)} {list(shape(args(node)[0]) or ())} -> {list(shape(node) or ())}"
    ctx.vars.unify_sequences(PROD, x, out, why)
    return out


@of_input
def transpose(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    """``transpose(x, i, j)``; ``t``/``numpy_T`` reverse all dims, ``mT`` swaps the last two."""
    out = list(x)
    name = op_name(node)
    if len(node.args) >= 3:
        i, j = norm_dim(int(args(node)[1]), len(x)), norm_dim(int(args(node)[2]), len(x))
        out[i], out[j] = out[j], out[i]
    elif name in ("mT", "mH", "adjoint") and len(x) >= 2:
        out[-1], out[-2] = out[-2], out[-1]
    else:  # t, numpy_T
        out.reverse()
    return out


@of_input
def permute(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    return [x[norm_dim(int(d), len(x))] for d in args(node)[1]]


@of_input
def movedim(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    src, dst = args(node)[1], args(node)[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [norm_dim(int(s), len(x)) for s in src]
    dst = [norm_dim(int(d), len(x)) for d in dst]
    rest = iter([v for i, v in enumerate(x) if i not in src])
    placed = dict(zip(dst, (x[s] for s in src)))
    return [placed[i] if i in placed else next(rest) for i in range(len(x))]


@of_input
def unsqueeze(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    d = norm_dim(int(args(node)[1]), len(x) + 1)
    return [*x[:d], ctx.vars.new(1), *x[d:]]


@of_input
def squeeze(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    sizes = shape(args(node)[0]) or ()
    if len(node.args) > 1:
        which = args(node)[1] if isinstance(args(node)[1], (list, tuple)) else [args(node)[1]]
        axes = [norm_dim(int(d), len(x)) for d in which]
        drop = {d for d in axes if sizes[d] == 1}
    else:
        drop = {i for i, s in enumerate(sizes) if s == 1}
    return [v for i, v in enumerate(x) if i not in drop]


def expand(ctx: Context, node: torch.fx.Node) -> Dims:
    """Broadcast to a larger shape: new and size-1 dims get copies (any order is fine)."""
    x = dims(ctx, args(node)[0])
    out = fresh(ctx, node)
    if x is None:
        return unknown(ctx, node)
    unify_trailing(ctx, out, x, "expand")
    return out


def repeat(ctx: Context, node: torch.fx.Node) -> Dims:
    """``repeat`` tiles: each repeated dim is (copy, original position)."""
    x = dims(ctx, args(node)[0])
    out = fresh(ctx, node)
    if x is None:
        return unknown(ctx, node)
    vs = ctx.vars
    for k in range(1, len(x) + 1):
        copies = vs.size[out[-k]] // max(1, vs.size[x[-k]])
        vs.define(out[-k], PROD, [vs.new(copies), x[-k]], "repeat")
    return out


def cat(ctx: Context, node: torch.fx.Node) -> Dims:
    b = bind(node)
    tensors = [t for t in b["tensors"] if shape(t) != (0,)]
    parts = [dims(ctx, t) for t in tensors]
    out = fresh(ctx, node)
    if not parts or any(p is None or len(p) != len(out) for p in parts):
        return unknown(ctx, node)
    dim = norm_dim(int(b.get("dim") or 0), len(out))
    edges: list[int] = []
    for p in parts:
        if p is None:  # for the type checker; checked above
            return unknown(ctx, node)
        for i, v in enumerate(p):
            if i != dim:
                ctx.vars.union(out[i], v, "cat")
        edges.append(p[dim])
    ctx.vars.define(out[dim], CAT, edges, "cat")
    return out


def stack(ctx: Context, node: torch.fx.Node) -> Dims:
    b = bind(node)
    parts = [dims(ctx, t) for t in b["tensors"]]
    out = fresh(ctx, node)
    if not parts or any(p is None for p in parts):
        return unknown(ctx, node)
    dim = norm_dim(int(b.get("dim") or 0), len(out))
    rest = out[:dim] + out[dim + 1 :]
    for p in parts:
        for u, v in zip(rest, p or []):
            ctx.vars.union(u, v, "stack")
    ctx.vars.freeze(out[dim], "stacked axis")
    return out


def split(ctx: Context, node: torch.fx.Node) -> Any:
    """``split``/``chunk``: the split axis is the concatenation of the outputs' axes."""
    x = dims(ctx, args(node)[0])
    vals = node.meta.get("val")
    if x is None or not isinstance(vals, (list, tuple)):
        return unknown(ctx, node)
    dim = norm_dim(int(bind(node).get("dim") or 0), len(x))
    outs = []
    for val in vals:
        o = fresh_from_val(ctx, val)
        for i, v in enumerate(x):
            if i != dim:
                ctx.vars.union(o[i], v, "split")
        outs.append(o)
    ctx.vars.define(x[dim], CAT, [o[dim] for o in outs], "split")
    return outs


@of_input
def slice_(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    b = bind(node)
    dim = norm_dim(int(b.get("dim") or 0), len(x))
    n = ctx.vars.size[x[dim]]
    start, end, step = b.get("start"), b.get("end"), b.get("step") or 1
    start = 0 if start is None else min(max(norm_dim(int(start), n), 0), n)
    end = n if end is None else min(max(norm_dim(int(end), n), 0), n)
    out = list(x)
    if start == 0 and end == n and step == 1:
        return out
    if step != 1 or end <= start:
        reason = "strided slice"
        ctx.vars.freeze(x[dim], reason)
        out[dim] = ctx.vars.new(len(range(start, end, step)), frozen=reason)
        return out
    bounds = [0, *[c for c in (start, end) if 0 < c < n], n]
    parts = [ctx.vars.new(hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    ctx.vars.define(x[dim], CAT, parts, "slice")
    out[dim] = parts[bounds.index(start)]
    return out


@of_input
def select(ctx: Context, node: torch.fx.Node, x: Dims) -> Dims:
    dim = norm_dim(int(args(node)[1]), len(x))
    n = ctx.vars.size[x[dim]]
    i = norm_dim(int(args(node)[2]), n)
    bounds = sorted({0, i, i + 1, n})
    parts = [ctx.vars.new(hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    ctx.vars.define(x[dim], CAT, parts, "select")
    return x[:dim] + x[dim + 1 :]


@of_input
def unbind(ctx: Context, node: torch.fx.Node, x: Dims) -> Any:
    dim = norm_dim(int(args(node)[1]) if len(node.args) > 1 else 0, len(x))
    n = ctx.vars.size[x[dim]]
    ctx.vars.define(x[dim], CAT, [ctx.vars.new(1) for _ in range(n)], "unbind")
    rest = x[:dim] + x[dim + 1 :]
    return [list(rest) for _ in range(n)]


def getitem(ctx: Context, node: torch.fx.Node) -> Any:
    src = args(node)[0]
    val = ctx.env.get(src.name) if isinstance(src, torch.fx.Node) else None
    if isinstance(val, (list, tuple)) and val and isinstance(val[0], list):
        i = int(args(node)[1])
        if -len(val) <= i < len(val):
            return val[i]
    return unknown(ctx, node)


def pad(ctx: Context, node: torch.fx.Node) -> Dims:
    """Constant padding adds fixed positions at the ends of an axis; other modes copy
    values by position (reflect, replicate, circular) and fix the padded axes."""
    b = bind(node)
    x = dims(ctx, b.get("self", b.get("input")))
    out = fresh(ctx, node)
    if x is None or len(x) != len(out):
        return unknown(ctx, node)
    widths = [int(p) for p in b["pad"]]
    mode = str(b.get("mode") or "constant")
    padded = {len(x) - 1 - i // 2 for i in range(len(widths)) if widths[i] != 0}
    vs = ctx.vars
    for d in range(len(x)):
        lo = widths[2 * (len(x) - 1 - d)] if 2 * (len(x) - 1 - d) < len(widths) else 0
        hi = widths[2 * (len(x) - 1 - d) + 1] if 2 * (len(x) - 1 - d) + 1 < len(widths) else 0
        if d not in padded:
            vs.union(out[d], x[d], "pad")
        elif mode != "constant" or lo < 0 or hi < 0:
            reason = f"{op_name(node)} ({mode})"
            vs.freeze(x[d], reason)
            vs.freeze(out[d], reason)
        else:
            edges = [vs.new(lo, frozen="padding"), x[d], vs.new(hi, frozen="padding")]
            vs.define(out[d], CAT, edges, "pad")
    return out


def along_dims(ctx: Context, node: torch.fx.Node, axes: list[int] | None, what: str) -> Dims:
    """Ops that move values by position along ``axes`` (all dims if ``None``), shape kept."""
    x = dims(ctx, args(node)[0])
    out = fresh(ctx, node)
    if x is None or len(x) != len(out):
        return unknown(ctx, node)
    moved = set(range(len(x))) if not axes else {norm_dim(a, len(x)) for a in axes}
    for d in range(len(x)):
        if d in moved:
            ctx.vars.freeze(x[d], what)
            ctx.vars.freeze(out[d], what)
        else:
            ctx.vars.union(out[d], x[d], what)
    return out


def _int_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def roll(ctx: Context, node: torch.fx.Node) -> Dims:
    """``roll`` shifts positions along its dims (Swin's shifted windows)."""
    return along_dims(ctx, node, _int_list(bind(node).get("dims")), "roll")


def flip(ctx: Context, node: torch.fx.Node) -> Dims:
    return along_dims(ctx, node, _int_list(bind(node).get("dims")), "flip")


def cumulative(ctx: Context, node: torch.fx.Node) -> Dims:
    """``cumsum``/``cumprod``/``diff``-like ops depend on the order along ``dim``."""
    return along_dims(ctx, node, _int_list(bind(node).get("dim")), op_name(node))


def index(ctx: Context, node: torch.fx.Node) -> Dims:
    """``x[..., idx, ...]`` with integer index tensors: indexed dims are fixed (the index
    picks positions), the index tensors' dims are tied to the output dims they make,
    and the other dims of ``x`` pass through (a gathered bias table keeps its heads)."""
    b = bind(node)
    x = dims(ctx, b["self"])
    indices = list(b["indices"])
    out = fresh(ctx, node)
    idx_dims = [dims(ctx, t) if t is not None else None for t in indices]
    bad = any(t is not None and (d is None or _is_bool(t)) for t, d in zip(indices, idx_dims))
    if x is None or bad:
        return unknown(ctx, node)
    adv = [i for i, t in enumerate(indices) if t is not None]
    if len(adv) == 1 and _constant_run(ctx, indices[adv[0]], ctx.vars.size[x[adv[0]]]):
        return _index_as_slice(ctx, node, x, adv[0], indices[adv[0]])
    rank = max((len(d) for d in idx_dims if d is not None), default=0)
    rest = [i for i in range(len(x)) if i not in adv]
    contiguous = adv == list(range(adv[0], adv[-1] + 1)) if adv else True
    lead = [i for i in rest if i < adv[0]] if adv and contiguous else []
    tail = [i for i in rest if i not in lead]
    if len(out) != len(lead) + rank + len(tail):
        return unknown(ctx, node)
    vs = ctx.vars
    for i in adv:
        vs.freeze(x[i], "index")
    made = out[len(lead) : len(lead) + rank]
    for d in idx_dims:
        if d is not None:
            unify_trailing(ctx, made, d, "index")
    for o, i in zip(out[: len(lead)] + out[len(lead) + rank :], lead + tail):
        vs.union(o, x[i], "index")
    return out


_COPIES = {"lift_fresh_copy", "clone", "_to_copy", "to", "detach", "alias"}


def _constant_value(ctx: Context, node: Any) -> torch.Tensor | None:
    """The value of a small constant tensor (a lifted ``torch.tensor([...])``), if known."""
    while isinstance(node, torch.fx.Node):
        if node.name in ctx.constants:
            return ctx.constants[node.name]
        if node.op != "call_function" or op_name(node) not in _COPIES or not node.args:
            return None
        node = node.args[0]
    return None


def _constant_run(ctx: Context, index: Any, n: int) -> bool:
    """A constant 1-D index of consecutive positions (``[-2]``, ``[3, 4, 5]``)."""
    value = _constant_value(ctx, index)
    if value is None or value.dim() != 1 or value.numel() == 0 or value.is_floating_point():
        return False
    pos = [int(i) % n if -n <= int(i) < n else -1 for i in value.tolist()]
    return min(pos) >= 0 and pos == list(range(pos[0], pos[0] + len(pos)))


def _index_as_slice(
    ctx: Context, node: torch.fx.Node, x: Dims, dim: int, index: torch.fx.Node
) -> Dims:
    """``x[..., [a, a+1, ...], ...]`` selects a run of positions: a slice, not a gather."""
    value = _constant_value(ctx, index)
    n = ctx.vars.size[x[dim]]
    start = int(value[0]) % n if value is not None else 0
    stop = start + (value.numel() if value is not None else n)
    bounds = [0, *[c for c in (start, stop) if 0 < c < n], n]
    parts = [ctx.vars.new(hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    ctx.vars.define(x[dim], CAT, parts, "index")
    out = fresh(ctx, node)
    for i, (o, v) in enumerate(zip(out, x)):
        ctx.vars.union(o, parts[bounds.index(start)] if i == dim else v, "index")
    return out


def index_select(ctx: Context, node: torch.fx.Node) -> Dims:
    """``index_select(x, dim, index)``: ``x[..., index, ...]`` along ``dim``."""
    b = bind(node)
    x, idx = dims(ctx, b["self"]), dims(ctx, b["index"])
    out = fresh(ctx, node)
    if x is None or idx is None or len(idx) != 1 or len(out) != len(x):
        return unknown(ctx, node)
    dim = norm_dim(int(b["dim"]), len(x))
    if _constant_run(ctx, b["index"], ctx.vars.size[x[dim]]):
        return _index_as_slice(ctx, node, x, dim, b["index"])
    ctx.vars.freeze(x[dim], "index_select")
    for i, (o, v) in enumerate(zip(out, x)):
        ctx.vars.union(o, idx[0] if i == dim else v, "index_select")
    return out


def _is_bool(t: Any) -> bool:
    val = t.meta.get("val") if isinstance(t, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype == torch.bool


def gather(ctx: Context, node: torch.fx.Node) -> Dims:
    """``gather(x, dim, index)``: picks positions of ``x`` along ``dim`` (fixed); the
    output has the index's shape, and every other dim lines up with ``x`` and index."""
    b = bind(node)
    x, idx = dims(ctx, b["self"]), dims(ctx, b["index"])
    out = fresh(ctx, node)
    if x is None or idx is None or len(x) != len(idx) or len(out) != len(idx):
        return unknown(ctx, node)
    dim = norm_dim(int(b["dim"]), len(x))
    vs = ctx.vars
    vs.freeze(x[dim], "gather")
    for i, (o, j) in enumerate(zip(out, idx)):
        vs.union(o, j, "gather")
        if i == dim:
            continue
        if vs.size[x[i]] == vs.size[o]:
            vs.union(o, x[i], "gather")
        else:
            vs.freeze(x[i], "gather (a prefix)")
            vs.freeze(o, "gather (a prefix)")
    return out
