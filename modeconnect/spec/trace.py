"""Tracing: the model's graph, exported as the model is called everywhere else.

``torch.export.export(model, args, kwargs, strict=False)`` is used as exported
(no decompositions: heads and norms keep their structure, and a decomposed Hugging
Face graph loses both). The arguments come from :class:`~modeconnect.forward.ModelCall`,
so a Hugging Face model is traced as the user holds it: its main input by name,
``use_cache=False`` (no cache object in the outputs), decoder inputs for
encoder-decoders, and only the selected output (``logits``) counts as the output.

Inputs move to the device of the model's weights. Models whose weights live on the
``meta`` device (analysed without materialising them) are traced without the eager
check run, which would need values.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModeconnectError
from ..forward import ModelCall, eval_mode, model_call

Inputs = Sequence[Any] | Mapping[str, Any]
"""Model inputs: positional (``call`` names them for keyword-called models) or by name."""


@dataclass(frozen=True)
class Traced:
    """An exported program and how it was called.

    ``keys`` maps the program's parameter and buffer targets to state-dict keys;
    ``outputs`` holds the positions (in the flat output list) of the outputs the
    call selects (``logits``), or ``None`` when every output counts.
    """

    program: torch.export.ExportedProgram
    call: ModelCall
    keys: Mapping[str, str]
    outputs: tuple[int, ...] | None


def call_arguments(call: ModelCall, inputs: Inputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for the model: positional inputs through ``call``, or inputs by name
    with the call's constant keyword arguments and decoder inputs added."""
    if not isinstance(inputs, Mapping):
        return call.arguments(tuple(inputs))
    kwargs = dict(inputs)
    if call.decoder_inputs and "decoder_input_ids" not in kwargs and call.names:
        main = kwargs.get(call.names[0])
        if main is not None:
            kwargs["decoder_input_ids"] = main
    return (), {**kwargs, **call.constants}


def weights_device(model: nn.Module) -> torch.device | None:
    """The device of the model's weights (``meta`` if any is there: shapes only)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        return torch.device("meta")
    return tensors[0].device if tensors else None


def to_device(value: Any, device: torch.device | None) -> Any:
    """``value`` with every tensor in it on ``device`` (unchanged if already there)."""
    if device is None:
        return value
    return torch.utils._pytree.tree_map(
        lambda x: x.to(device) if isinstance(x, torch.Tensor) and x.device != device else x, value
    )


def trace(model: nn.Module, inputs: Inputs, call: ModelCall | None = None) -> Traced:
    """Export ``model`` for analysis; a model that cannot be traced gets a clear error.

    The model first runs eagerly on the inputs (unless its weights are on ``meta``),
    so that inputs it cannot take are reported in one line rather than through the
    tracer's logs; the export runs with torch's error logging silenced, since its
    failure is reported here.
    """
    how = call if call is not None else model_call(model)
    device = weights_device(model)
    args, kwargs = to_device(call_arguments(how, inputs), device)
    try:
        with eval_mode(model), torch.no_grad():
            if device is None or device.type != "meta":
                model(*args, **kwargs)
            with _quiet_torch_logs():
                program = torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:  # torch raises many types here; report them uniformly
        raise _trace_error(model, args, kwargs, exc) from exc
    return Traced(program, how, _keys(program, model), _selected(program, how))


def _trace_error(
    model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> ModeconnectError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    described = [_describe(x) for x in args]
    described += [f"{k}={_describe(v)}" for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    return ModeconnectError(
        f"cannot trace {type(model).__name__} with example input {', '.join(described)}: "
        f"{type(exc).__name__}: {first[:300]}; pass --input-shape (and --input-dtype) that "
        "the model's forward accepts"
    )


def _describe(x: Any) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def _keys(program: torch.export.ExportedProgram, model: nn.Module) -> dict[str, str]:
    """Program placeholder name -> state-dict key, for saved parameters and buffers."""
    sig = program.graph_signature
    saved = set(model.state_dict(keep_vars=True))
    named = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    return {name: key for name, key in named.items() if key in saved}


def _selected(program: torch.export.ExportedProgram, call: ModelCall) -> tuple[int, ...] | None:
    """The flat output positions of ``call.output`` when the output is keyed (a ModelOutput)."""
    spec = program.call_spec.out_spec
    if call.output is None or spec is None:
        return None
    keys = spec.context if isinstance(spec.context, list) else None
    if keys is None or call.output not in keys:
        return None
    start = 0
    for key, child in zip(keys, spec.children()):
        if key == call.output:
            return tuple(range(start, start + child.num_leaves))
        start += child.num_leaves
    return None


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
