"""Evaluating models and paths: metrics of one state, curves along ``θ(α)``.

Every model runs through :mod:`modeconnect.forward` with the full state dict
(parameters *and* buffers), in eval mode under ``torch.no_grad()``, so the module's
own tensors and training flags are never read or written. Two levels:

* :func:`evaluate` / :func:`interpolation_curve` give mean loss and accuracy
  (:class:`~modeconnect.evaluation.Metrics`, :class:`~modeconnect.evaluation.Curve`)
  from per-batch sums;
* :func:`evaluate_examples` / :func:`example_curves` keep one loss and one hit
  count per example (:class:`~modeconnect.evaluation.ExampleResults`,
  :class:`~modeconnect.evaluation.ExampleCurve`), from which
  :func:`~modeconnect.evaluation.bootstrap_barrier` resamples test examples without
  another forward pass.

``loss`` chooses the scoring (:mod:`modeconnect.evaluation.scoring`): ``"ce"`` (the
default), ``"mse"``, a callable of per-example losses, or, for language models,
``"causal_lm"`` and ``"masked_lm"``, whose results also give the perplexity.

Speed: states that are identical (the same tensors) are evaluated once, and
endpoints are always evaluated on their own, so they equal :func:`evaluate`
exactly. ``alpha_batch=k`` evaluates ``k`` α in one pass with
:func:`torch.func.vmap` over stacked weights (faster for small models without
convolutions); ``alpha_batch=None`` chooses ``k`` from the model and the data
(:func:`~modeconnect.evaluation.engine.points_per_pass`), never from timing. The
default is one α per pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.devices import moved_batches
from modeconnect.distributed import Cluster
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation.engine import Pass, metrics, path_rows
from modeconnect.evaluation.interpolation import PathFn, linear_path, placed_path
from modeconnect.evaluation.results import Curve, CurvePoint, ExampleCurve, ExampleResults, Metrics
from modeconnect.evaluation.scoring import Batch, LossChoice, LossFn, Scoring, get_scoring
from modeconnect.forward import Binding, eval_mode
from modeconnect.progress import ProgressFn

__all__ = [
    "alpha_grid",
    "evaluate",
    "evaluate_examples",
    "example_curve",
    "example_curves",
    "interpolation_curve",
    "midpoint",
]


def evaluate(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    loss: LossChoice = None,
) -> Metrics:
    """Mean loss ``(1/N) Σ_i ℓ(f(x_i; θ), y_i)`` and top-1 accuracy of ``model`` with weights ``θ``.

    ``θ = state_dict`` replaces all parameters and buffers for the pass
    (:func:`modeconnect.forward.swapped`, as :func:`torch.func.functional_call` does);
    eval-mode BatchNorm layers run folded into the layer feeding them where that is
    exact to float tolerance (:mod:`modeconnect.evaluation.folding`); the model runs
    in eval mode under ``torch.no_grad()`` and its own tensors and training flags are
    left unchanged.
    ``batches`` yields ``(x, y)`` (see :mod:`modeconnect.evaluation.scoring`): for
    classifiers logits ``(N, C, ...)`` and class indices ``y`` ``(N, ...)``, whose
    accuracy compares ``argmax`` over dim 1 with ``y``. ``loss`` names the scoring
    (``"ce"`` by default; ``"causal_lm"`` and ``"masked_lm"`` for language models,
    which also report the perplexity); or ``loss_fn(logits, y)`` returns a
    classifier's loss *summed* over the batch. Sums accumulate in float64.

    Examples
    --------
    The metrics are those of the model run by hand, over all batches:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8], out_features=3)
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> metrics = mc.evaluate(model, model.state_dict(), [(x[:40], y[:40]), (x[40:], y[40:])])
    >>> with torch.no_grad():
    ...     logits = model(x)
    >>> abs(metrics.loss - F.cross_entropy(logits, y).item()) < 1e-6
    True
    >>> metrics.accuracy == (logits.argmax(dim=1) == y).float().mean().item()
    True
    >>> metrics.error == 1 - metrics.accuracy, metrics.perplexity is None
    (True, True)
    """
    scoring = _scoring(model, loss, loss_fn, "evaluate")
    params = Binding.of(model).checked(state_dict)
    runner = Pass.of(model, scoring, per_example=False, sum_loss=loss_fn)
    with eval_mode(model), torch.no_grad():
        return metrics(runner.run(params, batches), scoring.per_token)


def evaluate_examples(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    batches: Iterable[Batch],
    loss: LossChoice = None,
) -> ExampleResults:
    """Per-example loss sums, hits and entry counts of ``model`` with weights ``state_dict``.

    As :func:`evaluate` (functional call, eval mode, no gradients), but the
    scoring's per-example losses are kept (see
    :func:`~modeconnect.evaluation.get_scoring`), which is what
    :func:`~modeconnect.evaluation.bootstrap_barrier` resamples. ``.metrics()`` gives
    the means.
    """
    scoring = get_scoring(loss, model)
    params = Binding.of(model).checked(state_dict)
    runner = Pass.of(model, scoring, per_example=True)
    with eval_mode(model), torch.no_grad():
        return ExampleResults(*runner.run(params, batches), per_token=scoring.per_token)


def interpolation_curve(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    batches: Iterable[Batch],
    *,
    steps: int = 25,
    alphas: Sequence[float] | None = None,
    loss_fn: LossFn | None = None,
    loss: LossChoice = None,
    alpha_batch: int | None = 1,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    task: str = "curve",
) -> Curve:
    """Evaluate ``θ(α) = (1-α)·θ_A + α·θ_B`` at each ``α`` (Frankle et al. 2020).

    ``alphas`` defaults to ``steps`` evenly spaced values from 0 to 1, both
    included. The endpoints are ``a`` and ``b`` themselves, evaluated on their own,
    so their points equal ``evaluate(model, a, ...)`` and ``evaluate(model, b, ...)``
    exactly. ``batches`` is iterated once per ``α`` and must be re-iterable (a list,
    a ``DataLoader``), not a generator. See :func:`evaluate` for ``loss`` and
    ``loss_fn`` and :func:`example_curves` for ``alpha_batch`` (several ``α`` per
    vectorised pass).

    ``a`` and ``b`` may be lazy mappings (checkpoints on disk), and ``device``/``dtype``
    move the evaluation: then each point is built tensor by tensor in that dtype on that
    device (:func:`~modeconnect.evaluation.placed_path`), the batches are moved there
    once, and points are evaluated one at a time, so one model is alive at a time.
    ``progress(task, done, len(alphas))`` is called as points complete.

    Examples
    --------
    Between two independently initialised networks; the endpoints are the
    networks' own metrics:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=4, hidden=[8], out_features=3)
    >>> a, b = model.state_dict(), mlp(4, [8], 3).state_dict()
    >>> data = [(torch.randn(64, 4), torch.randint(0, 3, (64,)))]
    >>> curve = mc.interpolation_curve(model, a, b, data, steps=5)
    >>> curve.alphas
    (0.0, 0.25, 0.5, 0.75, 1.0)
    >>> curve.points[0].loss == mc.evaluate(model, a, data).loss
    True
    >>> curve.points[-1].accuracy == mc.evaluate(model, b, data).accuracy
    True
    """
    grid = alpha_grid(steps, alphas)
    scoring = _scoring(model, loss, loss_fn, "interpolation_curve")
    Binding.of(model).check(a)
    if device is None and dtype is None and isinstance(a, dict) and isinstance(b, dict):
        path = linear_path(a, b)
    else:
        path = placed_path(model, a, b, device=device, dtype=dtype)
        batches = moved_batches(batches, device or torch.device("cpu"), dtype)
        alpha_batch = 1
    runner = Pass.of(model, scoring, per_example=False, sum_loss=loss_fn)
    with eval_mode(model), torch.no_grad():
        raw = path_rows(runner, path, grid, {"data": batches}, alpha_batch, progress, task)
    points = [metrics(row, scoring.per_token) for row in raw["data"]]
    return Curve(
        tuple(CurvePoint(t, m.loss, m.accuracy, m.perplexity) for t, m in zip(grid, points))
    )


def example_curves(
    model: nn.Module,
    path: PathFn,
    alphas: Sequence[float],
    splits: Mapping[str, Iterable[Batch]],
    *,
    loss: LossChoice = None,
    alpha_batch: int | None = 1,
    progress: ProgressFn | None = None,
    task: str = "curve",
    cluster: Cluster | None = None,
) -> dict[str, ExampleCurve]:
    """Per-example results of the model ``path(α)`` at each ``α``, on every split.

    ``path`` maps ``α`` to a state dict: :func:`~modeconnect.evaluation.linear_path`,
    the same with the BatchNorm reset or REPAIR applied at each ``α``
    (:mod:`modeconnect.bn`), or a layer-wise path (:mod:`modeconnect.layerwise`).
    Each state is built once and evaluated on every split. Points at ``α = 0`` and
    ``α = 1`` are evaluated on their own, so they equal :func:`evaluate_examples`
    exactly; the others ``alpha_batch`` at a time in one vectorised pass (``1``, the
    default: one ``α`` per pass; ``None``: chosen from the model and the data, see
    :func:`~modeconnect.evaluation.engine.points_per_pass`). ``path`` may be a
    :class:`~modeconnect.evaluation.engine.CorrectedPath`, whose correction (a
    BatchNorm reset) then runs for a chunk of points in one pass.
    ``progress(task, done, len(alphas))`` is called as points complete. On a ``cluster``
    the chunks of points run as Ray tasks, with the local run's results
    (:func:`~modeconnect.evaluation.engine.point_rows`).
    """
    grid = tuple(float(t) for t in alphas)
    scoring = get_scoring(loss, model)
    runner = Pass.of(model, scoring, per_example=True)
    with eval_mode(model), torch.no_grad():
        raw = path_rows(runner, path, grid, splits, alpha_batch, progress, task, cluster)
    return {
        name: ExampleCurve(
            grid, tuple(ExampleResults(*r, per_token=scoring.per_token) for r in rows)
        )
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
    loss: LossChoice = None,
    alpha_batch: int | None = 1,
) -> ExampleCurve:
    """:func:`example_curves` on ``θ(α) = (1-α)·θ_A + α·θ_B`` and one split."""
    grid = alpha_grid(steps, alphas)
    path = linear_path(a, b)
    curves = example_curves(
        model, path, grid, {"data": batches}, loss=loss, alpha_batch=alpha_batch
    )
    return curves["data"]


def midpoint(curve: Curve, alpha: float = 0.5) -> CurvePoint:
    """The point of ``curve`` at ``alpha`` (default α = 0.5, much reported in the literature)."""
    for point in curve.points:
        if point.alpha == alpha:
            return point
    raise ModeconnectError(
        f"midpoint: the curve has no point at alpha={alpha:g} (alphas {list(curve.alphas)}); "
        "use an odd number of steps (the default 25 includes 0.5) or add it to alphas"
    )


def alpha_grid(steps: int, alphas: Sequence[float] | None) -> tuple[float, ...]:
    """``alphas`` as floats, or ``steps`` evenly spaced values from 0 to 1 (both exact)."""
    if alphas is not None:
        grid = tuple(float(x) for x in alphas)
        if not grid or not all(math.isfinite(x) for x in grid):
            raise ModeconnectError(
                f"alphas: {list(alphas)!r} must be finite numbers, at least one; pass such a list"
            )
        return grid
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ModeconnectError(
            f"alphas: steps={steps!r} must be an int >= 2 (alpha=0 and alpha=1 included); "
            "pass e.g. 25"
        )
    # i / (steps-1) hits 0.0 and 1.0 exactly (linspace's float arithmetic need not).
    return tuple(i / (steps - 1) for i in range(steps))


def _scoring(model: nn.Module, loss: LossChoice, loss_fn: Any, where: str) -> Scoring:
    if loss is not None and loss_fn is not None:
        raise ModeconnectError(
            f"{where}: both loss and loss_fn are given; pass loss (a scoring, or per-example "
            "losses) or loss_fn (a classifier's loss summed over the batch), not both"
        )
    return get_scoring(loss, model)
