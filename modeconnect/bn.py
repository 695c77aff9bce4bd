"""Activation statistics after interpolation: BatchNorm reset and REPAIR.

Interpolating two networks shrinks the variance of their hidden units
("variance collapse", Jordan et al. 2023), and interpolated BatchNorm running
statistics describe neither model. Two corrections, both pure functions that
return a new state dict:

* :func:`reset_batchnorm`: recompute every BatchNorm's running mean and variance
  on training data, as Git Re-Basin (Ainsworth et al. 2023) and REPAIR do, with an
  exact cumulative average over the examples seen (not an exponential one).
* :func:`repair` (REPAIR, Jordan et al. 2023, "REPAIR: REnormalizing Permuted
  Activations for Interpolation Repair"), for nets without BatchNorm: give every
  unit of every Linear/Conv output of the merged model the mean and standard
  deviation ``(1-α)·stat_A + α·stat_B`` interpolated from the endpoints, folding
  the affine correction into that layer's weight and bias.

:func:`make_correction` turns a mode name (:data:`BN_MODES`) into a function
``(state, α) -> state`` applied at every point of a path; :func:`renormalize`
applies it once to a merged model.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from modeconnect.choices import DEFAULT_BN_EXAMPLES
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch
from modeconnect.forward import Binding, batch_inputs, eval_mode, over_batches

__all__ = [
    "BN_CHOICES",
    "DEFAULT_BN_EXAMPLES",
    "BN_MODES",
    "BatchNormReset",
    "Correction",
    "LayerStats",
    "batchnorm_layers",
    "bn_batches",
    "bn_correction",
    "last_norm_child",
    "check_mode",
    "layer_statistics",
    "make_correction",
    "renormalize",
    "repair",
    "repair_layers",
    "reset_batchnorm",
    "reset_batchnorm_many",
]

BN_MODES = ("none", "reset", "repair")
"""``none``: no correction; ``reset``: BatchNorm statistics; ``repair``: REPAIR."""

StateDict = Mapping[str, Tensor]
Correction = Callable[[StateDict, float], dict[str, Tensor]]
"""``correct(state, α) -> state``: the correction of the model at ``α`` on a path."""

R = TypeVar("R")

_DEAD = 1e-7
"""Units whose merged std is below this fraction of the layer's largest are only shifted."""


# --------------------------------------------------------------------------- passes


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def _run(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: Iterable[Batch],
    max_batches: int | None,
    before: Callable[[Any], None] | None = None,
) -> int:
    """Run ``model`` (bound ``params``) on the inputs of the first ``max_batches`` batches.

    ``before(batch)`` runs just before each batch's forward; a hook may end a
    forward early by raising :class:`_Stop`. Returns the number of batches run.
    """

    def fed() -> Iterator[Any]:
        for batch in itertools.islice(batches, max_batches):
            if before is not None:
                before(batch)
            yield batch

    ran = over_batches(model, params, fed(), lambda out, batch: None, bound=True, cut=_Stop)
    if not ran:
        raise ModeconnectError(
            "bn: no training examples, `batches` is empty; pass the training data (--train)"
        )
    return len(ran)


def bn_batches(max_batches: int | str | None, batch_size: int) -> int | None:
    """The training batches each BatchNorm reset of a command reads.

    ``max_batches`` as given (``"all"``: every batch, ``None`` to the library); unset,
    the most whole batches of ``batch_size`` examples that hold at most
    :data:`DEFAULT_BN_EXAMPLES` examples, and at least one.

    >>> bn_batches(None, 500), bn_batches(None, 64), bn_batches(None, 1024), bn_batches(None, 100)
    (1, 8, 1, 5)
    >>> bn_batches(3, 64), bn_batches("all", 64)
    (3, None)
    """
    if max_batches == "all":
        return None
    if max_batches is None:
        return max(1, DEFAULT_BN_EXAMPLES // max(1, batch_size))
    if isinstance(max_batches, str):
        raise ModeconnectError(
            f"bn: max_batches={max_batches!r} is neither a positive int nor 'all'; pass one"
        )
    _check_max_batches(max_batches)
    return max_batches


def _check_max_batches(max_batches: int | None) -> None:
    if max_batches is None:
        return
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ModeconnectError(
            f"bn: max_batches={max_batches!r} must be a positive int or None; pass one"
        )


# --------------------------------------------------------------------------- BatchNorm reset


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm modules that keep running statistics, with their names."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


def reset_batchnorm(
    model: nn.Module,
    state_dict: StateDict,
    batches: Iterable[Batch],
    *,
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """Recompute every BatchNorm's running mean and variance of ``state_dict`` on ``batches``.

    The model runs in eval mode except its BatchNorm layers, which normalise
    with batch statistics (training mode) and average them into fresh running
    statistics ``Σ_j (b_j / N)·stat_j`` over the batches ``j`` of ``b_j`` examples
    (``N`` in all): the exact cumulative average over examples, run as momentum
    ``b_j / (b_1 + ... + b_j)`` (with equal batches this is ``momentum=None``).
    Means are then exact; variances are the batches' unbiased ones, as in
    PyTorch. ``num_batches_tracked`` counts the batches. A BatchNorm the data
    never reaches keeps its statistics.

    Returns a new state dict; ``state_dict`` and the module's own tensors and
    training flags are left unchanged (the BatchNorm momenta are set during the
    pass and restored). A model without BatchNorm gets a copy. Use
    ``max_batches`` to bound the pass on large training sets.

    Examples
    --------
    The fresh running mean of the first BatchNorm (module ``2``) is the mean of
    the first convolution's output over all the data:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import conv_net
    >>> _ = torch.manual_seed(0)
    >>> model = conv_net(in_channels=1, channels=[4, 4], num_classes=3, image_size=4)
    >>> x, y = torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,))
    >>> fresh = mc.reset_batchnorm(model, model.state_dict(), [(x[:16], y[:16]), (x[16:], y[16:])])
    >>> with torch.no_grad():
    ...     conv = model[1](x)
    >>> torch.allclose(fresh["2.running_mean"], conv.mean(dim=(0, 2, 3)), atol=1e-6)
    True
    >>> fresh["2.num_batches_tracked"].item(), model.state_dict()["2.running_mean"].tolist()
    (2, [0.0, 0.0, 0.0, 0.0])
    """
    binding = Binding.of(model)
    binding.check(state_dict)
    _check_max_batches(max_batches)
    norms = batchnorm_layers(model)
    if not norms:
        return dict(state_dict)
    fresh = _fresh_statistics(norms, binding.bind(state_dict))
    params = binding.bind({**state_dict, **fresh})
    _statistics_pass(model, norms, lambda before: _run(model, params, batches, max_batches, before))
    return _with_statistics(binding, state_dict, fresh, norms)


def _statistics_pass(
    model: nn.Module,
    norms: Sequence[tuple[str, nn.modules.batchnorm._BatchNorm]],
    run: Callable[[Callable[[Any], None]], R],
) -> R:
    """``run(before)`` in eval mode with the BatchNorm layers training, under no_grad.

    ``before(batch)`` sets every BatchNorm's momentum to ``b / (b_1 + ... + b)`` for a
    batch of ``b`` examples: the exact cumulative average over examples. The momenta
    and training flags are restored afterwards.
    """
    seen = [0]

    def before(batch: Any) -> None:
        n = len(batch_inputs(batch)[0])
        for _, bn in norms:
            bn.momentum = n / (seen[0] + n)
        seen[0] += n

    momenta = [(bn, bn.momentum) for _, bn in norms]
    last = last_norm_child(model)
    handle = last.register_forward_hook(_stop) if last is not None else None
    with eval_mode(model), torch.no_grad():
        try:
            for _, bn in norms:
                bn.train()
            return run(before)
        finally:
            for bn, momentum in momenta:
                bn.momentum = momentum
            if handle is not None:
                handle.remove()


def _stop(module: nn.Module, args: Any, out: Any) -> None:
    raise _Stop


def last_norm_child(model: nn.Module) -> nn.Module | None:
    """The child of a sequential ``model`` after which no BatchNorm runs, where that saves work.

    A statistics pass needs the forward only up to there: in an ``nn.Sequential`` the
    children run in order, so once the last child holding a BatchNorm has run (a module
    listed twice counts at its last place), the children after it change no statistics.
    ``None`` for other models, or where that child is the last one.

    >>> from modeconnect.models import conv_net
    >>> model = conv_net(in_channels=1, channels=[2, 3], num_classes=4, image_size=4)
    >>> [type(m).__name__ for m in model][5:]
    ['Conv2d', 'BatchNorm2d', 'ReLU', 'Flatten', 'Linear']
    >>> last_norm_child(model) is model[6]
    True
    """
    if type(model) is not nn.Sequential:
        return None
    children = [c for c in model._modules.values() if c is not None]  # repeats included
    holds = [any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in c.modules())
             for c in children]  # fmt: skip
    if not any(holds):
        return None
    i = max(j for j, h in enumerate(holds) if h)
    once = sum(c is children[i] for c in children) == 1  # its hook must fire at i only
    return children[i] if once and i < len(children) - 1 else None


def reset_batchnorm_many(
    model: nn.Module,
    states: Sequence[StateDict],
    batches: Iterable[Batch],
    *,
    max_batches: int | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`reset_batchnorm` of several states in one pass over ``batches``.

    The states' weights and fresh statistics are stacked and the training-mode pass
    runs once under :func:`torch.func.vmap`, so the training data is read once for
    all of them. The first time a model goes through here, the first state is also
    reset on its own and compared (:func:`_reset_agrees`); a model whose stacked
    pass differs or raises is reset state by state, as it is for one state.
    """
    binding = Binding.of(model)
    for state in states:
        binding.check(state)
    _check_max_batches(max_batches)
    norms = batchnorm_layers(model)
    if len(states) < 2 or not norms or _RESET_AGREES.get(model) is False:
        return [reset_batchnorm(model, s, batches, max_batches=max_batches) for s in states]
    try:
        fresh = _stacked_statistics(model, binding, norms, states, batches, max_batches)
    except ModeconnectError:
        raise
    except Exception:  # an op vmap cannot batch: state by state
        _RESET_AGREES[model] = False
        fresh = None
    if fresh is not None and model not in _RESET_AGREES:
        alone = reset_batchnorm(model, states[0], batches, max_batches=max_batches)
        _RESET_AGREES[model] = all(
            torch.allclose(fresh[0][k].double(), alone[k].double(), rtol=1e-4, atol=1e-5)
            for k in fresh[0]
        )
    if fresh is None or not _RESET_AGREES[model]:
        return [reset_batchnorm(model, s, batches, max_batches=max_batches) for s in states]
    return [_with_statistics(binding, s, f, norms) for s, f in zip(states, fresh, strict=True)]


_RESET_AGREES: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Per model: whether the stacked BatchNorm reset equals the one state at a time."""


def _stacked_statistics(
    model: nn.Module,
    binding: Binding,
    norms: Sequence[tuple[str, nn.modules.batchnorm._BatchNorm]],
    states: Sequence[StateDict],
    batches: Iterable[Batch],
    max_batches: int | None,
) -> list[dict[str, Tensor]]:
    """Fresh running statistics of every state, from one vmapped training-mode pass."""
    fresh = [_fresh_statistics(norms, binding.bind(s)) for s in states]
    counters = {k: v for k, v in fresh[0].items() if k.endswith("num_batches_tracked")}
    params = [binding.bind({**s, **f, **counters}) for s, f in zip(states, fresh, strict=True)]
    shared = {k: v for k, v in params[0].items() if all(p[k] is v for p in params)}
    moving = [k for k in params[0] if k not in shared]
    stacked = {k: torch.stack([p[k] for p in params]) for k in moving}
    wanted = [k for k in fresh[0] if k not in counters]

    def stacked_pass(before: Callable[[Any], None]) -> dict[str, Tensor]:
        def one(p: dict[str, Tensor]) -> dict[str, Tensor]:
            full = {**shared, **p}
            _run(model, full, batches, max_batches, before)
            return {k: full[k] for k in wanted}

        out: dict[str, Tensor] = torch.func.vmap(one, randomness="same")(stacked)
        return out

    out = _statistics_pass(model, norms, stacked_pass)
    return [{**{k: out[k][j] for k in wanted}, **counters} for j in range(len(states))]


@dataclass(frozen=True, eq=False)
class BatchNormReset:
    """The BatchNorm reset of every evaluated point: ``reset(state)`` or ``reset(state, α)``,
    and :meth:`many` for a chunk of points in one pass over the training data."""

    model: nn.Module
    batches: Iterable[Batch]
    max_batches: int | None = None

    def __call__(self, state: StateDict, alpha: float | None = None) -> dict[str, Tensor]:
        return reset_batchnorm(self.model, state, self.batches, max_batches=self.max_batches)

    def many(
        self, states: Sequence[StateDict], alphas: Sequence[float] | None = None
    ) -> list[dict[str, Tensor]]:
        """:func:`reset_batchnorm_many` of ``states`` (the same as one by one, to tolerance)."""
        return reset_batchnorm_many(self.model, states, self.batches, max_batches=self.max_batches)


def _fresh_statistics(
    norms: Sequence[tuple[str, nn.Module]], bound: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    fresh: dict[str, Tensor] = {}
    for name, _ in norms:
        p = f"{name}." if name else ""
        fresh[f"{p}running_mean"] = torch.zeros_like(bound[f"{p}running_mean"])
        fresh[f"{p}running_var"] = torch.ones_like(bound[f"{p}running_var"])
        if f"{p}num_batches_tracked" in bound:
            fresh[f"{p}num_batches_tracked"] = torch.zeros_like(bound[f"{p}num_batches_tracked"])
    return fresh


def _with_statistics(
    binding: Binding,
    state_dict: StateDict,
    fresh: Mapping[str, Tensor],
    norms: Sequence[tuple[str, nn.Module]],
) -> dict[str, Tensor]:
    """``state_dict`` with the recomputed statistics, under every name each buffer has."""
    reached = set(fresh)
    for name, _ in norms:
        p = f"{name}." if name else ""
        count = fresh.get(f"{p}num_batches_tracked")
        if count is not None and int(count) == 0:  # never ran: keep the old statistics
            reached -= {f"{p}running_mean", f"{p}running_var", f"{p}num_batches_tracked"}
    out = dict(state_dict)
    for names in binding.groups:
        source = next((n for n in names if n in reached), None)
        if source is not None:
            out.update({n: fresh[source] for n in names if n in state_dict or n == source})
    return out


# --------------------------------------------------------------------------- REPAIR


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Per-unit mean and standard deviation (population) of each layer's output, float64."""

    mean: Mapping[str, Tensor]
    std: Mapping[str, Tensor]


def repair_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Candidate layers for REPAIR: ``nn.Linear`` and (non-transposed) ``nn.Conv1d/2d/3d``.

    Their output units lie on weight axis 0, so a per-unit affine map
    ``y ↦ s·y + t`` folds into ``W ← s·W``, ``b ← s·b + t``. Which of them REPAIR
    corrects is decided on the data (see :func:`layer_statistics`).
    """
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _unit_rows(module: nn.Module, out: Tensor) -> Tensor:
    """A layer output as ``(M, units)``: channels of a conv (dim 1), last dim of a linear."""
    if isinstance(module, nn.Linear):
        return out.reshape(-1, out.shape[-1])
    return out.transpose(0, 1).reshape(out.shape[1], -1).T


class _Moments:
    """Running per-unit count, mean and sum of squared deviations (Chan et al. 1979), float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.calls = 0

    def add(self, rows: Tensor) -> None:
        x = rows.detach().to(torch.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def std(self) -> Tensor:
        return torch.zeros(0) if self.m2 is None else (self.m2 / self.n).sqrt()


def layer_statistics(
    model: nn.Module,
    state_dict: StateDict,
    batches: Iterable[Batch],
    *,
    layers: Sequence[str] | None = None,
    max_batches: int | None = None,
) -> LayerStats:
    """Per-unit mean and std of the outputs of REPAIR's layers, over ``batches``, in eval mode.

    Every :func:`repair_layers` layer (or those named in ``layers``) that runs
    exactly once per forward pass and does not produce the model's output (the
    logits are left alone, as in Jordan et al.) is measured; others are skipped.
    The result lists layers in the order they run. With a single name in
    ``layers`` the pass stops as soon as that layer has run.
    """
    binding = Binding.of(model)
    binding.check(state_dict)
    _check_max_batches(max_batches)
    candidates = dict(repair_layers(model))
    names = list(candidates) if layers is None else list(layers)
    moments = {name: _Moments() for name in names}
    order: list[str] = []
    first: dict[str, Tensor] = {}  # outputs on the first batch, to recognise the model's own
    stop_after = names[0] if len(names) == 1 else None

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            moments[name].add(_unit_rows(module, out))
            moments[name].calls += 1
            if name not in order:
                order.append(name)
                first[name] = out
            if name == stop_after:
                raise _Stop

        return hook

    outputs: list[Any] = []

    def keep_output(module: nn.Module, args: Any, out: Any) -> None:
        if not outputs:
            outputs.append(out)

    handles = [candidates[n].register_forward_hook(hook_for(n)) for n in names]
    handles.append(model.register_forward_hook(keep_output))
    try:
        with eval_mode(model), torch.no_grad():
            batches_seen = _run(model, binding.bind(state_dict), batches, max_batches)
    finally:
        for h in handles:
            h.remove()
    final = {id(t) for t in torch.utils._pytree.tree_leaves(outputs)}
    kept = [n for n in order if moments[n].calls == batches_seen]
    if stop_after is None:  # a stopped pass has no output to compare with
        kept = [n for n in kept if id(first[n]) not in final]
    return LayerStats(
        mean={n: m for n in kept if (m := moments[n].mean) is not None},
        std={n: moments[n].std() for n in kept},
    )


def repair(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    merged: StateDict,
    batches: Iterable[Batch],
    *,
    alpha: float,
    max_batches: int | None = None,
    endpoint_stats: tuple[LayerStats, LayerStats] | None = None,
) -> dict[str, Tensor]:
    """REPAIR (Jordan et al. 2023): renormalise ``merged``'s units to the endpoints' statistics.

    For each unit ``u`` of each layer output (Linear / Conv pre-activations, see
    :func:`layer_statistics`), with means ``μ`` and standard deviations ``σ`` over
    ``batches`` (training data, eval mode), the target is

        ``μ* = (1-α)·μ_A + α·μ_B``,  ``σ* = (1-α)·σ_A + α·σ_B``,

    and the merged output ``y`` becomes ``s·y + t`` with ``s = σ*/σ_merged`` and
    ``t = μ* − s·μ_merged``, folded into the layer: ``W ← s·W`` (output axis),
    ``b ← s·b + t``. Layers are corrected in the order they run, each measured
    after the layers before it were corrected. A layer without a bias gets only
    the scale; a unit with (near) zero merged std only the shift. With
    ``merged = a`` and ``α = 0`` (or ``b`` and 1) nothing changes: ``s = 1``,
    ``t = 0``. For nets with BatchNorm use :func:`reset_batchnorm`.

    Returns a new state dict; inputs are never modified. ``endpoint_stats``
    passes precomputed :func:`layer_statistics` of ``a`` and ``b`` (reused along a
    path).

    Examples
    --------
    After REPAIR the midpoint's first layer has, per unit, the mean and the
    standard deviation halfway between A's and B's; before it, it had not:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    >>> a, b = model.state_dict(), mlp(4, [8, 8], 3).state_dict()
    >>> x = torch.randn(64, 4)
    >>> data = [(x, torch.randint(0, 3, (64,)))]
    >>> middle = mc.interpolate(a, b, 0.5)
    >>> repaired = mc.repair(model, a, b, middle, data, alpha=0.5)
    >>> def first_layer(sd):
    ...     return F.linear(x, sd["1.weight"], sd["1.bias"])
    >>> target = (first_layer(a).std(0) + first_layer(b).std(0)) / 2
    >>> torch.allclose(first_layer(repaired).std(0), target, atol=1e-5)
    True
    >>> torch.allclose(first_layer(middle).std(0), target, atol=1e-5)
    False
    >>> target = (first_layer(a).mean(0) + first_layer(b).mean(0)) / 2
    >>> torch.allclose(first_layer(repaired).mean(0), target, atol=1e-5)
    True
    """
    binding = Binding.of(model)
    for sd in (a, b, merged):
        binding.check(sd)
    if not math.isfinite(alpha):
        raise ModeconnectError(f"repair: alpha={alpha!r} is not a finite number; pass one")
    if batchnorm_layers(model):
        raise ModeconnectError(
            "repair: the model has BatchNorm layers; reset their statistics instead "
            "(bn='reset', --bn reset)"
        )
    stats_a, stats_b = endpoint_stats or (
        layer_statistics(model, a, batches, max_batches=max_batches),
        layer_statistics(model, b, batches, max_batches=max_batches),
    )
    modules = dict(repair_layers(model))
    out = dict(merged)
    for name in [n for n in stats_a.mean if n in stats_b.mean]:
        now = layer_statistics(model, out, batches, layers=[name], max_batches=max_batches)
        if name not in now.mean:
            continue
        scale, shift = _affine(stats_a, stats_b, now, name, alpha)
        out.update(_fold(binding, out, name, modules[name], scale, shift))
    return out


def _affine(
    stats_a: LayerStats, stats_b: LayerStats, now: LayerStats, name: str, alpha: float
) -> tuple[Tensor, Tensor]:
    """``(s, t)`` with ``s = σ*/σ``, ``t = μ* − s·μ``; ``torch.lerp`` is exact at α = 0 and 1."""
    mean_t = torch.lerp(stats_a.mean[name], stats_b.mean[name], alpha)
    std_t = torch.lerp(stats_a.std[name], stats_b.std[name], alpha)
    mean, std = now.mean[name], now.std[name]
    alive = std > _DEAD * std.max()
    scale = torch.where(alive, std_t / torch.where(alive, std, 1.0), 1.0)
    return scale, mean_t - scale * mean


def _fold(
    binding: Binding,
    state: StateDict,
    name: str,
    module: nn.Module,
    scale: Tensor,
    shift: Tensor,
) -> dict[str, Tensor]:
    """The layer's new weight and bias, under every name they have in ``state``."""
    p = f"{name}." if name else ""
    weight = state[f"{p}weight"]
    view = (-1,) + (1,) * (weight.dim() - 1)
    new = {f"{p}weight": (weight.to(torch.float64) * scale.view(view)).to(weight.dtype)}
    if getattr(module, "bias", None) is not None and f"{p}bias" in state:
        bias = state[f"{p}bias"]
        new[f"{p}bias"] = (bias.to(torch.float64) * scale + shift).to(bias.dtype)
    out: dict[str, Tensor] = {}
    for names in binding.groups:
        source = next((n for n in names if n in new), None)
        if source is not None:
            out.update({n: new[source] for n in names if n in state or n == source})
    return out


# --------------------------------------------------------------------------- modes


def check_mode(model: nn.Module, mode: str, batches: Iterable[Batch] | None) -> None:
    """Raise unless ``mode`` is known, has the training data it needs and fits the model.

    ``reset`` needs a BatchNorm layer with running statistics; ``repair`` needs a
    model without one (reset those instead).
    """
    if mode not in BN_MODES:
        raise ModeconnectError(f"bn: unknown bn mode {mode!r}; valid modes: {', '.join(BN_MODES)}")
    if mode == "none":
        return
    if batches is None:
        raise ModeconnectError(
            f"bn: bn={mode!r} measures statistics on training data; pass it (--train FILE) "
            "or use bn='none'"
        )
    has_bn = bool(batchnorm_layers(model))
    if mode == "reset" and not has_bn:
        raise ModeconnectError(
            "bn: bn='reset' but the model has no BatchNorm layer with running statistics; "
            "use bn='repair' (REPAIR) for nets without BatchNorm, or bn='none'"
        )
    if mode == "repair" and has_bn:
        raise ModeconnectError(
            "bn: bn='repair' but the model has BatchNorm layers; use bn='reset' to recompute "
            "their statistics"
        )


def make_correction(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    batches: Iterable[Batch] | None,
    *,
    mode: str,
    max_batches: int | None = None,
) -> Correction:
    """The correction ``(state, α) -> state`` of ``mode`` for the path from ``a`` to ``b``.

    ``"none"`` returns the state as it is; ``"reset"`` applies
    :func:`reset_batchnorm`; ``"repair"`` applies :func:`repair` with the
    endpoints' statistics measured once here. ``batches`` is training data
    (needed by ``reset`` and ``repair``). Raises for an unknown mode, missing
    data, ``reset`` on a model without BatchNorm or ``repair`` on one with it.
    """
    check_mode(model, mode, batches)
    if mode == "none" or batches is None:
        return lambda state, alpha: dict(state)
    train = batches
    if mode == "reset":
        return BatchNormReset(model, train, max_batches)
    stats = (
        layer_statistics(model, a, train, max_batches=max_batches),
        layer_statistics(model, b, train, max_batches=max_batches),
    )

    def correct(state: StateDict, alpha: float) -> dict[str, Tensor]:
        return repair(
            model, a, b, state, train, alpha=alpha, max_batches=max_batches, endpoint_stats=stats
        )

    return correct


def renormalize(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    merged: StateDict,
    batches: Iterable[Batch] | None,
    *,
    mode: str,
    alpha: float,
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """``merged = (1-α)·a + α·b`` corrected by ``mode`` (see :func:`make_correction`).

    This is what a merged model should be written with: ``mode="reset"`` gives it
    BatchNorm statistics of its own, ``mode="repair"`` folds REPAIR into its weights.
    """
    return make_correction(model, a, b, batches, mode=mode, max_batches=max_batches)(merged, alpha)


# --------------------------------------------------------------------------- every evaluated point

BN_CHOICES = ("auto", "reset", "none")
"""How a study treats BatchNorm statistics at every point it evaluates."""


def bn_correction(
    model: nn.Module,
    bn: str,
    train: Iterable[Batch] | None,
    *,
    where: str,
    max_batches: int | None = None,
) -> BatchNormReset | None:
    """The BatchNorm treatment of every evaluated state: a reset on ``train``, or ``None``.

    ``bn="auto"`` resets when the model has BatchNorm layers with running
    statistics (interpolated or perturbed statistics describe no model; Git
    Re-Basin, Garipov et al. 2018 do the same), ``"reset"`` insists on it,
    ``"none"`` keeps the statistics the state carries.
    """
    if bn not in BN_CHOICES:
        raise ModeconnectError(
            f"{where}: unknown bn {bn!r}; valid choices: {', '.join(BN_CHOICES)}"
        )
    has_bn = bool(batchnorm_layers(model))
    if bn == "none" or (bn == "auto" and not has_bn):
        return None
    if not has_bn:
        raise ModeconnectError(
            f"{where}: bn='reset' but the model has no BatchNorm layer with running statistics; "
            "use bn='none'"
        )
    if train is None:
        raise ModeconnectError(
            f"{where}: the model has BatchNorm layers, whose statistics are recomputed at every "
            "evaluated point; pass training data (train=..., --train FILE) or bn='none'"
        )
    return BatchNormReset(model, train, max_batches)
