"""Run a model's exported graph with any state dict and read intermediate values.

Activation-based methods (activation matching, OT fusion with activation costs)
observe a group's units at the spec's activation sites, which are node names of
the traced graph; :class:`GraphRunner` runs that same graph, traced the same way
(:func:`~modeconnect.spec.trace.trace`, so Hugging Face models get their inputs by
name), with the weights of A or of B.

A model built on the meta device (a Hugging Face directory read lazily) is traced on
meta inputs; its graph then records ``meta`` in device arguments (``arange(...,
device=meta)`` for position ids) and in tensor-metadata assertions. Before such a graph
runs on real weights, those arguments are moved to the device of the weights and the
assertions dropped (:func:`_on_device`): they only restate what export saw.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from ..forward import Binding, ModelCall, model_call
from .trace import Inputs, Traced, call_arguments, trace


class GraphRunner:
    """Runs a model's exported graph with any state dict and returns chosen intermediate values.

    Exports once per input shape (``torch.export`` specialises on shapes) and feeds
    parameters and buffers from the given state dict (tied weights filled in from
    either name), so activations of A and B come from the same graph whose node
    names the spec's sites use.
    """

    def __init__(self, model: nn.Module, call: ModelCall | None = None) -> None:
        self.model = model
        self.call = call if call is not None else model_call(model)
        self._binding = Binding.of(model)
        self._traced: dict[tuple[Any, ...], Traced] = {}
        self._moved: dict[tuple[Any, ...], torch.fx.GraphModule] = {}

    def traced(self, inputs: Inputs) -> Traced:
        key = _shape_key(call_arguments(self.call, inputs))
        if key not in self._traced:
            self._traced[key] = trace(self.model, inputs, self.call)
        return self._traced[key]

    def program(self, inputs: Inputs) -> torch.export.ExportedProgram:
        return self.traced(inputs).program

    def run(
        self, state_dict: Mapping[str, torch.Tensor], inputs: Inputs, nodes: Collection[str]
    ) -> dict[str, torch.Tensor]:
        """The outputs of graph ``nodes`` when the model runs on ``inputs`` with ``state_dict``."""
        program = self.program(inputs)
        flat = _program_args(program, self._binding.bind(state_dict), self.call, inputs)
        module = self._module(inputs, program, flat)
        wanted = set(nodes)
        captured: dict[str, torch.Tensor] = {}

        class _Capture(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in wanted:
                    captured[n.name] = out
                return out

        with torch.no_grad():
            _Capture(module).run(*flat)
        return captured

    def _module(
        self, inputs: Inputs, program: torch.export.ExportedProgram, flat: list[Any]
    ) -> torch.fx.GraphModule:
        """The program's graph, moved off ``meta`` when it was traced there (module docstring)."""
        device = next((x.device for x in flat if isinstance(x, torch.Tensor)), None)
        if device is None or device.type == "meta" or not _mentions_meta(program.graph_module):
            return program.graph_module
        key = (_shape_key(call_arguments(self.call, inputs)), str(device))
        if key not in self._moved:
            self._moved[key] = _on_device(program.graph_module, device)
        return self._moved[key]


_ASSERTIONS = (torch.ops.aten._assert_tensor_metadata.default,)


def _is_meta(value: Any) -> bool:
    return isinstance(value, torch.device) and value.type == "meta"


def _mentions_meta(module: torch.fx.GraphModule) -> bool:
    return any(
        n.target in _ASSERTIONS or any(_is_meta(v) for v in (*n.args, *n.kwargs.values()))
        for n in module.graph.nodes
    )


def _on_device(module: torch.fx.GraphModule, device: torch.device) -> torch.fx.GraphModule:
    """A copy of ``module`` whose ``device=meta`` arguments name ``device``, without the
    tensor-metadata assertions export recorded on meta."""
    graph = copy.deepcopy(module.graph)
    for node in list(graph.nodes):
        if node.target in _ASSERTIONS and not node.users:
            graph.erase_node(node)
        else:
            node.args = tuple(device if _is_meta(v) else v for v in node.args)
            node.kwargs = {k: device if _is_meta(v) else v for k, v in node.kwargs.items()}
    return torch.fx.GraphModule(module, graph)


def _shape_key(value: Any) -> tuple[Any, ...]:
    leaves = torch.utils._pytree.tree_leaves(value)
    return tuple(
        (tuple(x.shape), x.dtype, x.device.type) if isinstance(x, torch.Tensor) else repr(x)
        for x in leaves
    )


def _program_args(
    program: torch.export.ExportedProgram,
    state_dict: Mapping[str, torch.Tensor],
    call: ModelCall,
    inputs: Inputs,
) -> list[Any]:
    """The graph's placeholders in order: user inputs flattened as at export, then weights."""
    from torch.export._tree_utils import reorder_kwargs
    from torch.export.graph_signature import InputKind

    args, kwargs = call_arguments(call, inputs)
    in_spec = program.call_spec.in_spec
    if in_spec is not None and kwargs:
        kwargs = reorder_kwargs(kwargs, in_spec)
    user = iter(torch.utils._pytree.tree_leaves((args, kwargs)))
    flat: list[Any] = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            flat.append(next(user))
        elif spec.target in state_dict:
            flat.append(state_dict[spec.target])
        elif spec.target in program.constants:
            flat.append(program.constants[spec.target])
        else:
            flat.append(program.state_dict[spec.target])
    return flat
