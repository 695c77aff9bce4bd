"""The identity of a spec derivation, for caching: same key, same spec.

A spec depends on the model's code and structure, its tensors' shapes, the probe
inputs' shapes and dtypes, how the model is called, whether its outputs may be
permuted, and the torch version (the exported graph and its node names, which
activation sites refer to, change with it). :func:`spec_key` hashes all of these:
the class and the plain attributes of every submodule (``inplace``, ``eps``, a
config's fields), the bytecode of every ``forward``, and every tensor's shape and
dtype. Values of weights never enter: a spec does not depend on them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..forward import ModelCall, model_call
from .permutations import FORMAT
from .trace import Inputs, call_arguments

ANALYSIS_VERSION = 2
"""Raise when the rules change what they derive: old cached specs then stop matching."""


def spec_key(
    model: nn.Module,
    inputs: Inputs,
    call: ModelCall | None = None,
    permute_output: bool = False,
) -> str:
    """A hex digest that names the spec :func:`~modeconnect.spec.derive_spec` would give."""
    how = call if call is not None else model_call(model)
    args, kwargs = call_arguments(how, inputs)
    facts = {
        "analysis": [ANALYSIS_VERSION, FORMAT, torch.__version__],
        "modules": [_module_facts(name, m) for name, m in model.named_modules()],
        "tensors": [
            [k, list(t.shape), str(t.dtype)]
            for k, t in [
                *model.named_parameters(remove_duplicate=False),
                *model.named_buffers(remove_duplicate=False),
            ]
        ],
        "config": _config_facts(getattr(model, "config", None)),
        "inputs": _value_facts((args, kwargs)),
        "call": [
            list(how.names),
            _value_facts(dict(how.constants)),
            how.decoder_inputs,
            how.output,
        ],
        "permute_output": permute_output,
    }
    text = json.dumps(facts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _module_facts(name: str, module: nn.Module) -> list[Any]:
    cls = type(module)
    forward = getattr(cls, "forward", None)
    code = getattr(forward, "__code__", None)
    digest = hashlib.sha256(code.co_code).hexdigest()[:16] if code is not None else ""
    names = list(code.co_names) if code is not None else []
    plain = {
        k: _plain(v)
        for k, v in sorted(vars(module).items())
        if not k.startswith("_") and k != "training" and _plain(v) is not None
    }
    return [name, f"{cls.__module__}.{cls.__qualname__}", digest, names, plain]


def _plain(value: Any) -> Any:
    """A JSON-ready copy of simple values (numbers, strings, tuples of them), else ``None``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if value is not None else "None"
    if isinstance(value, (tuple, list)) and len(value) <= 64:
        items = [_plain(v) for v in value]
        return items if all(i is not None for i in items) else None
    if isinstance(value, torch.dtype):
        return str(value)
    return None


def _config_facts(config: Any) -> Any:
    if config is None:
        return None
    to_dict = getattr(config, "to_dict", None)
    data = to_dict() if callable(to_dict) else {}
    data["_attn_implementation"] = getattr(config, "_attn_implementation", None)
    return json.loads(json.dumps(data, sort_keys=True, default=repr))


def _value_facts(value: Any) -> Any:
    leaves, spec = torch.utils._pytree.tree_flatten(value)
    described = [
        [list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else repr(x) for x in leaves
    ]
    return [described, str(spec)]
