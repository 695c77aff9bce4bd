"""Derive a :class:`~modeconnect.spec.permutations.PermutationSpec` from a model's graph.

The model is traced (:mod:`~modeconnect.spec.trace`). Every dimension of every
tensor in the graph gets an axis variable (:mod:`~modeconnect.spec.unionfind`);
each op relates the variables of its inputs and outputs (:mod:`~modeconnect.spec.rules`).
After the pass, every class that touches a model input or output, or that an op
could not prove safe, is frozen; the remaining classes that reach a parameter
axis become the permutation groups (:mod:`~modeconnect.spec.resolve`).

The rules follow Git Re-Basin (Ainsworth et al. 2023): a linear map opens a new
group on its output and ties its input to what feeds it; elementwise ops and norms
pass groups through; ``add`` unifies residual streams. The pass is linear in the
number of graph nodes (near-constant union-find operations per node).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..forward import ModelCall
from .context import Context, Dims, dims, flatten_args, mutated_nodes, shape
from .permutations import PermutationSpec
from .resolve import resolve
from .rules import rule_for
from .shuffle import fused_shuffles
from .trace import Inputs, Traced, trace
from .unionfind import AxisVars


def derive_spec(
    model: nn.Module,
    inputs: Inputs,
    *,
    call: ModelCall | None = None,
    permute_output: bool = False,
) -> PermutationSpec:
    """The permutation spec of ``model``, derived from its traced graph.

    ``inputs`` is a small example batch: positional inputs (named by ``call`` for
    keyword-called models; the default :func:`~modeconnect.forward.model_call` gives a
    Hugging Face model its ``input_ids``), or a mapping of keyword inputs.
    ``permute_output=True`` says the model's outputs (hidden states of a feature
    extractor) may come back permuted; by default they stay fixed. The model's
    weights may be on the ``meta`` device: only shapes are read.

    Examples
    --------
    Each hidden layer of an MLP is one group: its units are the rows of one
    weight and bias and the columns of the next weight. The input features and
    the logits stay fixed.

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> spec = mc.derive_spec(model, (torch.randn(2, 4),))
    >>> spec.group_sizes()
    {'P0': 8, 'P1': 8}
    >>> [(m.key, m.axis) for m in spec.groups["P0"].members]
    [('1.weight', 0), ('1.bias', 0), ('3.weight', 1)]
    >>> [(f.key, f.axis, f.reason) for f in spec.fixed]
    [('1.weight', 1, 'model input'), ('5.weight', 0, 'model output'), ('5.bias', 0, 'model output')]
    """
    return analyse(trace(model, inputs, call), model, permute_output=permute_output)


def analyse(traced: Traced, model: nn.Module, *, permute_output: bool = False) -> PermutationSpec:
    """Run the rules over a traced graph and resolve the groups."""
    program = traced.program
    ctx = Context(AxisVars(), mutated=mutated_nodes(program.graph))
    params: dict[str, Dims] = {}
    aliases = tied_weights(model)
    fused = fused_shuffles(program.graph)
    for node in program.graph.nodes:
        if node.op == "placeholder":
            _placeholder(ctx, node, traced, params, aliases)
        elif node.op == "call_function" and node.name in fused:
            ctx.env[node.name] = fused[node.name](ctx, node)
        elif node.op == "call_function":
            rule = rule_for(node)
            if rule is not None:
                ctx.env[node.name] = rule(ctx, node)
        elif node.op == "output" and not permute_output:
            _freeze_outputs(ctx, node, traced)
    outputs: dict[str, tuple[int, ...]] = {}
    for key, axis in sorted(ctx.param_axes[v] for v in ctx.weight_outputs if v in ctx.param_axes):
        if len(params[key]) >= 2 and axis not in outputs.get(key, ()):
            outputs[key] = (*outputs.get(key, ()), axis)
    return resolve(ctx.vars, params, ctx.env, ctx.sites, aliases, outputs)


def _placeholder(
    ctx: Context,
    node: torch.fx.Node,
    traced: Traced,
    params: dict[str, Dims],
    aliases: Mapping[str, str],
) -> None:
    key = traced.keys.get(node.name) or traced.keys.get(str(node.target))
    sizes = shape(node) or ()
    if key is not None:
        key = aliases.get(key, key)  # tied weights go by their first name, whichever the graph uses
        ctx.env[node.name] = [ctx.vars.new(s, active=False) for s in sizes]
        ctx.param_axes.update({v: (key, axis) for axis, v in enumerate(ctx.env[node.name])})
        for u, v in zip(params.setdefault(key, ctx.env[node.name]), ctx.env[node.name]):
            ctx.vars.union(u, v, "tied weights")
        return
    reason = _input_reason(traced.program, node)
    ctx.env[node.name] = [ctx.vars.new(s, frozen=reason) for s in sizes]
    value = traced.program.constants.get(reason.removeprefix("constant: "))
    if isinstance(value, torch.Tensor) and not value.is_meta and value.numel() <= 4096:
        ctx.constants[node.name] = value


def _input_reason(program: torch.export.ExportedProgram, node: torch.fx.Node) -> str:
    """``model input``, or ``constant: NAME`` for buffers outside the state dict and
    tensors the forward creates from data (lifted constants)."""
    from torch.export.graph_signature import InputKind

    for spec in program.graph_signature.input_specs:
        if getattr(spec.arg, "name", None) == node.name and spec.kind != InputKind.USER_INPUT:
            return f"constant: {spec.target}"
    return "model input"


def _freeze_outputs(ctx: Context, node: torch.fx.Node, traced: Traced) -> None:
    """Fix the model's outputs (those the call selects; buffer updates are not outputs)."""
    from torch.export.graph_signature import OutputKind

    kinds = [s.kind for s in traced.program.graph_signature.output_specs]
    user = 0
    for arg, kind in zip(flatten_args(list(node.args)), kinds):
        if kind != OutputKind.USER_OUTPUT:
            continue
        if traced.outputs is None or user in traced.outputs:
            for v in dims(ctx, arg) or []:
                ctx.vars.freeze(v, "model output")
        user += 1


def tied_weights(model: nn.Module) -> dict[str, str]:
    """State-dict keys that share a tensor with an earlier key (tied weights)."""
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named: list[tuple[str, Any]] = [*model.named_parameters(remove_duplicate=False)]
    named += model.named_buffers(remove_duplicate=False)
    for key, tensor in named:
        first = seen.setdefault(id(tensor), key)
        if first != key:
            aliases[key] = first
    return aliases
