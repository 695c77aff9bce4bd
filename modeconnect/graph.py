"""Derive a :class:`~modeconnect.spec.PermutationSpec` from a model's graph.

The model is traced with ``torch.export.export(strict=False)`` (used as
exported, without decompositions, so heads and norms keep their structure).
Every dimension of every tensor in the graph gets an *axis variable*; each op
relates the variables of its inputs and outputs (union-find), and a variable
may be *defined* as a concatenation or a row-major product of others. After
the pass, every class that touches a model input or output, or that an op
could not prove safe, is frozen; the remaining classes that reach a parameter
axis become the permutation groups.

The rules follow Git Re-Basin (Ainsworth et al. 2023): a linear map opens a
new group on its output and ties its input to what feeds it; elementwise ops
and norms pass groups through; ``add`` unifies residual streams. The pass is
linear in the number of graph nodes (near-constant union-find operations per
node).
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .errors import ModeconnectError
from .spec import (
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
    leaves,
)

aten = torch.ops.aten

# ----------------------------------------------------------------------------
# Union-find over axis variables
# ----------------------------------------------------------------------------

_PROD, _CAT = "product", "concat"


class _Vars:
    """Axis variables with union-find, freezing, and concat/product definitions."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[str | None] = []  # reason, on roots
        self.active: list[bool] = []  # touches an activation (not parameter-only)
        self.mixed: list[bool] = []  # some op mixes values along this axis
        self.defs: dict[int, tuple[str, list[int]]] = {}

    def new(self, size: int, *, active: bool = True, frozen: str | None = None) -> int:
        v = len(self.parent)
        self.parent.append(v)
        self.size.append(size)
        self.frozen.append(frozen if frozen is not None else (None if size != 1 else "size 1"))
        self.active.append(active)
        self.mixed.append(False)
        return v

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: int, b: int, why: str = "") -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.freeze(ra, f"{why}: sizes {self.size[ra]} and {self.size[rb]} do not match")
            self.freeze(rb, f"{why}: sizes {self.size[ra]} and {self.size[rb]} do not match")
            return
        self.parent[rb] = ra
        self.active[ra] = self.active[ra] or self.active[rb]
        self.mixed[ra] = self.mixed[ra] or self.mixed[rb]
        da, db = self.defs.pop(ra, None), self.defs.pop(rb, None)
        reason = self.frozen[ra] or self.frozen[rb]
        if da is not None:
            self.defs[ra] = da
        elif db is not None:
            self.defs[ra] = db
        if da is not None and db is not None:
            self.unify_sequences(da[0], da[1], db[1], why) if da[0] == db[0] else self._freeze_all(
                da[1] + db[1], f"{why}: a concatenated axis meets a reshaped axis"
            )
        if reason:
            self.freeze(ra, reason)

    def freeze(self, v: int, reason: str) -> None:
        """Fix ``v``'s class to the identity, and with it every factor or part of it."""
        stack, seen = [v], set()
        while stack:
            r = self.find(stack.pop())
            if r in seen:
                continue
            seen.add(r)
            if self.frozen[r] is None:
                self.frozen[r] = reason
            if r in self.defs:
                stack.extend(self.defs[r][1])

    def _freeze_all(self, vs: Sequence[int], reason: str) -> None:
        for v in vs:
            self.freeze(v, reason)

    def define(self, v: int, kind: str, parts: list[int], why: str) -> None:
        """Declare ``v`` to be the concatenation or product of ``parts``."""
        parts = [p for p in parts if kind == _CAT or self.size[p] != 1]
        if len(parts) == 1:
            self.union(v, parts[0], why)
            return
        r = self.find(v)
        existing = self.defs.get(r)
        if existing is None:
            self.defs[r] = (kind, parts)
            if self.frozen[r] is not None:
                self._freeze_all(parts, self.frozen[r] or why)
        elif existing[0] == kind:
            self.unify_sequences(kind, existing[1], parts, why)
        else:
            self._freeze_all(existing[1] + parts + [v], f"{why}: a concatenated axis is reshaped")

    def _flat(self, kind: str, vs: Sequence[int]) -> list[int]:
        out: list[int] = []
        for v in vs:
            d = self.defs.get(self.find(v))
            if d is not None and d[0] == kind:
                out.extend(self._flat(kind, d[1]))
            elif kind == _CAT or self.size[v] != 1:
                out.append(v)
        return out

    def unify_sequences(self, kind: str, xs: Sequence[int], ys: Sequence[int], why: str) -> None:
        """Relate two factorizations (product) or splittings (concat) of one axis.

        Both sides are refined to common atoms: for products the atom sizes
        come from greatest common divisors (``[2, 12]`` and ``[6, 4]`` share
        ``[2, 3, 4]``), for concatenations from the union of the cut points.
        Each variable is then defined as the product/concat of its atoms. Two
        factorizations with no common refinement (``[2, 3]`` against ``[3, 2]``,
        a reshape that really mixes dimensions) freeze both sides.
        """
        xs, ys = self._flat(kind, xs), self._flat(kind, ys)
        if kind == _CAT:
            xs = [x for x in xs if self.size[x] > 0]
            ys = [y for y in ys if self.size[y] > 0]
        step = math.gcd if kind == _PROD else min
        atoms_x: list[list[int]] = [[] for _ in xs]
        atoms_y: list[list[int]] = [[] for _ in ys]
        i = j = 0
        rx = self.size[xs[0]] if xs else 0
        ry = self.size[ys[0]] if ys else 0
        while i < len(xs) and j < len(ys):
            g = step(rx, ry)
            if g <= (1 if kind == _PROD else 0):
                self._freeze_all(list(xs) + list(ys), f"{why}: reshape mixes dimensions")
                return
            atom = self.new(g)
            atoms_x[i].append(atom)
            atoms_y[j].append(atom)
            rx, ry = (rx // g, ry // g) if kind == _PROD else (rx - g, ry - g)
            if rx == (1 if kind == _PROD else 0):
                i += 1
                rx = self.size[xs[i]] if i < len(xs) else 0
            if ry == (1 if kind == _PROD else 0):
                j += 1
                ry = self.size[ys[j]] if j < len(ys) else 0
        if i < len(xs) or j < len(ys):
            self._freeze_all(list(xs) + list(ys), f"{why}: shapes do not factor")
            return
        for v, atoms in [*zip(xs, atoms_x), *zip(ys, atoms_y)]:
            self.define(v, kind, atoms, why)


# ----------------------------------------------------------------------------
# Op rules
# ----------------------------------------------------------------------------

Dims = list[int]


@dataclass
class _Ctx:
    vars: _Vars
    env: dict[str, Any]  # node name -> Dims, or a tuple/list of Dims
    sites: list[tuple[str, int]] = field(default_factory=list)  # (node, dim) read by a layer
    params: dict[str, Dims] = field(default_factory=dict)  # state-dict key -> axis variables


def _site(ctx: _Ctx, arg: Any, dim: int) -> None:
    """Record that a layer reads ``arg`` along ``dim``: a place to observe unit activations."""
    d = _dims(ctx, arg)
    if isinstance(arg, torch.fx.Node) and d is not None and d:
        ctx.sites.append((arg.name, _norm_dim(dim, len(d))))


def _bind(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = _a(node)[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


def _a(node: torch.fx.Node) -> tuple[Any, ...]:
    """The node's positional arguments, untyped (fx types them as a wide union)."""
    return tuple(node.args)


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def _fresh(ctx: _Ctx, node: torch.fx.Node, frozen: str | None = None) -> Dims:
    shape = _shape(node) or ()
    return [ctx.vars.new(s, frozen=frozen) for s in shape]


def _dims(ctx: _Ctx, arg: Any) -> Dims | None:
    if isinstance(arg, torch.fx.Node):
        d = ctx.env.get(arg.name)
        return d if isinstance(d, list) and all(isinstance(x, int) for x in d) else None
    return None


def _mix(ctx: _Ctx, v: int) -> None:
    ctx.vars.mixed[ctx.vars.find(v)] = True


def _norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def _broadcast(ctx: _Ctx, node: torch.fx.Node, operands: Sequence[Any]) -> Dims:
    """Elementwise ops: unify the trailing-aligned non-broadcast dims of every tensor operand."""
    out = _fresh(ctx, node)
    for arg in operands:
        d = _dims(ctx, arg)
        if d is None:
            continue
        for k in range(1, len(d) + 1):
            if k <= len(out) and ctx.vars.size[d[-k]] == ctx.vars.size[out[-k]]:
                ctx.vars.union(out[-k], d[-k], str(node.target))
    return out


def _rule_linear(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    b = _bind(node)
    x, w = _dims(ctx, b["input"]), _dims(ctx, b["weight"])
    out = _fresh(ctx, node)
    if x is None or w is None:
        return _rule_unknown(ctx, node)
    for i in range(len(x) - 1):
        ctx.vars.union(out[i], x[i], "linear")
    ctx.vars.union(x[-1], w[1], "linear")
    _mix(ctx, x[-1])
    _site(ctx, b["input"], -1)
    ctx.vars.union(out[-1], w[0], "linear")
    bias = _dims(ctx, b.get("bias"))
    if bias is not None:
        ctx.vars.union(out[-1], bias[0], "linear")
    return out


def _rule_addmm(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    # addmm(bias, x, w) = bias + x @ w : Hugging Face Conv1D stores w as (in, out).
    b = _bind(node)
    bias, x, w = _dims(ctx, b["self"]), _dims(ctx, b["mat1"]), _dims(ctx, b["mat2"])
    out = _fresh(ctx, node)
    if x is None or w is None:
        return _rule_unknown(ctx, node)
    ctx.vars.union(out[0], x[0], "addmm")
    ctx.vars.union(x[1], w[0], "addmm")
    _mix(ctx, x[1])
    _site(ctx, b["mat1"], 1)
    ctx.vars.union(out[1], w[1], "addmm")
    if bias is not None:
        ctx.vars.union(out[-1], bias[-1], "addmm")
    return out


def _rule_matmul(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    args = node.args
    a, c = _dims(ctx, args[0]), _dims(ctx, args[1])
    out = _fresh(ctx, node)
    if a is None or c is None or len(a) < 2 or len(c) < 2:
        return _rule_unknown(ctx, node)
    ctx.vars.union(a[-1], c[-2], "matmul")
    _mix(ctx, a[-1])
    ctx.vars.union(out[-2], a[-2], "matmul")
    ctx.vars.union(out[-1], c[-1], "matmul")
    for k in range(3, len(out) + 1):
        for d in (a, c):
            if k <= len(d) and ctx.vars.size[d[-k]] == ctx.vars.size[out[-k]]:
                ctx.vars.union(out[-k], d[-k], "matmul")
    return out


def _rule_conv(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    b = _bind(node)
    x, w = _dims(ctx, b["input"]), _dims(ctx, b["weight"])
    bias = _dims(ctx, b.get("bias"))
    groups = int(b.get("groups") or 1)
    transposed = bool(b.get("transposed", False))
    out = _fresh(ctx, node)
    if x is None or w is None:
        return _rule_unknown(ctx, node)
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
    _mix(ctx, cin)
    _site(ctx, b["input"], 1)
    if groups == 1:
        vs.union(cin, w_in, "conv")
        if not transposed:
            vs.union(cout, w_out, "conv")
        else:
            vs.union(cout, w_out, "conv")
        return out
    # Grouped convolution: channels are (group, channel within group) on both
    # sides; whole groups move together and each side permutes within a group.
    g = vs.new(groups)
    gi = vs.new(vs.size[cin] // groups)
    go = vs.new(vs.size[cout] // groups)
    vs.define(cin, _PROD, [g, gi], "grouped conv")
    vs.define(cout, _PROD, [g, go], "grouped conv")
    if transposed:
        vs.define(w_in, _PROD, [g, gi], "grouped conv")
        vs.union(w_out, go, "grouped conv")
    else:
        vs.define(w_out, _PROD, [g, go], "grouped conv")
        vs.union(w_in, gi, "grouped conv")
    return out


def _rule_batch_norm(ctx: _Ctx, node: torch.fx.Node) -> Any:
    b = _bind(node)
    x = _dims(ctx, b["input"])
    if x is None:
        return _rule_unknown(ctx, node)
    for name in ("weight", "bias", "running_mean", "running_var"):
        d = _dims(ctx, b.get(name))
        if d is not None:
            ctx.vars.union(x[1], d[0], "batch_norm")
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        first = list(x)
        rest = [_fresh_from_val(ctx, v) for v in val[1:]]
        for r in rest:  # saved mean / invstd per channel in training mode
            if r and ctx.vars.size[r[-1]] == ctx.vars.size[x[1]]:
                ctx.vars.union(r[-1], x[1], "batch_norm")
        return [first, *rest]
    return list(x)


def _fresh_from_val(ctx: _Ctx, val: Any) -> Dims:
    if isinstance(val, torch.Tensor):
        return [ctx.vars.new(int(s)) for s in val.shape]
    return []


def _rule_layer_norm(ctx: _Ctx, node: torch.fx.Node) -> Any:
    b = _bind(node)
    x = _dims(ctx, b["input"])
    if x is None:
        return _rule_unknown(ctx, node)
    k = len(b["normalized_shape"])
    for name in ("weight", "bias"):
        d = _dims(ctx, b.get(name))
        if d is not None:
            for i in range(1, k + 1):
                ctx.vars.union(x[-i], d[-i], "layer_norm")
    for i in range(1, k + 1):
        _mix(ctx, x[-i])
    return _maybe_tuple(ctx, node, list(x))


def _rule_rms_norm(ctx: _Ctx, node: torch.fx.Node) -> Any:
    return _rule_layer_norm(ctx, node)


def _rule_group_norm(ctx: _Ctx, node: torch.fx.Node) -> Any:
    b = _bind(node)
    x = _dims(ctx, b["input"])
    if x is None:
        return _rule_unknown(ctx, node)
    groups = int(b["num_groups"])
    vs = ctx.vars
    c = x[1]
    if groups > 1:
        g, inner = vs.new(groups), vs.new(vs.size[c] // groups)
        vs.define(c, _PROD, [g, inner], "group_norm")
    _mix(ctx, c)
    for name in ("weight", "bias"):
        d = _dims(ctx, b.get(name))
        if d is not None:
            vs.union(c, d[0], "group_norm")
    return _maybe_tuple(ctx, node, list(x))


def _maybe_tuple(ctx: _Ctx, node: torch.fx.Node, first: Dims) -> Any:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return [first, *[_fresh_from_val(ctx, v) for v in val[1:]]]
    return first


def _rule_embedding(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    b = _bind(node)
    w, idx = _dims(ctx, b["weight"]), _dims(ctx, b["indices"])
    out = _fresh(ctx, node)
    if w is None:
        return _rule_unknown(ctx, node)
    ctx.vars.freeze(w[0], "vocabulary axis of an embedding")
    if idx is not None:
        for i, v in enumerate(idx):
            ctx.vars.union(out[i], v, "embedding")
    ctx.vars.union(out[-1], w[1], "embedding")
    return out


def _rule_sdpa(ctx: _Ctx, node: torch.fx.Node) -> Any:
    b = _bind(node)
    q, k, v = (_dims(ctx, b[n]) for n in ("query", "key", "value"))
    out = _fresh(ctx, node)
    if q is None or k is None or v is None:
        return _rule_unknown(ctx, node)
    vs = ctx.vars
    vs.union(q[-1], k[-1], "attention: query and key dims")
    _mix(ctx, q[-1])
    for name in ("query", "key", "value"):
        _site(ctx, b[name], -1)
    vs.union(k[-2], v[-2], "attention: key and value positions")
    _mix(ctx, k[-2])
    for i in range(len(q) - 2):
        for d in (k, v):
            if len(d) == len(q):
                vs.union(q[i], d[i], "attention batch dims")
    for i in range(len(out) - 1):
        vs.union(out[i], q[i], "attention")
    vs.union(out[-1], v[-1], "attention")
    mask = _dims(ctx, b.get("attn_mask"))
    if mask is not None:
        for v_ in mask:
            vs.freeze(v_, "attention mask")
    return _maybe_tuple(ctx, node, out)


def _rule_identity(ctx: _Ctx, node: torch.fx.Node) -> Any:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    return list(x)


def _rule_elementwise(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    return _broadcast(ctx, node, list(node.args) + list(node.kwargs.values()))


def _rule_where(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    return _broadcast(ctx, node, node.args)


def _rule_softmax(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    _mix(ctx, x[_norm_dim(int(_a(node)[1]), len(x))])
    return list(x)


def _rule_reduce(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    """sum / mean / amax over some dims: the other dims pass through."""
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    b = _bind(node)
    dims = b.get("dim")
    if dims is None:
        red = list(range(len(x)))
    else:
        red = [_norm_dim(d, len(x)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        red = red or list(range(len(x)))
    keep = bool(b.get("keepdim", False))
    for d in red:
        _mix(ctx, x[d])
    out: Dims = []
    for i, v in enumerate(x):
        if i not in red:
            out.append(v)
        elif keep:
            out.append(ctx.vars.new(1))
    return out


def _rule_pool(ctx: _Ctx, node: torch.fx.Node) -> Any:
    """Pooling keeps batch and channel dims and fixes the spatial ones."""
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    val = node.meta.get("val")
    vals = list(val) if isinstance(val, (tuple, list)) else [val]
    outs = [_fresh_from_val(ctx, v) for v in vals]
    lead = len(x) - _pool_spatial(node)
    for o in outs:
        for i in range(lead):
            ctx.vars.union(o[i], x[i], "pooling")
        for v in o[lead:]:
            ctx.vars.freeze(v, "spatial axis of a pooling")
    return outs if isinstance(val, (tuple, list)) else outs[0]


def _pool_spatial(node: torch.fx.Node) -> int:
    name = str(node.target)
    return 1 if "1d" in name else 3 if "3d" in name else 2


def _rule_view(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    out = _fresh(ctx, node)
    if x is None:
        return _rule_unknown(ctx, node)
    ctx.vars.unify_sequences(
        _PROD,
        x,
        out,
        f"{_op_name(node)} {list(_shape(_a(node)[0]) or ())} -> {list(_shape(node) or ())}",
    )
    return out


def _rule_transpose(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    out = list(x)
    if len(node.args) >= 3:
        i, j = _norm_dim(int(_a(node)[1]), len(x)), _norm_dim(int(_a(node)[2]), len(x))
        out[i], out[j] = out[j], out[i]
    else:  # aten.t
        out.reverse()
    return out


def _rule_permute(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    return [x[_norm_dim(int(d), len(x))] for d in _a(node)[1]]


def _rule_unsqueeze(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    d = _norm_dim(int(_a(node)[1]), len(x) + 1)
    return x[:d] + [ctx.vars.new(1)] + x[d:]


def _rule_squeeze(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    shape = _shape(_a(node)[0]) or ()
    if len(node.args) > 1:
        dims = _a(node)[1] if isinstance(_a(node)[1], (list, tuple)) else [_a(node)[1]]
        drop = {_norm_dim(int(d), len(x)) for d in dims if shape[_norm_dim(int(d), len(x))] == 1}
    else:
        drop = {i for i, s in enumerate(shape) if s == 1}
    return [v for i, v in enumerate(x) if i not in drop]


def _rule_expand(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    out = _fresh(ctx, node)
    if x is None:
        return _rule_unknown(ctx, node)
    for k in range(1, len(x) + 1):
        if ctx.vars.size[x[-k]] == ctx.vars.size[out[-k]]:
            ctx.vars.union(out[-k], x[-k], "expand")
    return out


def _rule_cat(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    tensors = [t for t in _a(node)[0] if _shape(t) != (0,)]
    parts = [_dims(ctx, t) for t in tensors]
    out = _fresh(ctx, node)
    if any(p is None for p in parts):
        return _rule_unknown(ctx, node)
    dim = _norm_dim(int(_a(node)[1]) if len(node.args) > 1 else 0, len(out))
    for p in parts:
        if p is None:
            return _rule_unknown(ctx, node)
        for i, v in enumerate(p):
            if i != dim:
                ctx.vars.union(out[i], v, "cat")
    ctx.vars.define(out[dim], _CAT, [p[dim] for p in parts if p is not None], "cat")
    return out


def _rule_stack(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    parts = [_dims(ctx, t) for t in _a(node)[0]]
    out = _fresh(ctx, node)
    if any(p is None for p in parts):
        return _rule_unknown(ctx, node)
    dim = _norm_dim(int(_a(node)[1]) if len(node.args) > 1 else 0, len(out))
    rest = out[:dim] + out[dim + 1 :]
    for p in parts:
        if p is None:
            return _rule_unknown(ctx, node)
        for a, b in zip(rest, p):
            ctx.vars.union(a, b, "stack")
    ctx.vars.freeze(out[dim], "stacked axis")
    return out


def _rule_split(ctx: _Ctx, node: torch.fx.Node) -> Any:
    x = _dims(ctx, _a(node)[0])
    vals = node.meta.get("val")
    if x is None or not isinstance(vals, (list, tuple)):
        return _rule_unknown(ctx, node)
    b = _bind(node)
    dim = _norm_dim(int(b.get("dim") or 0), len(x))
    outs = []
    for val in vals:
        o = [ctx.vars.new(int(s)) for s in val.shape]
        for i, v in enumerate(x):
            if i != dim:
                ctx.vars.union(o[i], v, "split")
        outs.append(o)
    ctx.vars.define(x[dim], _CAT, [o[dim] for o in outs], "split")
    return outs


def _rule_slice(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    b = _bind(node)
    dim = _norm_dim(int(b.get("dim") or 0), len(x))
    n = ctx.vars.size[x[dim]]
    start, end, step = b.get("start"), b.get("end"), b.get("step") or 1
    start = 0 if start is None else _norm_dim(int(start), n)
    end = n if end is None else min(_norm_dim(int(end), n) if int(end) < 0 else int(end), n)
    out = list(x)
    if start == 0 and end == n and step == 1:
        return out
    if step != 1:
        ctx.vars.freeze(x[dim], f"strided slice along dim {dim}")
        out[dim] = ctx.vars.new(
            len(range(start, end, step)), frozen=f"strided slice along dim {dim}"
        )
        return out
    cuts = [c for c in (start, end) if 0 < c < n]
    bounds = [0, *cuts, n]
    parts = [ctx.vars.new(hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    ctx.vars.define(x[dim], _CAT, parts, "slice")
    out[dim] = parts[bounds.index(start)]
    return out


def _rule_select(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    dim = _norm_dim(int(_a(node)[1]), len(x))
    n = ctx.vars.size[x[dim]]
    i = _norm_dim(int(_a(node)[2]), n)
    bounds = sorted({0, i, i + 1, n})
    parts = [ctx.vars.new(hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    ctx.vars.define(x[dim], _CAT, parts, "select")
    return x[:dim] + x[dim + 1 :]


def _rule_unbind(ctx: _Ctx, node: torch.fx.Node) -> Any:
    x = _dims(ctx, _a(node)[0])
    if x is None:
        return _rule_unknown(ctx, node)
    dim = _norm_dim(int(_a(node)[1]) if len(node.args) > 1 else 0, len(x))
    n = ctx.vars.size[x[dim]]
    ctx.vars.define(x[dim], _CAT, [ctx.vars.new(1) for _ in range(n)], "unbind")
    rest = x[:dim] + x[dim + 1 :]
    return [list(rest) for _ in range(n)]


def _rule_flatten(ctx: _Ctx, node: torch.fx.Node) -> Dims:
    return _rule_view(ctx, node)


def _rule_getitem(ctx: _Ctx, node: torch.fx.Node) -> Any:
    src = _a(node)[0]
    val = ctx.env.get(src.name) if isinstance(src, torch.fx.Node) else None
    if isinstance(val, (list, tuple)) and val and isinstance(val[0], list):
        return val[int(_a(node)[1])]  # type: ignore[arg-type]
    return _rule_unknown(ctx, node)


def _rule_constant(ctx: _Ctx, node: torch.fx.Node) -> Any:
    return _fresh(ctx, node, frozen="constant created in the graph")


def _rule_passthrough_first(ctx: _Ctx, node: torch.fx.Node) -> Any:
    """Ops that return their first input unchanged in shape (dropout, to, clone...)."""
    return _rule_identity(ctx, node)


def _op_name(node: torch.fx.Node) -> str:
    t = node.target
    name = getattr(t, "__name__", str(t))
    return name.split(".")[0] if isinstance(name, str) else str(t)


def _rule_unknown(ctx: _Ctx, node: torch.fx.Node) -> Any:
    """Anything not understood freezes what it touches."""
    reason = f"unsupported op {_op_name(node)}"
    for arg in _flatten_args(list(node.args) + list(node.kwargs.values())):
        for v in _dims(ctx, arg) or []:
            ctx.vars.freeze(v, reason)
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [_fresh_from_val_frozen(ctx, v, reason) for v in val]
    return _fresh(ctx, node, frozen=reason)


def _fresh_from_val_frozen(ctx: _Ctx, val: Any, reason: str) -> Dims:
    if isinstance(val, torch.Tensor):
        return [ctx.vars.new(int(s), frozen=reason) for s in val.shape]
    return []


def _flatten_args(args: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten_args(a))
        else:
            out.append(a)
    return out


_UNARY = [
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "elu", "leaky_relu", "hardtanh",
    "hardswish", "hardsigmoid", "mish", "softplus", "neg", "exp", "log", "abs", "sqrt", "rsqrt",
    "square",
    "dropout", "feature_dropout", "alpha_dropout", "clone", "contiguous", "_to_copy", "to",
    "detach", "alias", "lift_fresh_copy", "type_as", "relu6", "erf", "sin", "cos", "reciprocal",
    "clamp", "clamp_min", "clamp_max", "pow", "native_dropout", "celu", "selu", "logit",
]  # fmt: skip
_BINARY = [
    "add", "sub", "mul", "div", "maximum", "minimum", "rsub", "true_divide", "floor_divide",
    "masked_fill", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "addcmul",
    "lerp", "pow", "fmod", "remainder", "bitwise_and", "bitwise_or", "copy",
]  # fmt: skip
_CONSTANT = [
    "arange", "full", "zeros", "ones", "empty", "scalar_tensor", "full_like", "zeros_like",
    "ones_like", "empty_like", "rand", "randn", "tensor", "triu", "tril",
]  # fmt: skip

_RULES: dict[str, Callable[[_Ctx, torch.fx.Node], Any]] = {
    "linear": _rule_linear,
    "addmm": _rule_addmm,
    "matmul": _rule_matmul,
    "mm": _rule_matmul,
    "bmm": _rule_matmul,
    "conv1d": _rule_conv,
    "conv2d": _rule_conv,
    "conv3d": _rule_conv,
    "convolution": _rule_conv,
    "conv_transpose1d": _rule_conv,
    "conv_transpose2d": _rule_conv,
    "batch_norm": _rule_batch_norm,
    "_native_batch_norm_legit_no_training": _rule_batch_norm,
    "_native_batch_norm_legit_functional": _rule_batch_norm,
    "native_batch_norm": _rule_batch_norm,
    "layer_norm": _rule_layer_norm,
    "native_layer_norm": _rule_layer_norm,
    "rms_norm": _rule_rms_norm,
    "group_norm": _rule_group_norm,
    "native_group_norm": _rule_group_norm,
    "embedding": _rule_embedding,
    "scaled_dot_product_attention": _rule_sdpa,
    "softmax": _rule_softmax,
    "_softmax": _rule_softmax,
    "log_softmax": _rule_softmax,
    "_log_softmax": _rule_softmax,
    "sum": _rule_reduce,
    "mean": _rule_reduce,
    "amax": _rule_reduce,
    "amin": _rule_reduce,
    "var": _rule_reduce,
    "std": _rule_reduce,
    "max_pool1d": _rule_pool,
    "max_pool2d": _rule_pool,
    "max_pool3d": _rule_pool,
    "max_pool2d_with_indices": _rule_pool,
    "avg_pool1d": _rule_pool,
    "avg_pool2d": _rule_pool,
    "avg_pool3d": _rule_pool,
    "adaptive_avg_pool1d": _rule_pool,
    "adaptive_avg_pool2d": _rule_pool,
    "adaptive_avg_pool3d": _rule_pool,
    "_adaptive_avg_pool2d": _rule_pool,
    "adaptive_max_pool2d": _rule_pool,
    "view": _rule_view,
    "reshape": _rule_view,
    "_unsafe_view": _rule_view,
    "flatten": _rule_flatten,
    "unflatten": _rule_view,
    "transpose": _rule_transpose,
    "t": _rule_transpose,
    "permute": _rule_permute,
    "unsqueeze": _rule_unsqueeze,
    "squeeze": _rule_squeeze,
    "expand": _rule_expand,
    "expand_as": _rule_expand,
    "cat": _rule_cat,
    "concat": _rule_cat,
    "stack": _rule_stack,
    "split": _rule_split,
    "split_with_sizes": _rule_split,
    "chunk": _rule_split,
    "tensor_split": _rule_split,
    "slice": _rule_slice,
    "select": _rule_select,
    "unbind": _rule_unbind,
    "where": _rule_where,
    "getitem": _rule_getitem,
    **{name: _rule_passthrough_first for name in _UNARY},
    **{name: _rule_elementwise for name in _BINARY},
    **{name: _rule_constant for name in _CONSTANT},
}
_IGNORED = {"_assert_tensor_metadata", "sym_size", "_assert_scalar", "sym_constrain_range_for_size",
            "_assert_async", "sym_numel", "sym_storage_offset", "sym_stride"}  # fmt: skip


def _rule_for(node: torch.fx.Node) -> Callable[[_Ctx, torch.fx.Node], Any] | None:
    if node.target is operator.getitem:
        return _rule_getitem
    name = _op_name(node)
    if name in _IGNORED:
        return None
    return _RULES.get(name, _rule_unknown)


# ----------------------------------------------------------------------------
# Tracing and resolution
# ----------------------------------------------------------------------------


def trace(model: nn.Module, example_inputs: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """Export ``model`` for analysis; a model that cannot be traced gets a clear error.

    The model first runs eagerly on the inputs, so that inputs it cannot take are
    reported in one line (not through the tracer's logs); the export runs with
    torch's own error logging silenced, since its failure is reported here.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
        with _quiet_torch_logs():
            return torch.export.export(model, example_inputs, strict=False)
    except Exception as exc:  # torch raises many types here; report them uniformly
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shapes = ", ".join(
            f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            for x in example_inputs
        )
        raise ModeconnectError(
            f"cannot trace {type(model).__name__} with example input {shapes}: "
            f"{type(exc).__name__}: {first[:300]}; pass --input-shape (and --input-dtype) that "
            "the model's forward accepts"
        ) from exc
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Silence torch's loggers below CRITICAL while exporting (a failure is re-raised anyway)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def derive_spec(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    permute_output: bool = False,
) -> PermutationSpec:
    """The permutation spec of ``model``, derived from its traced graph.

    ``permute_output=True`` says the model's outputs (hidden states of a
    feature extractor) may come back permuted; by default they stay fixed.
    """
    program = trace(model, example_inputs)
    sig = program.graph_signature
    keys = set(model.state_dict(keep_vars=True))
    param_of = {
        name: key
        for name, key in {**sig.inputs_to_parameters, **sig.inputs_to_buffers}.items()
        if key in keys
    }
    vs = _Vars()
    ctx = _Ctx(vs, {})
    param_dims: dict[str, Dims] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            key = param_of.get(node.name)
            shape = _shape(node) or ()
            if key is not None:
                ctx.env[node.name] = [vs.new(s, active=False) for s in shape]
                param_dims[key] = ctx.env[node.name]
                ctx.params[key] = ctx.env[node.name]
            else:
                ctx.env[node.name] = [vs.new(s, frozen="model input") for s in shape]
        elif node.op == "call_function":
            rule = _rule_for(node)
            if rule is not None:
                ctx.env[node.name] = rule(ctx, node)
        elif node.op == "output" and not permute_output:
            for arg in _flatten_args(list(node.args)):
                for v in _dims(ctx, arg) or []:
                    vs.freeze(v, "model output")
    aliases = _aliases(model)
    for key, source in aliases.items():  # tied weights: the graph may use either name
        for u, v in zip(param_dims.get(key, []), param_dims.get(source, [])):
            vs.union(u, v, "tied weights")
    spec = _resolve(vs, param_dims, aliases)
    return replace(spec, sites=_sites(vs, ctx, spec))


def _sites(vs: _Vars, ctx: _Ctx, spec: PermutationSpec) -> dict[str, tuple[ActivationSite, ...]]:
    """For each group, the activations that layers read along an axis carrying the group."""
    leaf_names: dict[int, str] = {}
    for g in spec.groups.values():
        for m in g.members:
            v = ctx.params[m.key][m.axis]
            leaf_names.update(_leaf_name_map(vs, v, spec.layouts[m.key][m.axis]))
    by_group: dict[str, list[ActivationSite]] = {}
    for node, dim in dict.fromkeys(ctx.sites):
        dims = ctx.env.get(node)
        if not isinstance(dims, list) or dim >= len(dims):
            continue
        layout = _layout(vs, dims[dim], leaf_names, create=False)
        for group in dict.fromkeys(lf.group for lf in leaves(layout)):
            by_group.setdefault(group, []).append(ActivationSite(node, dim, layout))
    return {g: tuple(v) for g, v in by_group.items()}


def _leaf_name_map(vs: _Vars, v: int, layout: Layout) -> dict[int, str]:
    """Pair each leaf root under variable ``v`` with the group name its layout gave it."""
    roots = [vs.find(r) for r in _leaf_roots(vs, v)]
    return dict(zip(roots, [lf.group for lf in leaves(layout)]))


def _aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys that share a tensor with an earlier key (tied weights)."""
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    )
    for key, tensor in named:
        first = seen.setdefault(id(tensor), key)
        if first != key:
            aliases[key] = first
    return aliases


def _resolve(vs: _Vars, param_dims: dict[str, Dims], aliases: dict[str, str]) -> PermutationSpec:
    for dims in param_dims.values():
        for v in dims:
            r = vs.find(v)
            if not vs.active[r] and r not in vs.defs:
                vs.freeze(r, "parameter axis that never meets an activation")
    for r in list(vs.defs):  # freezing reaches factors of frozen axes
        if vs.find(r) == r and vs.frozen[r] is not None:
            vs.freeze(r, vs.frozen[r] or "")
    names: dict[int, str] = {}
    layouts: dict[str, tuple[Layout, ...]] = {}
    members: dict[int, list[Member]] = {}
    fixed: list[FixedAxis] = []
    for key in sorted(param_dims, key=list(param_dims).index):
        dims = param_dims[key]
        axis_layouts = []
        for axis, v in enumerate(dims):
            layout = _layout(vs, v, names)
            axis_layouts.append(layout)
            for leaf_root in {vs.find(r) for r in _leaf_roots(vs, v)}:
                members.setdefault(leaf_root, []).append(Member(key, axis))
            if isinstance(layout, Fixed) and vs.size[v] > 1:
                fixed.append(FixedAxis(key, axis, vs.size[v], _reason(vs, v)))
        layouts[key] = tuple(axis_layouts)
    batch = _batched(vs, param_dims, names)
    groups = {
        name: PermGroup(name, vs.size[r], tuple(members.get(r, ())), batch.get(r))
        for r, name in names.items()
    }
    return PermutationSpec(groups, layouts, tuple(fixed), aliases)


def _layout(vs: _Vars, v: int, names: dict[int, str], create: bool = True) -> Layout:
    """The layout of variable ``v``; new leaves get the next group name (or, with
    ``create=False``, count as fixed: they reach no parameter)."""
    r = vs.find(v)
    if vs.frozen[r] is not None:
        return Fixed(vs.size[r])
    d = vs.defs.get(r)
    if d is None:
        if r not in names and not create:
            return Fixed(vs.size[r])
        name = names.setdefault(r, f"P{len(names)}")
        return Leaf(name, vs.size[r])
    children = tuple(_layout(vs, c, names, create) for c in d[1])
    if all(isinstance(c, Fixed) for c in children):
        return Fixed(vs.size[r])
    return Concat(children) if d[0] == _CAT else Product(children)


def _reason(vs: _Vars, v: int) -> str:
    """Why an axis ended up fixed: its own reason, or the first of its parts'."""
    r = vs.find(v)
    if vs.frozen[r] is not None and vs.frozen[r] != "size 1":
        return vs.frozen[r] or ""
    for c in vs.defs.get(r, ("", []))[1]:
        if vs.size[c] > 1:
            return _reason(vs, c)
    return vs.frozen[r] or "fixed"


def _leaf_roots(vs: _Vars, v: int) -> list[int]:
    r = vs.find(v)
    if vs.frozen[r] is not None:
        return []
    d = vs.defs.get(r)
    if d is None:
        return [r]
    return [x for c in d[1] for x in _leaf_roots(vs, c)]


def _batched(vs: _Vars, param_dims: dict[str, Dims], names: dict[int, str]) -> dict[int, str]:
    """Inner groups that may carry one permutation per block of their outer group.

    Sound when the inner group only ever appears right after the same outer
    group inside products (heads × head dim, groups × channels), never alone on
    a parameter axis, and no op mixes values across the outer group.
    """
    outer_of: dict[int, int | None] = {}
    for r, (kind, children) in vs.defs.items():
        if vs.find(r) != r:
            continue
        roots = [vs.find(c) for c in children]
        for k, c in enumerate(roots):
            if c not in names:
                continue
            prev = roots[k - 1] if kind == _PROD and k > 0 else None
            if prev is None or prev not in names:
                outer_of[c] = None
            else:
                outer_of[c] = prev if outer_of.get(c, prev) == prev else None
    for dims in param_dims.values():
        for v in dims:
            outer_of[vs.find(v)] = None
    return {
        c: names[o] for c, o in outer_of.items() if o is not None and not vs.mixed[o] and c in names
    }


class GraphRunner:
    """Runs a model's exported graph with any state dict and returns chosen intermediate values.

    Exports once per input shape (``torch.export`` specialises on shapes) and
    feeds parameters and buffers from the given state dict, so activations of
    A and B come from the same graph whose node names the spec's sites use.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._programs: dict[tuple[Any, ...], torch.export.ExportedProgram] = {}

    def program(self, inputs: Sequence[Any]) -> torch.export.ExportedProgram:
        key = tuple(
            (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else repr(x) for x in inputs
        )
        if key not in self._programs:
            self._programs[key] = trace(self.model, tuple(inputs))
        return self._programs[key]

    def run(
        self, state_dict: Mapping[str, torch.Tensor], inputs: Sequence[Any], nodes: Collection[str]
    ) -> dict[str, torch.Tensor]:
        """The outputs of graph ``nodes`` when the model runs on ``inputs`` with ``state_dict``."""
        program = self.program(inputs)
        args = _program_args(program, state_dict, inputs)
        wanted = set(nodes)
        captured: dict[str, torch.Tensor] = {}

        class _Capture(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in wanted:
                    captured[n.name] = out
                return out

        with torch.no_grad():
            _Capture(program.graph_module).run(*args)
        return captured


def _program_args(
    program: torch.export.ExportedProgram,
    state_dict: Mapping[str, torch.Tensor],
    inputs: Sequence[Any],
) -> list[Any]:
    from torch.export.graph_signature import InputKind

    user = iter(inputs)
    args: list[Any] = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            args.append(next(user))
        elif spec.target in state_dict:
            args.append(state_dict[spec.target])
        elif spec.target in program.constants:
            args.append(program.constants[spec.target])
        else:
            args.append(program.state_dict[spec.target])
    return args
