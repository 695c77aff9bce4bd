"""Channel shuffles: a chain of reshapes and transposes that only reorders one axis.

ShuffleNet's ``x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)``
interleaves the channels of ``g`` concatenated branches. Taken op by op, the view
splits a concatenated axis into factors that do not line up with its parts, which
would force the branches to share one permutation or freeze them. Taken as a whole,
the chain is a fixed reordering of the channel axis, and each branch keeps its own
permutation: position ``i`` of the output holds position ``order[i]`` of the input.

The chain's effect is found by running it on ``arange``: exact, whatever the ops.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch

from .context import Context, Dims, dims, fresh, op_name, unknown

_RESHAPES = {"view", "reshape", "_unsafe_view", "flatten", "unflatten"}
_MOVES = {"transpose", "permute", "contiguous", "clone", "alias"}
_MAX_ELEMENTS = 1 << 22  # larger chains are analysed op by op (sound, maybe coarser)

FusedRule = Callable[[Context, torch.fx.Node], Any]


def fused_shuffles(graph: torch.fx.Graph) -> dict[str, FusedRule]:
    """Rules for the nodes of every reshape-transpose-reshape chain that reorders one axis.

    The chain's last node gets the shuffle rule; the nodes inside it (used only by
    the chain) get no variables of their own.
    """
    fused: dict[str, FusedRule] = {}
    for node in graph.nodes:
        chain = _chain_ending_at(node)
        if chain is None:
            continue
        found = _single_axis_order(chain)
        if found is None:
            continue
        axis, order = found
        for inner in chain[1:-1]:
            fused[inner.name] = _skipped
        fused[node.name] = _shuffle_rule(chain[0], axis, order)
    return fused


def _chain_ending_at(end: torch.fx.Node) -> list[torch.fx.Node] | None:
    """``[start, op, ..., end]``: data-movement ops from a reshape back to the tensor they
    rearrange, with at least one transpose inside and one user per inner node."""
    if end.op != "call_function" or op_name(end) not in _RESHAPES:
        return None
    chain = [end]
    node = end
    while True:
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node):
            return None
        movable = src.op == "call_function" and op_name(src) in _RESHAPES | _MOVES
        if not movable or len(src.users) != 1 or src.target is operator.getitem:
            chain.append(src)
            break
        chain.append(src)
        node = src
    chain.reverse()
    moves = [n for n in chain[1:-1] if op_name(n) in {"transpose", "permute"}]
    return chain if moves and op_name(chain[1]) in _RESHAPES else None


def _single_axis_order(chain: list[torch.fx.Node]) -> tuple[int, list[int]] | None:
    """The one axis the chain reorders, and the order, or ``None`` if it does more."""
    start, end = chain[0].meta.get("val"), chain[-1].meta.get("val")
    if not isinstance(start, torch.Tensor) or not isinstance(end, torch.Tensor):
        return None
    shape = tuple(int(s) for s in start.shape)
    if shape != tuple(int(s) for s in end.shape) or not 0 < start.numel() <= _MAX_ELEMENTS:
        return None
    try:
        moved = _run(chain, torch.arange(start.numel()).reshape(shape))
    except Exception:  # an op we cannot replay: analyse the chain op by op instead
        return None
    coords = torch.stack(torch.unravel_index(moved.reshape(-1), shape))  # (ndim, numel)
    grid = torch.stack(torch.unravel_index(torch.arange(start.numel()), shape))
    differs = [d for d in range(len(shape)) if not torch.equal(coords[d], grid[d])]
    if len(differs) != 1:
        return None
    axis = differs[0]
    order = coords[axis].reshape(shape).movedim(axis, -1).reshape(-1, shape[axis])
    if not bool((order == order[0]).all()):
        return None
    return axis, [int(i) for i in order[0]]


def _run(chain: list[torch.fx.Node], value: torch.Tensor) -> torch.Tensor:
    for node in chain[1:]:
        rest = [value, *node.args[1:]]
        value = node.target(*rest, **node.kwargs)  # type: ignore[operator]
    return value


def _skipped(ctx: Context, node: torch.fx.Node) -> None:
    return None


def _shuffle_rule(start: torch.fx.Node, axis: int, order: list[int]) -> FusedRule:
    def rule(ctx: Context, node: torch.fx.Node) -> Dims:
        x = dims(ctx, start)
        out = fresh(ctx, node)
        if x is None or len(x) != len(out):
            return unknown(ctx, node)
        for d, (u, v) in enumerate(zip(out, x)):
            if d != axis:
                ctx.vars.union(u, v, "channel shuffle")
        ctx.vars.define_shuffle(out[axis], x[axis], order, "channel shuffle")
        return out

    return rule
