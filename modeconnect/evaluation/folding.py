"""Eval-mode BatchNorm folded into the layer that feeds it, for evaluation passes.

A BatchNorm in eval mode is an affine map per channel, ``y = (x − μ)·s + β`` with
``s = γ / sqrt(σ² + ε)`` from its running statistics. Where it reads only the output
of a Conv or Linear layer ``x = W·h + b`` that nothing else reads, the two are one layer

    W' = W · s (per output channel),   b' = (b − μ) · s + β,

so an evaluation pass can run the folded layer and skip the BatchNorm: one pass over
the activations fewer per pair (a CNN's BatchNorm layers are memory-bound). The fold is
computed from each pass's own state, so interpolated and freshly reset statistics
(:class:`modeconnect.bn.BatchNormReset`) fold the same way.

Soundness, in three steps:

* **the pairs come from the graph**: :func:`torch.fx.symbolic_trace` of the model
  (never from anything read from a file); a pair is a ``Conv1d/2d/3d`` or ``Linear``
  call whose only user is a ``BatchNorm1d/2d/3d`` call (running statistics tracked),
  each module called once; a model that does not trace is not folded;
* **the pass is checked once per model** (and dtype and device) on its first batch:
  the folded pass must give the unfolded pass's outputs to float tolerance (256 units
  in the last place, relative to their size, as :func:`~modeconnect.evaluation.engine.vmap_agrees`),
  and each folded layer's output must have its channels where the BatchNorm reads
  them (a ``Linear`` only on ``(N, C)``); otherwise the model keeps the unfolded pass;
* **only where nothing can tell**: a fold is used for a pass when every module of the
  model is in eval mode (never in a BatchNorm reset's training-mode passes), no forward
  hook is registered (it would not see the BatchNorm), and the model is called plainly
  (not a Hugging Face model).

:func:`fold_note` says what was decided for a model, and why.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from modeconnect.forward import (
    PLAIN,
    ModelCall,
    _batched,
    output_tensors,
    over_batches,
    share_layout,
)

__all__ = ["Folded", "agree", "fold_note", "folded", "folding_target"]

ENABLED = True
"""Internal switch: ``False`` runs every pass unfolded (A/B timings in
``benchmarks/bench_evaluate.py --fold both``)."""

_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class _Pair:
    """A producer (``Conv``/``Linear``) at ``producer`` read only by the norm at ``norm``;
    the folded layer is ``folded`` in :attr:`Folded.module`."""

    producer: str
    norm: str
    folded: str
    eps: float
    affine: bool
    bias: bool
    ndim: int  # the producer's output rank where the norm reads channels at dim 1


@dataclass(eq=False)
class Folded:
    """A model's evaluation module with its Conv/Linear → BatchNorm pairs folded.

    ``module`` runs the traced graph with each pair replaced by one layer; ``kept``
    names its tensors that are the model's own (same names), the folded layers'
    tensors are computed per pass by :meth:`params`. ``verdicts``: per
    ``(dtype, device type)``, whether the folded pass was checked equal to the model's.
    """

    module: nn.Module
    pairs: tuple[_Pair, ...]
    kept: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    producers: tuple[nn.Module, ...]
    verdicts: dict[tuple[torch.dtype, str], bool] = field(default_factory=dict)
    note: str = ""

    def applies(self, model: nn.Module) -> bool:
        """Whether nothing this pass of ``model`` can observe tells the folded pass from
        the model's (``modules`` are its submodules: the root is not held, so that the
        cache entry dies with the model)."""
        if _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return False
        return not any(
            m.training or m._forward_hooks or m._forward_pre_hooks for m in (model, *self.modules)
        )

    def params(self, params: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        """The folded module's tensors for the model's bound ``params`` (``None``: missing)."""
        out = {name: params[name] for name in self.kept if name in params}
        for pair in self.pairs:
            folded = _fold(pair, params)
            if folded is None:
                return None
            out[f"{pair.folded}.weight"], out[f"{pair.folded}.bias"] = folded
        return out


def _fold(pair: _Pair, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor] | None:
    """``(W·s, (b − μ)·s + β)`` in the weight's dtype, computed in float32 at least."""
    names = [f"{pair.producer}.weight", f"{pair.norm}.running_mean", f"{pair.norm}.running_var"]
    names += [f"{pair.producer}.bias"] if pair.bias else []
    names += [f"{pair.norm}.weight", f"{pair.norm}.bias"] if pair.affine else []
    if any(n not in params for n in names):
        return None
    weight = params[names[0]]
    wide = torch.promote_types(weight.dtype, torch.float32)
    scale = (params[names[2]].to(wide) + pair.eps).rsqrt()
    if pair.affine:
        scale = scale * params[f"{pair.norm}.weight"].to(wide)
    shift = -params[names[1]].to(wide)
    if pair.bias:
        shift = shift + params[f"{pair.producer}.bias"].to(wide)
    bias = shift * scale
    if pair.affine:
        bias = bias + params[f"{pair.norm}.bias"].to(wide)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return (weight.to(wide) * scale.reshape(shape)).to(weight.dtype), bias.to(weight.dtype)


_FOLDED: weakref.WeakKeyDictionary[nn.Module, Folded | str] = weakref.WeakKeyDictionary()
"""Per model: its :class:`Folded` module, or why it has none."""


def folded(model: nn.Module) -> Folded | None:
    """The model's folded evaluation module (traced once per model), ``None`` if none.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    >>> [(p.producer, p.norm) for p in folded(net).pairs]
    [('0', '1')]
    """
    known = _FOLDED.get(model)
    if known is None:
        known = _FOLDED[model] = _trace(model)
    return known if isinstance(known, Folded) else None


def fold_note(model: nn.Module) -> str:
    """What was decided about folding ``model``'s BatchNorm layers, and why.

    >>> fold_note(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    'not folded: no BatchNorm with running statistics'
    """
    found = folded(model)
    if found is None:
        return str(_FOLDED[model])
    return found.note


def _trace(model: nn.Module) -> Folded | str:
    modules = dict(model.named_modules())
    norms = [m for m in modules.values() if type(m) in _NORMS and m.running_var is not None]
    if not norms:
        return "not folded: no BatchNorm with running statistics"
    flags = [(m, m.training) for m in modules.values()]
    try:
        model.eval()  # trace the evaluation forward (a forward reading self.training)
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:  # data-dependent control flow, untraceable calls
        return f"not folded: the model does not trace with torch.fx ({type(error).__name__})"
    finally:
        for module, training in flags:
            module.training = training
    try:
        return _rewrite(model, modules, graph)
    except Exception as error:  # a graph GraphModule cannot hold (targets outside modules)
        return f"not folded: the traced graph cannot be rebuilt ({type(error).__name__})"


def _rewrite(
    model: nn.Module, modules: dict[str, nn.Module], graph: torch.fx.Graph
) -> Folded | str:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    attrs = [str(n.target) for n in graph.nodes if n.op == "get_attr"]
    targets = [str(t) for t in calls]
    if any(t.startswith(f"{c}.") for t in targets + attrs for c in targets):
        return "not folded: the graph reads inside a module it calls"
    taken = set(modules) | set(attrs)
    pairs: list[_Pair] = []
    layers: dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        source = _producer_node(node, modules, calls)
        if source is None:
            continue
        name = _fresh(f"folded_{len(pairs)}", taken)
        producer = modules[str(source.target)]
        norm = cast(nn.modules.batchnorm._BatchNorm, modules[str(node.target)])
        layers[name] = _with_bias(producer)
        with graph.inserting_before(source):
            replacement = graph.create_node("call_module", name, source.args)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        graph.erase_node(source)
        ndim = 2 if type(producer) is nn.Linear else cast(Tensor, producer.weight).ndim
        pairs.append(_Pair(str(source.target), str(node.target), name, float(norm.eps),
                           norm.affine, producer.bias is not None, ndim))  # fmt: skip
    if not pairs:
        return "not folded: no BatchNorm reads only a Conv or Linear layer's output"
    root: dict[str, Any] = {t: modules[t] for t in calls if t in modules}
    root.update({a: _attr(model, a) for a in attrs})
    root.update(layers)
    module = torch.fx.GraphModule(root, graph)
    share_layout(module, model)
    names = [n for n, _ in module.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in module.named_buffers(remove_duplicate=False)]
    kept = tuple(n for n in names if n.partition(".")[0] not in layers)
    producers = tuple(modules[p.producer] for p in pairs)
    note = f"folded {len(pairs)} BatchNorm layer(s) into " + ", ".join(p.producer for p in pairs)
    inner = tuple(m for name, m in modules.items() if name)
    return Folded(module, tuple(pairs), kept, inner, producers, note=note)


def _producer_node(
    node: torch.fx.Node, modules: Mapping[str, nn.Module], calls: Counter[Any]
) -> torch.fx.Node | None:
    """The producer call that ``node``, a BatchNorm call, alone reads, if they can fold."""
    if node.op != "call_module" or calls[node.target] != 1 or len(node.args) != 1:
        return None
    norm = modules.get(str(node.target))
    source = node.args[0]
    if type(norm) not in _NORMS or norm is None or norm.running_var is None or node.kwargs:
        return None
    if not isinstance(source, torch.fx.Node) or source.op != "call_module":
        return None
    producer = modules.get(str(source.target))
    if type(producer) not in _PRODUCERS or producer is None or calls[source.target] != 1:
        return None
    if len(source.users) != 1 or len(source.args) != 1 or source.kwargs:
        return None
    weight = producer.weight
    if not isinstance(weight, Tensor) or weight.shape[0] != norm.num_features:
        return None
    return source


def _with_bias(layer: nn.Module) -> nn.Module:
    """A layer like ``layer`` with a bias, its tensors on the meta device (every pass
    gives them)."""
    dtype = cast(Tensor, layer.weight).dtype
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, device="meta", dtype=dtype)
    conv = cast(nn.modules.conv._ConvNd, layer)
    make: Any = type(conv)  # Conv1d, Conv2d or Conv3d: the same constructor
    return make(  # type: ignore[no-any-return]
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode, device="meta", dtype=dtype,
    )  # fmt: skip


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"_{name}"
    taken.add(name)
    return name


def _attr(model: nn.Module, target: str) -> Any:
    owner, _, leaf = target.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, leaf)


# --------------------------------------------------------------------------- per pass


def folding_target(
    model: nn.Module,
    call: ModelCall | None,
    params: Mapping[str, Tensor],
    batches: Iterable[Any],
    original: Iterable[Any],
) -> tuple[nn.Module, Mapping[str, Tensor]]:
    """The module and tensors an evaluation pass runs: the folded ones where they apply.

    ``params`` are the model's bound tensors, ``batches`` the pass's (prepared) batches,
    ``original`` the batches as given (the check reads the first batch only when they
    can be iterated again). Otherwise ``(model, params)`` as they are.
    """
    if not ENABLED or (call is not None and call != PLAIN):
        return model, params
    found = folded(model)
    if found is None or not found.applies(model):
        return model, params
    weight = params.get(f"{found.pairs[0].producer}.weight")
    if weight is None or not weight.is_floating_point():
        return model, params
    key = (weight.dtype, weight.device.type)
    verdict = found.verdicts.get(key)
    if verdict is None:
        if _batched(weight) or iter(original) is original:
            return model, params
        first = next(iter(batches), None)
        if first is None:
            return model, params
        verdict = found.verdicts[key] = _verify(model, found, params, first, key)
    fparams = found.params(params) if verdict else None
    return (model, params) if fparams is None else (found.module, fparams)


def _verify(
    model: nn.Module,
    found: Folded,
    params: Mapping[str, Tensor],
    batch: Any,
    key: tuple[torch.dtype, str],
) -> bool:
    """Whether the folded pass equals the model's on ``batch``, and channels sit at dim 1."""
    fparams = found.params(params)
    if fparams is None:
        return False
    ranks: list[int] = []
    handles = [p.register_forward_hook(lambda m, a, out: ranks.append(out.ndim))
               for p in found.producers]  # fmt: skip
    try:
        with torch.no_grad():
            want = over_batches(model, params, [batch], lambda out, b: out, call=PLAIN, bound=True)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        got = over_batches(found.module, fparams, [batch], lambda out, b: out, call=PLAIN,
                           bound=True)  # fmt: skip
    ranks_ok = ranks == [p.ndim for p in found.pairs]
    want_t, got_t = output_tensors(want[0]), output_tensors(got[0])
    same = len(want_t) == len(got_t) and all(
        agree(g, w, key[0]) for g, w in zip(got_t, want_t, strict=True)
    )
    if not (ranks_ok and same):
        why = "a folded layer's output is not (N, C, ...)" if not ranks_ok else "outputs differ"
        found.note = f"not folded for {key[0]} on {key[1]}: {why} on the first batch"
    return ranks_ok and same


def agree(x: Tensor, y: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``x`` equals ``y`` to 256 units in the last place of ``dtype`` (at most
    10 %), relative to ``1 + max|y|``; integer tensors exactly.

    >>> agree(torch.tensor([1.0]), torch.tensor([1.0 + 1e-6]), torch.float32)
    True
    """
    if x.shape != y.shape:
        return False
    if not x.is_floating_point():
        return bool(torch.equal(x, y))
    scale = 1.0 + float(y.abs().max()) if y.numel() else 1.0
    tol = scale * min(256 * torch.finfo(dtype).eps, 0.1)
    return bool(torch.allclose(x.double(), y.double(), rtol=0.0, atol=tol, equal_nan=True))
