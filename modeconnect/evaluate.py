"""Linear interpolation between two checkpoints: loss/accuracy curves and barriers.

The path is ``θ(α) = (1-α)·θ_A + α·θ_B`` (Frankle et al. 2020; Entezari et al. 2022;
Ainsworth et al. 2023). Every model is evaluated through
:func:`torch.func.functional_call` with the full state dict (parameters *and*
buffers), so the module's own tensors are never read or written.

Two levels:

* :func:`evaluate` / :func:`interpolation_curve` give mean loss and accuracy
  (:class:`Metrics`, :class:`Curve`) with a loss *summed* over each batch;
* :func:`evaluate_examples` / :func:`example_curves` keep one loss and one hit
  count per example (:class:`ExampleResults`, :class:`ExampleCurve`), from which
  :func:`bootstrap_barrier` resamples test examples without another forward pass.
  Their losses come from :data:`LOSSES` (``"ce"``, ``"mse"``) or any callable
  returning per-example losses.

Speed: states that are identical (the same tensors) are evaluated once, and
endpoints are always evaluated on their own, so they equal :func:`evaluate`
exactly. ``alpha_batch=k`` evaluates ``k`` α in one pass with
:func:`torch.func.vmap` over stacked weights (faster for small models without
convolutions); ``alpha_batch=None`` lets a timed probe decide. The default is one
α per pass, so that results never depend on timing.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.progress import ProgressFn

__all__ = [
    "BARRIER_DEFINITIONS",
    "LOSSES",
    "Barrier",
    "Batch",
    "BootstrapBarrier",
    "Curve",
    "CurvePoint",
    "ExampleCurve",
    "ExampleLossFn",
    "ExampleResults",
    "Interval",
    "LossFn",
    "Metrics",
    "PathFn",
    "barrier",
    "barrier_values",
    "bootstrap_barrier",
    "cross_entropy",
    "evaluate",
    "evaluate_examples",
    "example_curve",
    "example_curves",
    "get_loss",
    "interpolate",
    "interpolation_curve",
    "linear_path",
    "loss_name",
    "midpoint",
    "squared_error",
]

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, y) -> scalar`` summed (not averaged) over the batch."""
ExampleLossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(logits, y) -> (N, ...)`` per-example (or per-entry) losses, ``reduction="none"``."""
PathFn = Callable[[float], Mapping[str, Tensor]]
"""``path(α) -> θ(α)``: the state dict at one point of a path between two models."""

MAX_ALPHA_BATCH = 16
"""At most this many α share one vectorised pass."""
STACK_BYTES = 256 * 2**20
"""Stacked weights of the α evaluated together stay under this many bytes."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Metrics:
    """Mean loss and top-1 accuracy over all examples (target entries) seen."""

    loss: float
    accuracy: float

    @property
    def error(self) -> float:
        """Top-1 error, ``1 - accuracy``."""
        return 1.0 - self.accuracy


@dataclass(frozen=True)
class CurvePoint:
    """Loss and accuracy of the model at one interpolation coefficient ``alpha``."""

    alpha: float
    loss: float
    accuracy: float

    @property
    def error(self) -> float:
        """Top-1 error, ``1 - accuracy``."""
        return 1.0 - self.accuracy


@dataclass(frozen=True)
class Curve:
    """Loss and accuracy along ``θ(α) = (1-α)·θ_A + α·θ_B``, one point per ``α``."""

    points: tuple[CurvePoint, ...]

    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(p.alpha for p in self.points)

    @property
    def losses(self) -> tuple[float, ...]:
        return tuple(p.loss for p in self.points)

    @property
    def accuracies(self) -> tuple[float, ...]:
        return tuple(p.accuracy for p in self.points)

    @property
    def errors(self) -> tuple[float, ...]:
        return tuple(p.error for p in self.points)

    def to_dict(self) -> list[dict[str, float]]:
        """JSON-ready ``[{"alpha", "loss", "accuracy"}, ...]`` in curve order."""
        return [{"alpha": p.alpha, "loss": p.loss, "accuracy": p.accuracy} for p in self.points]


@dataclass(frozen=True)
class Barrier:
    """Barrier heights of one curve for the loss and the error, under ``definition``."""

    loss: float
    error: float
    definition: str

    def to_dict(self) -> dict[str, float | str]:
        return {"loss": self.loss, "error": self.error, "definition": self.definition}


@dataclass(frozen=True, eq=False)
class ExampleResults:
    """Per-example sums of one model on one split, each ``(N,)`` float64.

    ``loss[i]`` sums the loss over example ``i``'s target entries, ``hits[i]`` counts
    its correct top-1 entries (NaN for floating, i.e. regression, targets) and
    ``count[i]`` its entries (1 for class labels ``y`` of shape ``(N,)``). Means are
    ratios of sums, ``Σ loss / Σ count``, as in :func:`evaluate`.
    """

    loss: Tensor
    hits: Tensor
    count: Tensor

    def metrics(self) -> Metrics:
        """Mean loss and accuracy over all entries."""
        total = self.count.sum()
        return Metrics(loss=float(self.loss.sum() / total), accuracy=float(self.hits.sum() / total))


@dataclass(frozen=True, eq=False)
class ExampleCurve:
    """Per-example results at each ``α`` of a path, in grid order."""

    alphas: tuple[float, ...]
    results: tuple[ExampleResults, ...]

    def curve(self) -> Curve:
        """Mean loss and accuracy at each ``α``."""
        metrics = [r.metrics() for r in self.results]
        return Curve(tuple(CurvePoint(t, m.loss, m.accuracy) for t, m in zip(self.alphas, metrics)))

    def matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss (S, N), hits (S, N), count (N,))`` for ``S`` alphas and ``N`` examples."""
        loss = torch.stack([r.loss for r in self.results])
        hits = torch.stack([r.hits for r in self.results])
        return loss, hits, self.results[0].count


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval ``[low, high]`` and the bootstrap standard deviation."""

    low: float
    high: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "std": self.std}


@dataclass(frozen=True)
class BootstrapBarrier:
    """Percentile bootstrap intervals of a barrier on the loss and on the error.

    ``samples`` resamples of the examples with replacement, central ``confidence``
    interval (e.g. 0.95: the 2.5 % and 97.5 % quantiles), seeded by ``seed``.
    """

    loss: Interval
    error: Interval
    definition: str
    samples: int
    confidence: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss.to_dict(),
            "error": self.error.to_dict(),
            "definition": self.definition,
            "samples": self.samples,
            "confidence": self.confidence,
            "seed": self.seed,
            "method": "percentile",
        }


# --------------------------------------------------------------------------- losses


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-entry cross-entropy ``−log softmax(z)_y``: logits ``(N, C, ...)``, classes ``(N, ...)``.

    Written as ``log_softmax`` and ``gather`` (the same numbers as
    ``F.cross_entropy(..., reduction="none")`` for valid class indices): under
    ``vmap`` its batching rule loads in milliseconds, ``nll_loss``'s in ~0.5 s.
    """
    return -F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)


def squared_error(logits: Tensor, y: Tensor) -> Tensor:
    """Per-entry squared error ``(z − t)²``, summed over the classes for class labels.

    Class indices ``y`` become one-hot targets ``t`` (MSE-trained classifiers), giving
    ``Σ_c (z_c − t_c)²`` per entry; floating ``y`` is the target itself, reshaped to
    the output's shape (regression; accuracy is then reported as NaN).
    """
    if y.is_floating_point():
        return (logits - y.reshape(logits.shape).to(logits.dtype)) ** 2
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype).movedim(-1, 1)
    return ((logits - target) ** 2).sum(dim=1)


LOSSES: dict[str, ExampleLossFn] = {"ce": cross_entropy, "mse": squared_error}
"""Per-example losses by name; ``get_loss`` also accepts ``"module:callable"``."""


def get_loss(loss: str | ExampleLossFn | None = None) -> ExampleLossFn:
    """The per-example loss named ``loss`` (default ``"ce"``), or ``loss`` itself if callable.

    A ``"package.module:callable"`` or ``"path/file.py:callable"`` reference is
    imported; the callable gets ``(logits, y)`` and returns losses of shape
    ``(N, ...)`` (``reduction="none"``).
    """
    if loss is None:
        return cross_entropy
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    if isinstance(loss, str) and ":" in loss:
        from modeconnect.files.references import import_callable

        return import_callable(loss)
    raise ModeconnectError(
        f"Unknown loss {loss!r}; valid names: {', '.join(sorted(LOSSES))}, or "
        "'module:callable' returning per-example losses (reduction=\"none\")."
    )


def loss_name(loss: str | ExampleLossFn | None) -> str:
    """A printable name: the registry name or reference, else the callable's qualified name."""
    if loss is None:
        return "ce"
    if isinstance(loss, str):
        return loss
    return f"{getattr(loss, '__module__', '?')}:{getattr(loss, '__qualname__', repr(loss))}"


# --------------------------------------------------------------------------- interpolation


def interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """Return ``θ(α) = (1-α)·a + α·b`` for every floating tensor; others come from ``a``.

    Computed in each tensor's dtype with :func:`torch.lerp`, which is exact at
    ``α=0`` (returns ``a``'s values) and ``α=1`` (``b``'s values), and returns
    ``a`` unchanged wherever ``a == b``. Non-floating tensors (BatchNorm's
    ``num_batches_tracked``) are taken from ``a``. Keys, shapes and dtypes must match.
    Tensors that need no arithmetic (endpoints, integers) are ``a``'s or ``b``'s own
    objects, not copies: clone before writing into them in place.
    """
    _check_pair(a, b)
    return _interpolate(a, b, float(alpha))


def _interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    if alpha == 0.0:
        return dict(a)
    if alpha == 1.0:
        return {k: b[k] if _is_interpolable(v) else v for k, v in a.items()}
    return {k: torch.lerp(v, b[k], alpha) if _is_interpolable(v) else v for k, v in a.items()}


def linear_path(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> PathFn:
    """``α -> θ(α)`` as :func:`interpolate`, sharing ``a``'s tensors where ``a`` equals ``b``.

    Keys with equal values in ``a`` and ``b`` are not interpolated: every point
    reuses ``a``'s tensor object, so points of a path between equal models are the
    same tensors and are evaluated once (exactly equal, as they must be).
    """
    _check_pair(a, b)
    same = frozenset(k for k, v in a.items() if v is b[k] or torch.equal(v, b[k]))
    moving = {k: b[k] for k, v in a.items() if k not in same and _is_interpolable(v)}

    def at(alpha: float) -> dict[str, Tensor]:
        alpha = float(alpha)
        if alpha == 0.0:
            return dict(a)
        if alpha == 1.0:
            return {**a, **moving}
        return {**a, **{k: torch.lerp(a[k], v, alpha) for k, v in moving.items()}}

    return at


def _is_interpolable(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _check_pair(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    """Raise unless ``a`` and ``b`` have the same keys, shapes and dtypes."""
    _check_keys(set(b), set(a), "state dict B", "state dict A")
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ModeconnectError(
                f"Tensor shape mismatch for {key!r}: A has {tuple(ta.shape)}, "
                f"B has {tuple(tb.shape)}; both checkpoints must come from the same architecture."
            )
        if ta.dtype != tb.dtype:
            raise ModeconnectError(
                f"Tensor dtype mismatch for {key!r}: A has {ta.dtype}, B has {tb.dtype}; "
                "cast both checkpoints to one dtype first."
            )
        if ta.device != tb.device:
            raise ModeconnectError(
                f"Tensor device mismatch for {key!r}: A is on {ta.device}, B on {tb.device}; "
                "move both checkpoints to one device first."
            )


def _check_keys(given: set[str], expected: set[str], what: str, against: str) -> None:
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ModeconnectError(
            f"Keys of {what} do not match {against}: missing {_short(missing)}, "
            f"unexpected {_short(unexpected)}."
        )


def _short(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Binding:
    """How a state dict maps onto a module's parameters and buffers.

    ``groups`` lists, for each distinct tensor of the module, all names it goes by
    (several when weights are tied); ``required`` marks the groups that the
    module's own ``state_dict()`` saves (parameters and persistent buffers).
    """

    groups: tuple[tuple[str, ...], ...]
    required: tuple[bool, ...]
    known: frozenset[str]

    @staticmethod
    def of(model: nn.Module) -> _Binding:
        by_tensor: dict[int, list[str]] = {}
        named: list[tuple[str, Tensor]] = [*model.named_parameters(remove_duplicate=False)]
        named += model.named_buffers(remove_duplicate=False)
        for name, tensor in named:
            by_tensor.setdefault(id(tensor), []).append(name)
        saved = set(model.state_dict(keep_vars=True))
        groups = tuple(tuple(names) for names in by_tensor.values())
        required = tuple(any(n in saved for n in names) for names in groups)
        return _Binding(groups, required, frozenset(n for n, _ in named))

    def check(self, state_dict: Mapping[str, Tensor]) -> None:
        """Raise unless ``state_dict`` gives every tensor of the module and nothing else."""
        pairs = zip(self.groups, self.required, strict=True)
        missing = [g[0] for g, req in pairs if req and _first(g, state_dict) is None]
        unexpected = sorted(set(state_dict) - self.known)
        if missing or unexpected:
            raise ModeconnectError(
                f"State dict does not fit the model: missing {_short(sorted(missing))}, "
                f"unexpected {_short(unexpected)}; load it into the same architecture."
            )

    def bind(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Name every tensor of the module, filling tied aliases from the name given."""
        bound: dict[str, Tensor] = {}
        for names in self.groups:
            value = _first(names, state_dict)
            if value is not None:
                bound.update({n: state_dict.get(n, value) for n in names})
        return bound


def _first(names: Sequence[str], state_dict: Mapping[str, Tensor]) -> Tensor | None:
    return next((state_dict[n] for n in names if n in state_dict), None)


def evaluate(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
) -> Metrics:
    """Mean loss ``(1/N) Σ_i ℓ(f(x_i; θ), y_i)`` and top-1 accuracy of ``model`` with weights ``θ``.

    ``θ = state_dict`` replaces all parameters and buffers through
    :func:`torch.func.functional_call`; the model runs in eval mode under
    ``torch.no_grad()`` and its own tensors and training flags are left unchanged.
    ``batches`` yields ``(x, y)`` with logits ``(N, C, ...)`` and class indices
    ``y`` ``(N, ...)``; accuracy compares ``argmax`` over dim 1 with ``y``.
    ``loss_fn(logits, y)`` must return the loss *summed* over the batch
    (default: cross-entropy with ``reduction="sum"``); sums accumulate in float64.
    """
    binding = _Binding.of(model)
    binding.check(state_dict)
    with _eval_mode(model), torch.no_grad():
        return _evaluate(model, binding.bind(state_dict), batches, loss_fn or _cross_entropy_sum)


def _cross_entropy_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _evaluate(
    model: nn.Module, params: dict[str, Tensor], batches: Iterable[Batch], loss_fn: LossFn
) -> Metrics:
    return _metrics(*_single_pass(_Pass(model, loss_fn, per_example=False), params, batches))


def _metrics(loss: Tensor, hits: Tensor, count: Tensor) -> Metrics:
    """Mean loss and accuracy from per-batch (or per-example) sums and entry counts."""
    total = int(count.sum())
    # Per-batch sums are in the model's dtype; the sum over batches is in float64.
    return Metrics(
        loss=loss.to(torch.float64).sum().item() / total, accuracy=hits.sum().item() / total
    )


def _single_pass(
    runner: _Pass, params: Mapping[str, Tensor], batches: Iterable[Batch]
) -> tuple[Tensor, Tensor, Tensor]:
    # One functional_call around the whole pass swaps the weights in once, not once per
    # batch: the swap costs ~5 µs per tensor, i.e. ~1 ms per batch for a 150-tensor ResNet.
    wrapped = {f"{_Pass.PREFIX}{k}": v for k, v in params.items()}
    out: tuple[Tensor, Tensor, Tensor] = torch.func.functional_call(
        runner, wrapped, (batches,), tie_weights=False
    )
    return out


def _stacked_pass(
    runner: _Pass, states: Sequence[Mapping[str, Tensor]], batches: Iterable[Batch]
) -> tuple[Tensor, Tensor, Tensor]:
    """One pass for ``k`` state dicts at once: :func:`torch.func.vmap` over stacked weights.

    Tensors shared by every state (the same object) are passed once, unbatched.
    Outputs gain a leading dimension ``k``. Small models gain most: one ``bmm``
    replaces ``k`` small matrix products and their per-call overhead.
    """
    shared = {k: v for k, v in states[0].items() if all(s[k] is v for s in states)}
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0] if k not in shared}
    prefix = _Pass.PREFIX

    def one(params: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        merged = {f"{prefix}{k}": v for k, v in {**shared, **params}.items()}
        out: tuple[Tensor, Tensor, Tensor] = torch.func.functional_call(
            runner, merged, (batches,), tie_weights=False
        )
        return out

    out: tuple[Tensor, Tensor, Tensor] = torch.func.vmap(one)(stacked)
    return out


class _Pass(nn.Module):
    """One pass of ``model`` over ``batches``: loss sums, hit counts and entry counts.

    With ``per_example=False`` the rows are batches and ``loss_fn`` returns a batch
    sum; with ``per_example=True`` the rows are examples and ``loss_fn`` returns
    per-example (or per-entry) losses with leading dimension ``N``.
    """

    PREFIX = "model."

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, per_example: bool) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.per_example = per_example

    def forward(self, batches: Iterable[Batch]) -> tuple[Tensor, Tensor, Tensor]:
        # Everything stays on the device until the end: one synchronisation per pass.
        if self.per_example:
            return self._per_example(batches)
        losses: list[Tensor] = []
        hits: list[Tensor] = []
        counts: list[int] = []
        for x, y in batches:
            logits = self.model(x)
            losses.append(_summed_loss(self.loss_fn(logits, y)))
            hits.append((logits.argmax(dim=1) == y).sum())
            counts.append(y.numel())
        _check_nonempty(sum(counts))
        return torch.stack(losses), torch.stack(hits), torch.tensor(counts)

    def _per_example(self, batches: Iterable[Batch]) -> tuple[Tensor, Tensor, Tensor]:
        # Per batch only the model, the loss and the argmax run; reductions and casts
        # happen once at the end (per-batch ones cost ~40 % on a tiny MLP).
        losses: list[Tensor] = []
        hits: list[Tensor | None] = []
        shapes: list[tuple[int, ...]] = []
        for x, y in batches:
            logits = self.model(x)
            losses.append(_check_per_example(self.loss_fn(logits, y), len(y)))
            hits.append(None if y.is_floating_point() else logits.argmax(dim=1) == y)
            shapes.append(tuple(y.shape))
        _check_nonempty(sum(s[0] for s in shapes))
        entries = [torch.full((s[0],), math.prod(s[1:]), dtype=torch.float64) for s in shapes]
        count = torch.cat(entries).to(losses[0].device)
        return _per_row_sums(losses, count), _per_row_sums(hits, count), count


def _check_nonempty(count: int) -> None:
    if count == 0:
        raise ModeconnectError(
            "No examples to evaluate: `batches` is empty; pass some (x, y) batches."
        )


def _check_per_example(loss: Tensor, n: int) -> Tensor:
    if not isinstance(loss, Tensor) or loss.ndim == 0 or loss.shape[0] != n:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ModeconnectError(
            f"loss returned {shape} for a batch of {n} examples; it must return "
            f'per-example losses of shape ({n}, ...), e.g. reduction="none".'
        )
    return loss


def _per_row_sums(parts: Sequence[Tensor | None], count: Tensor) -> Tensor:
    """Concatenate per-batch ``(N_b, ...)`` tensors into float64 sums per example ``(N,)``.

    ``None`` parts (no accuracy for regression targets) make the result NaN.
    """
    tensors = [p for p in parts if p is not None]
    if len(tensors) < len(parts):
        return torch.full_like(count, math.nan)
    if all(p.ndim == 1 for p in tensors):
        return torch.cat(tensors).to(torch.float64)
    return torch.cat([p.reshape(len(p), -1).to(torch.float64).sum(dim=1) for p in tensors])


def _summed_loss(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ModeconnectError(
            f"loss_fn returned {shape}; it must return a 0-dim tensor, "
            'the loss summed over the batch (reduction="sum").'
        )
    return loss


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


# --------------------------------------------------------------------------- per-example evaluation


def evaluate_examples(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    batches: Iterable[Batch],
    loss: str | ExampleLossFn | None = None,
) -> ExampleResults:
    """Per-example loss sums, hits and entry counts of ``model`` with weights ``state_dict``.

    As :func:`evaluate` (functional call, eval mode, no gradients), but ``loss``
    gives per-example losses ``(N, ...)`` (see :func:`get_loss`), which keeps
    what :func:`bootstrap_barrier` resamples. ``.metrics()`` gives the means.
    """
    binding = _Binding.of(model)
    binding.check(state_dict)
    runner = _Pass(model, get_loss(loss), per_example=True)
    with _eval_mode(model), torch.no_grad():
        return ExampleResults(*_single_pass(runner, binding.bind(state_dict), batches))


def example_curves(
    model: nn.Module,
    path: PathFn,
    alphas: Sequence[float],
    splits: Mapping[str, Iterable[Batch]],
    *,
    loss: str | ExampleLossFn | None = None,
    alpha_batch: int | None = 1,
    progress: ProgressFn | None = None,
    task: str = "curve",
) -> dict[str, ExampleCurve]:
    """Per-example results of the model ``path(α)`` at each ``α``, on every split.

    ``path`` maps ``α`` to a state dict: :func:`linear_path`, the same with the
    BatchNorm reset or REPAIR applied at each ``α`` (:mod:`modeconnect.bn`), or a
    layer-wise path (:mod:`modeconnect.layerwise`). Each state is built once and
    evaluated on every split. Points at ``α = 0`` and ``α = 1`` are evaluated on
    their own, so they equal :func:`evaluate_examples` exactly; the others
    ``alpha_batch`` at a time in one vectorised pass (``1``, the default: one
    ``α`` per pass; ``None``: chosen by a timed probe, see :func:`auto_alpha_batch`).
    ``progress(task, done, len(alphas))`` is called as points complete.
    """
    grid = tuple(float(t) for t in alphas)
    binding = _Binding.of(model)
    runner = _Pass(model, get_loss(loss), per_example=True)
    with _eval_mode(model), torch.no_grad():
        raw = _evaluate_path(
            model, binding, runner, path, grid, splits, alpha_batch, progress, task
        )
    return {
        name: ExampleCurve(grid, tuple(ExampleResults(*r) for r in rows))
        for name, rows in raw.items()
    }


def example_curve(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    batches: Iterable[Batch],
    *,
    steps: int = 25,
    alphas: Sequence[float] | None = None,
    loss: str | ExampleLossFn | None = None,
    alpha_batch: int | None = 1,
) -> ExampleCurve:
    """:func:`example_curves` on ``θ(α) = (1-α)·θ_A + α·θ_B`` and one split."""
    grid = _alpha_grid(steps, alphas)
    path = linear_path(a, b)
    curves = example_curves(
        model, path, grid, {"data": batches}, loss=loss, alpha_batch=alpha_batch
    )
    return curves["data"]


def auto_alpha_batch(model: nn.Module) -> int:
    """The most ``α`` one vectorised pass may stack when the caller does not say.

    ``1`` for models with convolutions: ``vmap`` turns a convolution into a grouped
    one, measured 1.2-1.7x slower on CPU (``benchmarks/bench_evaluate.py``).
    Otherwise :data:`MAX_ALPHA_BATCH`, fewer if the stacked weights would exceed
    :data:`STACK_BYTES`; :func:`example_curves` then times one chunk both ways and
    keeps vectorising only if it pays (it does when per-batch overhead dominates:
    small models, small batches; see :data:`_PROBE_SIZE`).
    """
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return 1
    tensors = [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    return max(1, min(MAX_ALPHA_BATCH, STACK_BYTES // max(size, 1)))


_VMAP_GAIN = 0.8
"""Vectorising is kept when it costs less than this fraction of one-by-one per state."""
_PROBE_SIZE = 8
"""States in the probe chunk: one alone, seven stacked. Per state, against one alone, on a
2-core CPU: a 64-64-10 MLP at batch 32 took 0.74 / 0.43 / 0.34 of the time stacking
3 / 8 / 16 α with per-example losses and 1.25 / 0.63 / 0.45 with summed ones (slower
``nll_loss`` batching rule); a 784-512-512-10 MLP at batch 500 took 1.05-1.15. Seven
stacked tell them apart; a wrong guess costs under one extra pass."""
_COMPUTE_BOUND = 2e-3
"""Seconds per batch above which a pass is compute-bound and stacking α is not tried
(the 64-64-10 MLP above took 0.06 ms per batch, the 784-512-512-10 one 5 ms)."""

Rows = tuple[Tensor, Tensor, Tensor]


def _evaluate_path(
    model: nn.Module,
    binding: _Binding,
    runner: _Pass,
    path: PathFn,
    alphas: Sequence[float],
    splits: Mapping[str, Iterable[Batch]],
    alpha_batch: int | None,
    progress: ProgressFn | None,
    task: str,
) -> dict[str, list[Rows]]:
    """Raw pass outputs for every ``α`` and split (the caller sets eval mode, no_grad).

    Endpoints (α = 0, 1) run alone; the other points in chunks of ``k``. With
    ``alpha_batch=None`` the first chunk is a probe (:data:`_PROBE_SIZE` distinct
    states): one alone, the rest stacked, timed; later chunks use the faster way.
    """
    if not splits:
        raise ModeconnectError("No data to evaluate: pass at least one split of (x, y) batches.")
    for batches in splits.values():
        _check_reiterable(batches, len(alphas))
    k = auto_alpha_batch(model) if alpha_batch is None else _check_alpha_batch(alpha_batch)
    probing = alpha_batch is None and k > 1
    inner = [i for i, t in enumerate(alphas) if t not in (0.0, 1.0)]
    chunks = [[i] for i, t in enumerate(alphas) if t in (0.0, 1.0)]
    out: dict[str, dict[int, Rows]] = {name: {} for name in splits}
    pos = done = 0
    while chunks or pos < len(inner):
        if chunks:
            idx = chunks.pop(0)
        else:
            size = min(k, _PROBE_SIZE) if probing else k
            idx, pos = inner[pos : pos + size], pos + size
        states = [_bound_state(binding, path(alphas[i])) for i in idx]
        for name, batches in splits.items():
            if probing and _distinct(states) >= 3:
                rows, faster = _probe(runner, states, batches)
                probing, k = False, k if faster else 1
            else:
                rows, worked = _evaluate_chunk(runner, states, batches, k > 1)
                k = k if worked else 1
            out[name].update(zip(idx, rows, strict=True))
        done += len(idx)
        if progress is not None:
            progress(task, done, len(alphas))
    return {name: [rows[i] for i in range(len(alphas))] for name, rows in out.items()}


def _distinct(states: Sequence[dict[str, Tensor]]) -> int:
    return len({tuple(map(id, s.values())) for s in states})


def _probe(
    runner: _Pass, states: Sequence[dict[str, Tensor]], batches: Iterable[Batch]
) -> tuple[list[Rows], bool]:
    """Evaluate ``states[0]`` alone and the rest stacked; is stacking faster per state?

    A pass slower than :data:`_COMPUTE_BOUND` seconds per batch is compute-bound:
    stacking cannot pay, so the rest run one by one and nothing is spent on trying.
    """
    start = time.perf_counter()
    first, _ = _evaluate_chunk(runner, states[:1], batches, False)
    float(first[0][0][-1])  # synchronise (GPU) before reading the clock
    single = time.perf_counter() - start
    if isinstance(batches, Sized) and single > _COMPUTE_BOUND * max(len(batches), 1):
        rest, _ = _evaluate_chunk(runner, states[1:], batches, False)
        return first + rest, False
    middle = time.perf_counter()
    rest, worked = _evaluate_chunk(runner, states[1:], batches, True)
    float(rest[-1][0][-1])
    per_state = (time.perf_counter() - middle) / (len(states) - 1)
    return first + rest, worked and per_state < _VMAP_GAIN * single


def _check_alpha_batch(alpha_batch: int) -> int:
    if isinstance(alpha_batch, bool) or not isinstance(alpha_batch, int) or alpha_batch < 1:
        raise ModeconnectError(f"alpha_batch={alpha_batch!r} must be a positive int (or None).")
    return alpha_batch


def _bound_state(binding: _Binding, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    binding.check(state)
    return binding.bind(state)


def _evaluate_chunk(
    runner: _Pass, states: Sequence[dict[str, Tensor]], batches: Iterable[Batch], vectorise: bool
) -> tuple[list[Rows], bool]:
    """Evaluate each state once per distinct set of tensors; ``vmap`` several when asked.

    Returns the rows in ``states`` order and whether vectorisation worked (``False``
    tells the caller to stop trying: ``vmap`` cannot batch every model).
    """
    keys = [tuple(map(id, s.values())) for s in states]
    index: dict[tuple[int, ...], int] = {}
    distinct: list[dict[str, Tensor]] = []
    for key, state in zip(keys, states, strict=True):
        if key not in index:
            index[key] = len(distinct)
            distinct.append(state)
    rows: list[tuple[Tensor, Tensor, Tensor]] | None = None
    worked = True
    if vectorise and len(distinct) > 1:
        try:
            loss, hits, count = _stacked_pass(runner, distinct, batches)
            rows = [(loss[j], hits[j], count[j]) for j in range(len(distinct))]
        except ModeconnectError:
            raise
        except Exception:  # data-dependent control flow, in-place updates, unsupported ops
            worked = False
    if rows is None:
        rows = [_single_pass(runner, s, batches) for s in distinct]
    return [rows[index[key]] for key in keys], worked


# --------------------------------------------------------------------------- curves


def interpolation_curve(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    batches: Iterable[Batch],
    *,
    steps: int = 25,
    alphas: Sequence[float] | None = None,
    loss_fn: LossFn | None = None,
    alpha_batch: int | None = 1,
) -> Curve:
    """Evaluate ``θ(α) = (1-α)·θ_A + α·θ_B`` at each ``α`` (Frankle et al. 2020).

    ``alphas`` defaults to ``steps`` evenly spaced values from 0 to 1, both
    included. The endpoints are ``a`` and ``b`` themselves, evaluated on their own,
    so their points equal ``evaluate(model, a, ...)`` and ``evaluate(model, b, ...)``
    exactly. ``batches`` is iterated once per ``α`` and must be re-iterable (a list,
    a ``DataLoader``), not a generator. See :func:`evaluate` for ``loss_fn`` and
    :func:`example_curves` for ``alpha_batch`` (several ``α`` per vectorised pass).
    """
    grid = _alpha_grid(steps, alphas)
    path = linear_path(a, b)
    binding = _Binding.of(model)
    binding.check(a)
    _check_reiterable(batches, len(grid))
    runner = _Pass(model, loss_fn or _cross_entropy_sum, per_example=False)
    with _eval_mode(model), torch.no_grad():
        raw = _evaluate_path(
            model, binding, runner, path, grid, {"data": batches}, alpha_batch, None, ""
        )
    metrics = [_metrics(*row) for row in raw["data"]]
    return Curve(tuple(CurvePoint(t, m.loss, m.accuracy) for t, m in zip(grid, metrics)))


def midpoint(curve: Curve, alpha: float = 0.5) -> CurvePoint:
    """The point of ``curve`` at ``alpha`` (default α = 0.5, much reported in the literature)."""
    for point in curve.points:
        if point.alpha == alpha:
            return point
    raise ModeconnectError(
        f"The curve has no point at alpha={alpha:g} (alphas {list(curve.alphas)}); "
        "use an odd number of steps (the default 25 includes 0.5) or add it to alphas."
    )


def _alpha_grid(steps: int, alphas: Sequence[float] | None) -> tuple[float, ...]:
    if alphas is not None:
        grid = tuple(float(x) for x in alphas)
        if not grid or not all(math.isfinite(x) for x in grid):
            raise ModeconnectError(f"alphas={list(alphas)!r} must be finite numbers, at least one.")
        return grid
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ModeconnectError(
            f"steps={steps!r} must be an int >= 2 (alpha=0 and alpha=1 included)."
        )
    # i / (steps-1) hits 0.0 and 1.0 exactly (linspace's float arithmetic need not).
    return tuple(i / (steps - 1) for i in range(steps))


def _check_reiterable(batches: Iterable[Any], passes: int) -> None:
    if passes > 1 and iter(batches) is batches:
        raise ModeconnectError(
            "batches is a one-shot iterator but the curve needs one pass per alpha; "
            "pass a list of (x, y) batches or a DataLoader."
        )


# --------------------------------------------------------------------------- barriers


def _lerp_barrier(
    alphas: Sequence[float], values: Sequence[float], ends: tuple[float, float] | None = None
) -> float:
    """``max_α [V(α) − ((1−α)V(0) + αV(1))]`` (Entezari et al. 2022; Ainsworth et al. 2023)."""
    v0, v1 = ends or (_endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0))
    gaps = [v - _lerp(v0, v1, t) for t, v in zip(alphas, values, strict=True) if 0.0 <= t <= 1.0]
    return _nan_max(gaps)


def _mean_barrier(
    alphas: Sequence[float], values: Sequence[float], ends: tuple[float, float] | None = None
) -> float:
    """``max_α V(α) − ½(V(0) + V(1))`` (Frankle et al. 2020)."""
    v0, v1 = ends or (_endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0))
    inside = [v for t, v in zip(alphas, values, strict=True) if 0.0 <= t <= 1.0]
    return _nan_max(inside) - (v0 + v1) / 2


def _nan_max(values: Sequence[float]) -> float:
    # Python's max() is order-dependent with NaN; a NaN value (no accuracy for
    # regression targets) makes the barrier NaN, as torch.amax does.
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _lerp(v0: float, v1: float, t: float) -> float:
    # Two-sided form (as torch.lerp): exact at t=0 and t=1, and exactly v0 when v0 == v1,
    # so endpoints and identical models give a barrier of exactly 0.0.
    return v0 + t * (v1 - v0) if t < 0.5 else v1 - (1.0 - t) * (v1 - v0)


def _endpoint(alphas: Sequence[float], values: Sequence[float], alpha: float) -> float:
    for t, v in zip(alphas, values, strict=True):
        if t == alpha:
            return v
    raise ModeconnectError(
        f"The curve has no point at alpha={alpha:g} (alphas {list(alphas)}); "
        "a barrier needs both endpoints, so include 0 and 1 in alphas."
    )


BARRIER_DEFINITIONS: dict[str, Callable[..., float]] = {
    "lerp": _lerp_barrier,
    "mean": _mean_barrier,
}


def barrier(
    curve: Curve, definition: str = "lerp", *, baseline: tuple[Metrics, Metrics] | None = None
) -> Barrier:
    """Barrier heights of ``curve`` for V = loss and V = error (``1 - accuracy``).

    - ``"lerp"`` (Entezari et al. 2022; Git Re-Basin, Ainsworth et al. 2023):
      ``max_α [V(α) − ((1−α)V(0) + αV(1))]``.
    - ``"mean"`` (Frankle et al. 2020): ``max_α V(α) − ½(V(0) + V(1))``.

    The maximum runs over the points with ``0 ≤ α ≤ 1``, endpoints included, so
    both barriers are ``≥ 0`` and exactly ``0.0`` for a curve that is flat.
    ``V(0)`` and ``V(1)`` are the curve's own endpoints unless ``baseline`` gives
    the metrics of two other models: layer-wise barriers (Adilova et al. 2024)
    measure a partial interpolation against the full models A and B (and can
    then be negative).
    """
    height = _definition(definition)
    alphas = curve.alphas
    if baseline is None:
        loss_ends = error_ends = None
    else:
        loss_ends = (baseline[0].loss, baseline[1].loss)
        error_ends = (baseline[0].error, baseline[1].error)
    return Barrier(
        loss=float(height(alphas, curve.losses, loss_ends)),
        error=float(height(alphas, curve.errors, error_ends)),
        definition=definition,
    )


def _definition(definition: str) -> Callable[..., float]:
    if definition not in BARRIER_DEFINITIONS:
        raise ModeconnectError(
            f"Unknown barrier definition {definition!r}; "
            f"valid names: {', '.join(sorted(BARRIER_DEFINITIONS))}."
        )
    return BARRIER_DEFINITIONS[definition]


def barrier_values(alphas: Sequence[float], values: Tensor, definition: str = "lerp") -> Tensor:
    """The barrier of many curves at once: ``values (..., S)`` on the grid ``alphas`` → ``(...)``.

    Same definitions and arithmetic as :func:`barrier` (a ``float64`` input gives
    the same numbers), vectorised for bootstrap resamples.
    """
    _definition(definition)
    t = torch.tensor(alphas, dtype=values.dtype, device=values.device)
    i0, i1 = _index_of(alphas, 0.0), _index_of(alphas, 1.0)
    v0, v1 = values[..., i0 : i0 + 1], values[..., i1 : i1 + 1]
    inside = (t >= 0.0) & (t <= 1.0)
    if definition == "lerp":
        line = torch.where(t < 0.5, v0 + t * (v1 - v0), v1 - (1.0 - t) * (v1 - v0))
        return (values - line)[..., inside].amax(dim=-1)
    return values[..., inside].amax(dim=-1) - ((v0 + v1) / 2).squeeze(-1)


def _index_of(alphas: Sequence[float], alpha: float) -> int:
    for i, t in enumerate(alphas):
        if t == alpha:
            return i
    raise ModeconnectError(
        f"The curve has no point at alpha={alpha:g} (alphas {list(alphas)}); "
        "a barrier needs both endpoints, so include 0 and 1 in alphas."
    )


def bootstrap_barrier(
    curve: ExampleCurve,
    definition: str = "lerp",
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapBarrier:
    """Percentile bootstrap interval of the barrier, resampling examples (Efron 1979).

    Each resample draws ``N`` of the ``N`` examples with replacement (the same
    draw at every ``α``: the curve is paired), recomputes every point as a ratio of
    sums ``Σ_i w_i ℓ_i(α) / Σ_i w_i n_i`` with multiplicities ``w``, and the
    barrier. No forward pass is repeated: cost ``O(samples · N · S)``. The
    interval holds the central ``confidence`` mass of the resampled barriers.
    A barrier is a maximum, so its bootstrap distribution sits slightly above the
    point estimate when several ``α`` are near the top.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ModeconnectError(f"samples={samples!r} must be a positive int.")
    if not 0.0 < confidence < 1.0:
        raise ModeconnectError(f"confidence={confidence!r} must lie strictly between 0 and 1.")
    loss, hits, count = (m.to(torch.float64) for m in curve.matrices())
    gen = torch.Generator().manual_seed(seed)
    n = count.numel()
    loss_b, error_b = [], []
    for start in range(0, samples, _BOOTSTRAP_CHUNK):
        draws = torch.randint(n, (min(_BOOTSTRAP_CHUNK, samples - start), n), generator=gen)
        w = torch.zeros(draws.shape, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(draws.shape, dtype=torch.float64)
        )
        total = (w @ count.cpu()).unsqueeze(1)
        loss_b.append(barrier_values(curve.alphas, w @ loss.cpu().T / total, definition))
        error_b.append(barrier_values(curve.alphas, 1.0 - w @ hits.cpu().T / total, definition))
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    return BootstrapBarrier(
        loss=_interval(torch.cat(loss_b), q),
        error=_interval(torch.cat(error_b), q),
        definition=definition,
        samples=samples,
        confidence=confidence,
        seed=seed,
    )


_BOOTSTRAP_CHUNK = 256


def _interval(values: Tensor, q: Tensor) -> Interval:
    low, high = torch.quantile(values, q).tolist()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return Interval(low=low, high=high, std=std)
