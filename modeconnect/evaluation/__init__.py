"""Evaluation along paths between models: scorings, curves, barriers, bootstrap.

The modules read like the concepts:

* :mod:`~modeconnect.evaluation.results`: what evaluation returns (:class:`Metrics`,
  :class:`Curve`, :class:`Barrier`, :class:`ExampleResults`, ...);
* :mod:`~modeconnect.evaluation.scoring`: scorings by name (``"ce"``, ``"mse"``,
  ``"causal_lm"``, ``"masked_lm"``) and the batch convention;
* :mod:`~modeconnect.evaluation.interpolation`: the path ``θ(α) = (1-α)·θ_A + α·θ_B``;
* :mod:`~modeconnect.evaluation.engine`: scored forward passes, many parameter
  points per pass with ``vmap`` (:func:`point_rows`), checked against the per-point
  pass;
* :mod:`~modeconnect.evaluation.folding`: eval-mode BatchNorm folded into the
  Conv/Linear layer feeding it, for evaluation passes (checked once per model);
* :mod:`~modeconnect.evaluation.curves`: :func:`evaluate`, :func:`interpolation_curve`
  and their per-example forms;
* :mod:`~modeconnect.evaluation.barriers`: barrier definitions and bootstrap intervals.
"""

from __future__ import annotations

from modeconnect.evaluation.barriers import (
    BARRIER_DEFINITIONS,
    barrier,
    barrier_definition,
    barrier_values,
    bootstrap_barrier,
)
from modeconnect.evaluation.curves import (
    alpha_grid,
    evaluate,
    evaluate_examples,
    example_curve,
    example_curves,
    interpolation_curve,
    midpoint,
)
from modeconnect.evaluation.engine import (
    CorrectedPath,
    auto_alpha_batch,
    corrected_path,
    point_rows,
    points_per_pass,
)
from modeconnect.evaluation.interpolation import (
    PathFn,
    check_pair,
    interpolate,
    is_interpolable,
    linear_path,
)
from modeconnect.evaluation.results import (
    Barrier,
    BootstrapBarrier,
    Curve,
    CurvePoint,
    ExampleCurve,
    ExampleResults,
    Interval,
    Metrics,
)
from modeconnect.evaluation.scoring import (
    IGNORE_INDEX,
    LOSSES,
    Batch,
    CausalLMScoring,
    ClassifierScoring,
    ExampleLossFn,
    LossChoice,
    LossFn,
    MaskedLMScoring,
    Scoring,
    cross_entropy,
    get_scoring,
    loss_name,
    squared_error,
)

__all__ = [
    "BARRIER_DEFINITIONS",
    "IGNORE_INDEX",
    "LOSSES",
    "Barrier",
    "Batch",
    "BootstrapBarrier",
    "CorrectedPath",
    "CausalLMScoring",
    "ClassifierScoring",
    "Curve",
    "CurvePoint",
    "ExampleCurve",
    "ExampleLossFn",
    "ExampleResults",
    "Interval",
    "LossChoice",
    "LossFn",
    "MaskedLMScoring",
    "Metrics",
    "PathFn",
    "Scoring",
    "alpha_grid",
    "auto_alpha_batch",
    "barrier",
    "barrier_definition",
    "barrier_values",
    "bootstrap_barrier",
    "check_pair",
    "corrected_path",
    "cross_entropy",
    "evaluate",
    "evaluate_examples",
    "example_curve",
    "example_curves",
    "get_scoring",
    "interpolate",
    "interpolation_curve",
    "is_interpolable",
    "linear_path",
    "loss_name",
    "midpoint",
    "point_rows",
    "points_per_pass",
    "squared_error",
]
