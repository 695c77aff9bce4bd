"""The loss as a differentiable function of a state dict.

Curve training (:mod:`modeconnect.curve_fitting`), Hessian-vector products and
sharpness (:mod:`modeconnect.curvature`) need gradients with respect to the
weights, and the loss landscapes (:mod:`modeconnect.landscape`) evaluate many
states that are not any checkpoint. Everything here runs the model through
:func:`modeconnect.forward.over_batches` with a full state dict, so the module's
own tensors are never read or written.

The loss of a batch is the per-example loss of the scoring
:func:`modeconnect.evaluation.get_scoring` names (``"ce"``, ``"mse"``,
``"causal_lm"``, ``"masked_lm"`` or a callable), averaged as
:func:`modeconnect.evaluation.evaluate` averages it: ``Σ ℓ / number of scored entries``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch, LossChoice, Scoring, get_scoring
from modeconnect.evaluation.scoring import check_per_example
from modeconnect.forward import Binding, eval_mode, over_batches

__all__ = [
    "StateDict",
    "Weights",
    "batch_loss",
    "check_positive",
    "loss_and_gradient",
    "module_mode",
    "weights_of",
]

StateDict = Mapping[str, Tensor]
"""``auto``: reset BatchNorm statistics when the model has BatchNorm; ``reset``; ``none``."""


@dataclass(frozen=True)
class Weights:
    """How a state dict feeds a module when gradients flow: tied aliases and trainable keys.

    ``binding`` is the module's :class:`~modeconnect.forward.Binding`; ``given``
    holds, per distinct tensor, the first of its names the state dict gives (its
    value feeds every alias, so a gradient reaches a tied weight through all its
    uses); ``parameters`` one state-dict key per distinct floating parameter, in
    state-dict order (buffers, such as BatchNorm running statistics, are not
    parameters).
    """

    binding: Binding
    given: tuple[str, ...]
    parameters: tuple[str, ...]

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """All names of each distinct tensor of the module."""
        return self.binding.groups

    def bind(self, state: StateDict) -> dict[str, Tensor]:
        """Every name of each tensor ``state`` gives, for ``functional_call(tie_weights=False)``."""
        return self.binding.bind({k: state[k] for k in self.given if k in state})

    def aliases(self, key: str) -> tuple[str, ...]:
        """All names of the tensor ``key`` (``(key,)`` when it is not tied)."""
        return next((names for names in self.binding.groups if key in names), (key,))


def weights_of(model: nn.Module, state: StateDict) -> Weights:
    """The :class:`Weights` of ``model`` for ``state``; raise if ``state`` does not fit it."""
    binding = Binding.of(model)
    binding.check(state)
    parameters = {id(t) for t in model.parameters()}
    tensors: dict[str, Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    given: list[str] = []
    trainable: set[str] = set()
    for names in binding.groups:
        first = next((n for n in names if n in state), None)
        if first is not None:
            given.append(first)
            if id(tensors[names[0]]) in parameters and state[first].is_floating_point():
                trainable.add(first)
    return Weights(binding, tuple(given), tuple(k for k in state if k in trainable))


@contextlib.contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in training (or eval) mode, then restore each one's own flag."""
    with eval_mode(model):
        model.train(training)
        yield


def batch_loss(
    model: nn.Module, bound: StateDict, batch: Any, scoring: Scoring, index: int = 0
) -> tuple[Tensor, int]:
    """``(Σ_i ℓ(f(x_i; θ), y_i), entries)`` of one batch, differentiable in ``bound``'s tensors.

    ``batch`` is the ``index``-th batch ``(x, y)`` of its data (a masked-LM scoring
    draws its mask from that index). ``bound`` must name every alias of the
    module's tensors (:meth:`Weights.bind`). The caller sets the mode
    (:func:`module_mode`) and divides by the entries.
    """
    prepared = scoring.prepare(batch, index)

    def step(out: Any, prepared: Any) -> tuple[Tensor, int]:
        target = prepared[1]
        values = check_per_example(scoring.losses(out, target), target.shape[0])
        return values.sum(), int(scoring.count(target))

    return over_batches(model, bound, [prepared], step, bound=True)[0]


def loss_and_gradient(
    model: nn.Module,
    state: StateDict,
    keys: Sequence[str],
    batches: Iterable[Batch],
    *,
    loss: LossChoice = None,
    max_batches: int | None = None,
    weights: Weights | None = None,
) -> tuple[float, dict[str, Tensor]]:
    """Mean loss ``L(θ)`` over ``batches`` and its gradient in ``state[k]`` for ``k`` in ``keys``.

    Eval mode (BatchNorm uses its running statistics, dropout is off), one backward
    pass per batch, gradients summed and divided by the number of target entries.
    """
    scoring = get_scoring(loss, model)
    weights = weights or weights_of(model, state)
    total = torch.zeros((), dtype=torch.float64)
    grads = [torch.zeros_like(state[k]) for k in keys]
    entries = 0
    with module_mode(model, False):
        for i, batch in enumerate(limited(batches, max_batches)):
            leaves = {k: state[k].detach().requires_grad_(True) for k in keys}
            value, n = batch_loss(model, weights.bind({**state, **leaves}), batch, scoring, i)
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
    return itertools.islice(batches, max_batches)


def check_entries(entries: int, where: str) -> None:
    """Raise when a pass over the data saw no example."""
    if entries == 0:
        raise ModeconnectError(f"{where}: the data has no examples; pass some (x, y) batches")


def check_positive(where: str, name: str, value: object, *, integer: bool = True) -> None:
    """Raise unless ``value`` is a positive int (or, with ``integer=False``, a positive number).

    ``where`` names the calling function in the error message.
    """
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        kind = "int" if integer else "number"
        raise ModeconnectError(f"{where}: {name}={value!r} is not a positive {kind}; pass one")
