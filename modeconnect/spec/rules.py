"""The op rules by name: what each ``aten`` op of the exported graph does to permutation groups.

Elementwise ops and activations pass groups through and ``add``/``mul`` unify the
groups of their operands (residual streams become one group, as in Git Re-Basin's
ResNet spec). In-place variants (``add_``, ``relu_``, ``hardtanh_``, ``silu_``,
``dropout_``: torchvision's ``out += identity`` and ``inplace=True`` activations)
relate their axes exactly as their out-of-place twins do, so they share the twin's
rule; the graph is analysed as exported, without a functionalisation pass.
Anything else freezes what it touches (:func:`~modeconnect.spec.context.unknown`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch

from . import rules_attention, rules_layers, rules_shape
from .context import (
    Context,
    Dims,
    args,
    bind,
    broadcast,
    dims,
    fresh,
    fresh_from_val,
    norm_dim,
    op_name,
    unknown,
)

Rule = Callable[[Context, torch.fx.Node], Any]


def elementwise(ctx: Context, node: torch.fx.Node) -> Dims:
    return broadcast(ctx, node, list(node.args) + list(node.kwargs.values()))


def passthrough(ctx: Context, node: torch.fx.Node) -> Any:
    """Ops that keep their first input's shape and positions (activations, dropout, casts)."""
    x = dims(ctx, args(node)[0]) if node.args else None
    if x is None:
        return unknown(ctx, node)
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):  # native_dropout: (output, mask)
        return [list(x), *[_same(ctx, x, v) for v in val[1:]]]
    return list(x)


def _same(ctx: Context, x: Dims, val: Any) -> Dims:
    d = fresh_from_val(ctx, val)
    if len(d) == len(x):
        for u, v in zip(d, x):
            ctx.vars.union(u, v, "passthrough")
    return d


def constant(ctx: Context, node: torch.fx.Node) -> Any:
    """A tensor created in the graph (``arange``, ``randn``...) is fixed."""
    return fresh(ctx, node, frozen=f"constant created by {op_name(node)}")


def uniform(ctx: Context, node: torch.fx.Node) -> Any:
    """``zeros``/``ones``/``full``: the same value everywhere, so any permutation of its axes
    is harmless (T5's zero position bias in cross-attention) -- unless an in-place op
    later writes into it by position (Swin's shift mask), which fixes it."""
    if node.name in ctx.mutated:
        return constant(ctx, node)
    return fresh(ctx, node)


def triangular(ctx: Context, node: torch.fx.Node) -> Dims:
    """``triu``/``tril`` keep or zero entries by position along the last two dims."""
    x = dims(ctx, args(node)[0])
    if x is None or len(x) < 2:
        return unknown(ctx, node)
    return rules_shape.along_dims(ctx, node, [len(x) - 2, len(x) - 1], op_name(node))


def reduce(ctx: Context, node: torch.fx.Node) -> Dims:
    """``sum``/``mean``/``amax``... over some dims: the other dims pass through."""
    x = dims(ctx, args(node)[0])
    if x is None:
        return unknown(ctx, node)
    b = bind(node)
    which = b.get("dim")
    if which is None:
        red = list(range(len(x)))
    else:
        axes = which if isinstance(which, (list, tuple)) else [which]
        red = [norm_dim(int(d), len(x)) for d in axes] or list(range(len(x)))
    keep = bool(b.get("keepdim", False))
    for d in red:
        ctx.vars.mix(x[d])
    out: Dims = []
    for i, v in enumerate(x):
        if i not in red:
            out.append(v)
        elif keep:
            out.append(ctx.vars.new(1))
    return out


def reduce_pair(ctx: Context, node: torch.fx.Node) -> Any:
    """``var_mean``/``std_mean``: two reductions over the same dims."""
    out = reduce(ctx, node)
    return [out, list(out)]


def arg_reduce(ctx: Context, node: torch.fx.Node) -> Any:
    """``argmax``/``argmin``/``topk``/``sort``: the result names positions along ``dim``,
    so that dim is fixed; the other dims pass through."""
    b = bind(node)
    x = dims(ctx, args(node)[0])
    which = b.get("dim")
    if x is None or which is None:
        return unknown(ctx, node)
    d = norm_dim(int(which), len(x))
    ctx.vars.freeze(x[d], op_name(node))
    val = node.meta.get("val")
    vals = list(val) if isinstance(val, (tuple, list)) else [val]
    outs = []
    for v in vals:
        o = fresh_from_val(ctx, v, frozen=None)
        for i, u in enumerate(x):
            j = i if len(o) == len(x) else (i if i < d else i - 1)
            if i != d and 0 <= j < len(o):
                ctx.vars.union(o[j], u, op_name(node))
            elif i == d and len(o) == len(x):
                ctx.vars.freeze(o[j], op_name(node))
        outs.append(o)
    return outs if isinstance(val, (tuple, list)) else outs[0]


def pool(ctx: Context, node: torch.fx.Node) -> Any:
    """Pooling and upsampling keep batch and channel dims and fix the spatial ones."""
    x = dims(ctx, args(node)[0])
    if x is None:
        return unknown(ctx, node)
    val = node.meta.get("val")
    vals = list(val) if isinstance(val, (tuple, list)) else [val]
    outs = [fresh_from_val(ctx, v) for v in vals]
    name = op_name(node)
    spatial = 1 if "1d" in name else 3 if "3d" in name else 2
    lead = len(x) - spatial
    for o in outs:
        if len(o) != len(x):
            return unknown(ctx, node)
        for i in range(lead):
            ctx.vars.union(o[i], x[i], "pooling")
        for v in o[lead:]:
            ctx.vars.freeze(v, "spatial axis of a pooling")
    return outs if isinstance(val, (tuple, list)) else outs[0]


_UNARY = [
    "relu", "gelu", "silu", "sigmoid", "tanh", "elu", "leaky_relu", "hardtanh", "hardswish",
    "hardsigmoid", "mish", "softplus", "neg", "exp", "log", "abs", "sqrt", "rsqrt", "square",
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout",
    "clone", "contiguous", "_to_copy", "to", "detach", "alias", "lift_fresh_copy", "type_as",
    "relu6", "erf", "sin", "cos", "reciprocal", "celu",
    "selu", "logit", "log1p", "expm1", "sign", "floor", "ceil", "round", "trunc", "exp2",
    "log2", "bitwise_not", "logical_not", "isnan", "isinf", "nan_to_num", "fill", "zero",
    "threshold", "silu_backward", "log_sigmoid", "hardshrink", "softshrink", "tanhshrink",
    "stochastic_depth",
]  # fmt: skip
_BINARY = [
    "add", "sub", "mul", "div", "maximum", "minimum", "rsub", "true_divide", "floor_divide",
    "masked_fill", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
    "logical_xor", "addcmul", "addcdiv", "lerp", "pow", "fmod", "remainder", "bitwise_and",
    "bitwise_or", "bitwise_xor", "__and__", "__or__", "__xor__", "copy", "where", "atan2",
    "hypot", "xlogy", "clamp", "clamp_min", "clamp_max",
]  # fmt: skip
_CONSTANT = [
    "arange", "empty", "empty_like", "rand", "randn", "rand_like", "randn_like", "tensor",
    "new_empty", "new_tensor", "eye", "linspace", "randint", "randint_like", "empty_strided",
    "lift_fresh", "bernoulli",
]  # fmt: skip
_UNIFORM = ["full", "zeros", "ones", "scalar_tensor", "full_like", "zeros_like", "ones_like",
            "new_ones", "new_zeros", "new_full"]  # fmt: skip
_REDUCE = ["sum", "mean", "amax", "amin", "var", "std", "prod", "logsumexp", "norm",
           "linalg_vector_norm", "any", "all", "nansum", "nanmean"]  # fmt: skip
_POOL = [
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "max_pool3d_with_indices", "adaptive_max_pool3d", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d",
    "upsample_linear1d", "upsample_trilinear3d", "_upsample_nearest_exact2d",
    "_upsample_bilinear2d_aa",
]  # fmt: skip

RULES: dict[str, Rule] = {
    "linear": rules_layers.linear,
    "addmm": rules_layers.addmm,
    "matmul": rules_layers.matmul,
    "mm": rules_layers.matmul,
    "bmm": rules_layers.matmul,
    "conv1d": rules_layers.conv,
    "conv2d": rules_layers.conv,
    "conv3d": rules_layers.conv,
    "convolution": rules_layers.conv,
    "conv_transpose1d": rules_layers.conv,
    "conv_transpose2d": rules_layers.conv,
    "conv_transpose3d": rules_layers.conv,
    "batch_norm": rules_layers.batch_norm,
    "_native_batch_norm_legit_no_training": rules_layers.batch_norm,
    "_native_batch_norm_legit_functional": rules_layers.batch_norm,
    "native_batch_norm": rules_layers.batch_norm,
    "layer_norm": rules_layers.layer_norm,
    "native_layer_norm": rules_layers.layer_norm,
    "rms_norm": rules_layers.layer_norm,
    "group_norm": rules_layers.group_norm,
    "native_group_norm": rules_layers.group_norm,
    "embedding": rules_layers.embedding,
    "scaled_dot_product_attention": rules_attention.sdpa,
    "softmax": rules_attention.softmax,
    "_softmax": rules_attention.softmax,
    "log_softmax": rules_attention.softmax,
    "_log_softmax": rules_attention.softmax,
    "view": rules_shape.view,
    "reshape": rules_shape.view,
    "_unsafe_view": rules_shape.view,
    "flatten": rules_shape.view,
    "unflatten": rules_shape.view,
    "view_as": rules_shape.view,
    "reshape_as": rules_shape.view,
    "transpose": rules_shape.transpose,
    "swapaxes": rules_shape.transpose,
    "swapdims": rules_shape.transpose,
    "t": rules_shape.transpose,
    "numpy_T": rules_shape.transpose,
    "mT": rules_shape.transpose,
    "mH": rules_shape.transpose,
    "adjoint": rules_shape.transpose,
    "permute": rules_shape.permute,
    "movedim": rules_shape.movedim,
    "unsqueeze": rules_shape.unsqueeze,
    "squeeze": rules_shape.squeeze,
    "expand": rules_shape.expand,
    "expand_as": rules_shape.expand,
    "repeat": rules_shape.repeat,
    "cat": rules_shape.cat,
    "concat": rules_shape.cat,
    "concatenate": rules_shape.cat,
    "stack": rules_shape.stack,
    "split": rules_shape.split,
    "split_with_sizes": rules_shape.split,
    "chunk": rules_shape.split,
    "tensor_split": rules_shape.split,
    "unsafe_split": rules_shape.split,
    "slice": rules_shape.slice_,
    "narrow": rules_shape.slice_,
    "select": rules_shape.select,
    "unbind": rules_shape.unbind,
    "getitem": rules_shape.getitem,
    "pad": rules_shape.pad,
    "constant_pad_nd": rules_shape.pad,
    "roll": rules_shape.roll,
    "flip": rules_shape.flip,
    "cumsum": rules_shape.cumulative,
    "cumprod": rules_shape.cumulative,
    "cummax": rules_shape.cumulative,
    "diff": rules_shape.cumulative,
    "index": rules_shape.index,
    "gather": rules_shape.gather,
    "index_select": rules_shape.index_select,
    "einsum": rules_layers.einsum,
    "baddbmm": rules_layers.baddbmm,
    "prelu": rules_layers.prelu,
    "_prelu_kernel": rules_layers.prelu,
    "var_mean": reduce_pair,
    "std_mean": reduce_pair,
    "argmax": arg_reduce,
    "argmin": arg_reduce,
    "topk": arg_reduce,
    "sort": arg_reduce,
    "argsort": arg_reduce,
    **{name: pool for name in _POOL},
    **{name: reduce for name in _REDUCE},
    **{name: passthrough for name in _UNARY},
    **{name: elementwise for name in _BINARY},
    **{name: constant for name in _CONSTANT},
    **{name: uniform for name in _UNIFORM},
    "triu": triangular,
    "tril": triangular,
}
"""Rule by op name (the overload dropped: ``add`` for ``aten.add.Tensor``)."""

IGNORED = frozenset({
    "_assert_tensor_metadata", "sym_size", "_assert_scalar", "sym_constrain_range_for_size",
    "_assert_async", "sym_numel", "sym_storage_offset", "sym_stride", "_set_grad_enabled",
    "_enter_autocast", "_exit_autocast", "sym_constrain_range", "_functional_assert_async",
})  # fmt: skip


def rule_for(node: torch.fx.Node) -> Rule | None:
    """The rule for a ``call_function`` node; ``None`` for ops without values (asserts)."""
    if node.target is operator.getitem:
        return rules_shape.getitem
    name = op_name(node)
    if name in IGNORED:
        return None
    if name in RULES:
        return RULES[name]
    twin = _out_of_place(name)
    return RULES.get(twin, unknown) if twin else unknown


def _out_of_place(name: str) -> str | None:
    """``add`` for ``add_``: an in-place op relates its axes as its twin does."""
    if name.endswith("_") and not name.endswith("__") and name[:-1] in RULES:
        return name[:-1]
    return None
