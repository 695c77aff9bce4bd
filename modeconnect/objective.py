"""The loss as a differentiable function of a state dict.

Curve training (:mod:`modeconnect.curves`), Hessian-vector products and
sharpness (:mod:`modeconnect.sharpness`) need gradients with respect to the
weights, and the loss landscapes (:mod:`modeconnect.landscape`) evaluate many
states that are not any checkpoint. Everything here runs the model through
:func:`torch.func.functional_call` with a full state dict, so the module's own
tensors are never read or written.

The loss of a batch is the per-example loss of :func:`modeconnect.evaluate.get_loss`
(``"ce"``, ``"mse"`` or a callable), averaged as :func:`modeconnect.evaluate`
averages it: ``Σ ℓ / number of target entries``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modeconnect.bn import batchnorm_layers, reset_batchnorm
from modeconnect.errors import ModeconnectError
from modeconnect.evaluate import Batch, ExampleLossFn, get_loss

__all__ = [
    "BN_CHOICES",
    "StateDict",
    "Weights",
    "batch_loss",
    "bn_correction",
    "check_positive",
    "loss_and_gradient",
    "module_mode",
    "weights_of",
]

StateDict = Mapping[str, Tensor]
BN_CHOICES = ("auto", "reset", "none")
"""``auto``: reset BatchNorm statistics when the model has BatchNorm; ``reset``; ``none``."""


@dataclass(frozen=True)
class Weights:
    """How a state dict feeds a module: tied aliases and which keys are trainable parameters.

    ``groups`` lists, for each distinct tensor of the module, all its names
    (several when weights are tied; a state dict may give any of them, and the
    first one given is used); ``parameters`` holds one state-dict key per distinct
    floating parameter, in state-dict order (buffers, such as BatchNorm running
    statistics, are not parameters).
    """

    groups: tuple[tuple[str, ...], ...]
    parameters: tuple[str, ...]

    def bind(self, state: StateDict) -> dict[str, Tensor]:
        """Every name of each tensor ``state`` gives, for ``functional_call(tie_weights=False)``."""
        bound: dict[str, Tensor] = {}
        for names in self.groups:
            given = next((n for n in names if n in state), None)
            if given is not None:
                bound.update({n: state[given] for n in names})
        return bound

    def aliases(self, key: str) -> tuple[str, ...]:
        """All names of the tensor ``key`` (``(key,)`` when it is not tied)."""
        return next((names for names in self.groups if key in names), (key,))


def weights_of(model: nn.Module, state: StateDict, where: str) -> Weights:
    """The :class:`Weights` of ``model`` for ``state``; raise if ``state`` does not fit the model.

    ``where`` names the calling function in the error message.
    """
    groups: dict[int, list[str]] = {}
    named: list[tuple[str, Tensor]] = [*model.named_parameters(remove_duplicate=False)]
    params = {id(t) for _, t in named}
    named += model.named_buffers(remove_duplicate=False)
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    saved = set(model.state_dict(keep_vars=True))
    known = {n for names in groups.values() for n in names}
    missing = [
        names[0]
        for names in groups.values()
        if any(n in saved for n in names) and not any(n in state for n in names)
    ]
    unexpected = sorted(set(state) - known)
    if missing or unexpected:
        raise ModeconnectError(
            f"{where}: the state dict does not fit the model: missing {_short(sorted(missing))}, "
            f"unexpected {_short(unexpected)}; load it into the same architecture."
        )
    given = [
        next(n for n in names if n in state)
        for key, names in groups.items()
        if key in params and any(n in state for n in names)
    ]
    order = {k: i for i, k in enumerate(state)}
    floating = sorted((k for k in given if state[k].is_floating_point()), key=order.__getitem__)
    return Weights(tuple(tuple(names) for names in groups.values()), tuple(floating))


def _short(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


@contextlib.contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in training (or eval) mode, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def batch_loss(
    model: nn.Module, bound: StateDict, x: Tensor, y: Tensor, loss: ExampleLossFn
) -> tuple[Tensor, int]:
    """``(Σ_i ℓ(f(x_i; θ), y_i), entries)`` of one batch, differentiable in ``bound``'s tensors.

    ``bound`` must name every alias of the module's tensors (:meth:`Weights.bind`).
    The caller sets the mode (:func:`module_mode`) and divides by the entries.
    """
    logits = torch.func.functional_call(model, dict(bound), (x,), tie_weights=False)
    values = loss(logits, y)
    if not isinstance(values, Tensor) or values.ndim == 0 or values.shape[0] != len(y):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ModeconnectError(
            f"loss: returned {shape} for a batch of {len(y)} examples; it must return "
            f'per-example losses of shape ({len(y)}, ...), e.g. reduction="none".'
        )
    return values.sum(), y.numel()


def loss_and_gradient(
    model: nn.Module,
    state: StateDict,
    keys: Sequence[str],
    batches: Iterable[Batch],
    *,
    loss: str | ExampleLossFn | None = None,
    max_batches: int | None = None,
    weights: Weights | None = None,
) -> tuple[float, dict[str, Tensor]]:
    """Mean loss ``L(θ)`` over ``batches`` and its gradient in ``state[k]`` for ``k`` in ``keys``.

    Eval mode (BatchNorm uses its running statistics, dropout is off), one backward
    pass per batch, gradients summed and divided by the number of target entries.
    """
    fn = get_loss(loss)
    weights = weights or weights_of(model, state, "loss_and_gradient")
    total = torch.zeros((), dtype=torch.float64)
    grads = [torch.zeros_like(state[k]) for k in keys]
    entries = 0
    with module_mode(model, False):
        for x, y in limited(batches, max_batches):
            leaves = {k: state[k].detach().requires_grad_(True) for k in keys}
            value, n = batch_loss(model, weights.bind({**state, **leaves}), x, y, fn)
            parts = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
            for g, part in zip(grads, parts, strict=True):
                if part is not None:
                    g += part
            total += value.detach().to(torch.float64)
            entries += n
    check_entries(entries, "loss_and_gradient")
    return float(total) / entries, {k: g / entries for k, g in zip(keys, grads, strict=True)}


def limited(batches: Iterable[Batch], max_batches: int | None) -> Iterator[Batch]:
    """The first ``max_batches`` batches of ``batches`` (all of them for ``None``)."""
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            return
        yield x, y


def check_entries(entries: int, where: str) -> None:
    """Raise when a pass over the data saw no example."""
    if entries == 0:
        raise ModeconnectError(f"{where}: the data has no examples; pass some (x, y) batches.")


def check_positive(where: str, name: str, value: object, *, integer: bool = True) -> None:
    """Raise unless ``value`` is a positive int (or, with ``integer=False``, a positive number).

    ``where`` names the calling function in the error message.
    """
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        kind = "int" if integer else "number"
        raise ModeconnectError(f"{where}: {name}={value!r} is not a positive {kind}; pass one.")


def bn_correction(
    model: nn.Module,
    bn: str,
    train: Iterable[Batch] | None,
    *,
    where: str,
    max_batches: int | None = None,
) -> Callable[[StateDict], dict[str, Tensor]] | None:
    """The BatchNorm treatment of every evaluated state: a reset on ``train``, or ``None``.

    ``bn="auto"`` resets when the model has BatchNorm layers with running
    statistics (interpolated or perturbed statistics describe no model; Git
    Re-Basin, Garipov et al. 2018 do the same), ``"reset"`` insists on it,
    ``"none"`` keeps the statistics the state carries.
    """
    if bn not in BN_CHOICES:
        raise ModeconnectError(
            f"{where}: unknown bn {bn!r}; valid choices: {', '.join(BN_CHOICES)}."
        )
    has_bn = bool(batchnorm_layers(model))
    if bn == "none" or (bn == "auto" and not has_bn):
        return None
    if not has_bn:
        raise ModeconnectError(
            f"{where}: bn='reset' but the model has no BatchNorm layer with running statistics; "
            "use bn='none'."
        )
    if train is None:
        raise ModeconnectError(
            f"{where}: the model has BatchNorm layers, whose statistics are recomputed at every "
            "evaluated point; pass training data (train=..., --train FILE) or bn='none'."
        )
    data = train

    def reset(state: StateDict) -> dict[str, Tensor]:
        return reset_batchnorm(model, state, data, max_batches=max_batches)

    return reset
