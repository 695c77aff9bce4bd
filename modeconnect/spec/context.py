"""What every op rule shares: the analysis state and helpers to read a graph node.

A rule takes the :class:`Context` and one ``call_function`` node of the exported
graph, relates the axis variables of its inputs and outputs, and returns the
variables of its output (a list per tensor, or a list of lists for ops that return
several tensors). A rule that cannot read its operands freezes what it touches
(:func:`unknown`): soundness before coverage.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .unionfind import AxisVars

Dims = list[int]


@dataclass
class Context:
    """The state of one analysis pass.

    ``env`` maps a node name to its output's variables; ``sites`` records where a
    layer reads an activation; ``weight_outputs`` records the variable of each
    parameter axis that an op uses as its output features (a Linear's rows, an
    Embedding's columns), which :mod:`~modeconnect.spec.coverage` counts.
    ``param_axes`` maps each parameter placeholder's variables to (state-dict key, axis).
    ``mutated`` names the nodes whose values an in-place op changes (directly or
    through a view); ``constants`` holds the values of small constant tensors
    (Falcon's ``[..., [-2], :]`` index), by node name.
    """

    vars: AxisVars
    env: dict[str, Any] = field(default_factory=dict)
    sites: list[tuple[str, int]] = field(default_factory=list)
    weight_outputs: set[int] = field(default_factory=set)
    mutated: frozenset[str] = frozenset()
    param_axes: dict[int, tuple[str, int]] = field(default_factory=dict)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)


def bind(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = args(node)[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


def args(node: torch.fx.Node) -> tuple[Any, ...]:
    """The node's positional arguments, untyped (fx types them as a wide union)."""
    return tuple(node.args)


def shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def dims(ctx: Context, arg: Any) -> Dims | None:
    """The variables of a tensor argument (``None`` for non-tensors and tuples)."""
    if isinstance(arg, torch.fx.Node):
        d = ctx.env.get(arg.name)
        return d if isinstance(d, list) and all(isinstance(x, int) for x in d) else None
    return None


def fresh(ctx: Context, node: torch.fx.Node, frozen: str | None = None) -> Dims:
    return [ctx.vars.new(s, frozen=frozen) for s in shape(node) or ()]


def fresh_from_val(ctx: Context, val: Any, frozen: str | None = None) -> Dims:
    if isinstance(val, torch.Tensor):
        return [ctx.vars.new(int(s), frozen=frozen) for s in val.shape]
    return []


def norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def site(ctx: Context, arg: Any, dim: int) -> None:
    """Record that a layer reads ``arg`` along ``dim``: a place to observe unit activations."""
    d = dims(ctx, arg)
    if isinstance(arg, torch.fx.Node) and d:
        ctx.sites.append((arg.name, norm_dim(dim, len(d))))


def weight_output(ctx: Context, var: int) -> None:
    """Record that ``var`` (an axis of a weight operand) holds an op's output features."""
    ctx.weight_outputs.add(var)


def unify_trailing(ctx: Context, out: Dims, operand: Dims, why: str) -> None:
    """Broadcasting: unify trailing-aligned dims of equal size (size-1 dims broadcast)."""
    vs = ctx.vars
    for k in range(1, min(len(out), len(operand)) + 1):
        if vs.size[operand[-k]] == vs.size[out[-k]]:
            vs.union(out[-k], operand[-k], why)


def broadcast(ctx: Context, node: torch.fx.Node, operands: Sequence[Any]) -> Dims:
    """Elementwise ops: unify the trailing-aligned non-broadcast dims of every tensor operand.

    A constant operand is frozen, so it freezes the axes it meets: an input that
    broadcasts against a permuted axis is tied to it or fixes it, never ignored.
    """
    out = fresh(ctx, node)
    for arg in operands:
        d = dims(ctx, arg)
        if d is not None:
            unify_trailing(ctx, out, d, op_name(node))
    return out


def flatten_args(items: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for a in items:
        if isinstance(a, (list, tuple)):
            out.extend(flatten_args(a))
        else:
            out.append(a)
    return out


def op_name(node: torch.fx.Node) -> str:
    """``add_`` for ``aten.add_.Tensor``, ``getitem`` for ``operator.getitem``."""
    t = node.target
    name = getattr(t, "__name__", str(t))
    return name.split(".")[0] if isinstance(name, str) else str(t)


def unknown(ctx: Context, node: torch.fx.Node) -> Any:
    """Anything not understood freezes what it touches, with the op named as the reason."""
    reason = f"unsupported op {op_name(node)}"
    return freeze_node(ctx, node, reason)


def of_input(
    rule: Callable[[Context, torch.fx.Node, Dims], Any],
) -> Callable[[Context, torch.fx.Node], Any]:
    """A rule of its node's first input: called with that input's dims, or, when the input
    has none (not a tensor the trace knows), the node's dims are :func:`unknown`."""

    @functools.wraps(rule)
    def apply(ctx: Context, node: torch.fx.Node) -> Any:
        x = dims(ctx, args(node)[0])
        return unknown(ctx, node) if x is None else rule(ctx, node, x)

    return apply


def freeze_node(ctx: Context, node: torch.fx.Node, reason: str) -> Any:
    """Freeze every tensor argument of ``node`` and return frozen output variables."""
    for arg in flatten_args(list(node.args) + list(node.kwargs.values())):
        for v in dims(ctx, arg) or []:
            ctx.vars.freeze(v, reason)
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [fresh_from_val(ctx, v, frozen=reason) for v in val]
    return fresh(ctx, node, frozen=reason)


VIEWS = frozenset({
    "slice", "select", "view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "transpose",
    "permute", "expand", "alias", "as_strided", "diagonal", "narrow", "unflatten", "flatten",
    "t", "numpy_T", "split", "split_with_sizes", "chunk", "unbind", "detach", "getitem",
    "view_as", "movedim", "swapaxes", "mT",
})  # fmt: skip
"""Ops whose output may share memory with their first input."""


def mutated_nodes(graph: torch.fx.Graph) -> frozenset[str]:
    """Nodes an in-place op writes to: its first argument and the tensors that one views."""
    out: set[str] = set()
    for node in graph.nodes:
        name = op_name(node) if node.op == "call_function" else ""
        if not name.endswith("_") or name.endswith("__") or not node.args:
            continue
        target = node.args[0]
        while isinstance(target, torch.fx.Node) and target.name not in out:
            out.add(target.name)
            viewing = target.op == "call_function" and op_name(target) in VIEWS
            target = target.args[0] if viewing and target.args else None
    return frozenset(out)


def maybe_tuple(ctx: Context, node: torch.fx.Node, first: Dims) -> Any:
    """``first`` for a single-tensor op; ``[first, fresh...]`` when it returns a tuple."""
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return [first, *[fresh_from_val(ctx, v) for v in val[1:]]]
    return first
