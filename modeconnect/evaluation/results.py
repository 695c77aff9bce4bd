"""What evaluation returns: metrics, curves, barriers and bootstrap intervals.

Small frozen dataclasses, no computation beyond means and serialisation. Losses
are means over target *entries* (examples for class labels, tokens for language
models) as ratios of sums, ``Σ loss / Σ entries``. For language-model scorings
(:mod:`modeconnect.evaluation.scoring`) the perplexity ``exp(mean loss)`` is reported
beside the loss; for the others it is ``None`` and left out of the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modeconnect.records import Record

__all__ = [
    "Barrier",
    "BootstrapBarrier",
    "Curve",
    "CurvePoint",
    "ExampleCurve",
    "ExampleResults",
    "Interval",
    "Metrics",
    "perplexity",
]


def perplexity(loss: float) -> float:
    """``exp(loss)``: the perplexity of a mean token cross-entropy (``inf`` past float range)."""
    return math.exp(loss) if loss < 709.0 else math.inf


class _TopOneError:
    """The ``error`` of a record with an ``accuracy``."""

    accuracy: float

    @property
    def error(self) -> float:
        """Top-1 error, ``1 - accuracy``."""
        return 1.0 - self.accuracy


@dataclass(frozen=True)
class Metrics(_TopOneError):
    """Mean loss and top-1 accuracy over all target entries seen.

    ``perplexity`` is ``exp(loss)`` for language-model scorings, else ``None``.
    """

    loss: float
    accuracy: float
    perplexity: float | None = None


@dataclass(frozen=True)
class CurvePoint(_TopOneError):
    """Loss and accuracy (and, for language models, perplexity) at one coefficient ``alpha``."""

    alpha: float
    loss: float
    accuracy: float
    perplexity: float | None = None

    def to_dict(self) -> dict[str, float]:
        """``{"alpha", "loss", "accuracy"}``, and ``"perplexity"`` when there is one."""
        out = {"alpha": self.alpha, "loss": self.loss, "accuracy": self.accuracy}
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity
        return out


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
        """JSON-ready ``[{"alpha", "loss", "accuracy"(, "perplexity")}, ...]`` in curve order."""
        return [p.to_dict() for p in self.points]


@dataclass(frozen=True)
class Barrier(Record):
    """Barrier heights of one curve for the loss and the error, under ``definition``."""

    loss: float
    error: float
    definition: str


@dataclass(frozen=True, eq=False)
class ExampleResults:
    """Per-example sums of one model on one split, each ``(N,)`` float64.

    ``loss[i]`` sums the loss over example ``i``'s target entries, ``hits[i]`` counts
    its correct top-1 entries (NaN for floating, i.e. regression, targets) and
    ``count[i]`` its entries (1 for class labels ``y`` of shape ``(N,)``; the scored
    tokens of a sequence for language models). Means are ratios of sums,
    ``Σ loss / Σ count``, as in :func:`modeconnect.evaluation.evaluate`. ``per_token``
    marks language-model results, whose :meth:`metrics` also give the perplexity.
    """

    loss: Tensor
    hits: Tensor
    count: Tensor
    per_token: bool = False

    def metrics(self) -> Metrics:
        """Mean loss and accuracy over all entries (and the perplexity, per token)."""
        total = self.count.sum()
        loss = float(self.loss.sum() / total)
        ppl = perplexity(loss) if self.per_token else None
        return Metrics(loss=loss, accuracy=float(self.hits.sum() / total), perplexity=ppl)


@dataclass(frozen=True, eq=False)
class ExampleCurve:
    """Per-example results at each ``α`` of a path, in grid order."""

    alphas: tuple[float, ...]
    results: tuple[ExampleResults, ...]

    def curve(self) -> Curve:
        """Mean loss and accuracy (and perplexity) at each ``α``."""
        metrics = [r.metrics() for r in self.results]
        return Curve(
            tuple(
                CurvePoint(t, m.loss, m.accuracy, m.perplexity)
                for t, m in zip(self.alphas, metrics)
            )
        )

    def matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss (S, N), hits (S, N), count (N,))`` for ``S`` alphas and ``N`` examples."""
        loss = torch.stack([r.loss for r in self.results])
        hits = torch.stack([r.hits for r in self.results])
        return loss, hits, self.results[0].count


@dataclass(frozen=True)
class Interval(Record):
    """A bootstrap interval ``[low, high]`` and the bootstrap standard deviation."""

    low: float
    high: float
    std: float


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
