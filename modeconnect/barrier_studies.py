"""Barrier studies: everything ``modeconnect barrier`` measures between two models.

:func:`barrier_study` evaluates the linear path from A to B (naive) and, after
alignment, from A to aligned B, on every split given (test, and train), with an
optional statistics correction at every α (BatchNorm reset or REPAIR, see
:mod:`modeconnect.bn`). It reports, for each path and split, the curve, the
barrier under both definitions (``lerp``: Entezari et al. 2022 / Git Re-Basin;
``mean``: Frankle et al. 2020; each on loss and error), the α = 0.5 values, and
on the test split bootstrap intervals (resampled examples) and layer-wise
barriers (Adilova et al. 2024, :mod:`modeconnect.layerwise`).

:func:`modeconnect.commands.barrier.barrier_files` adds loading, checking and writing
(JSON, HTML report); it is what the CLI calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from modeconnect.bn import check_mode, make_correction
from modeconnect.distributed import Cluster, on_cluster
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import (
    BARRIER_DEFINITIONS,
    Barrier,
    Batch,
    BootstrapBarrier,
    Curve,
    CurvePoint,
    ExampleCurve,
    LossChoice,
    Metrics,
    Scoring,
    alpha_grid,
    barrier,
    barrier_definition,
    bootstrap_barrier,
    check_pair,
    corrected_path,
    example_curves,
    get_scoring,
    linear_path,
    loss_name,
    midpoint,
)
from modeconnect.layerwise import LayerwiseResult, layerwise_barriers
from modeconnect.progress import ProgressFn, prefixed

if TYPE_CHECKING:  # pipeline imports the graph machinery; only barrier_study needs it
    from modeconnect.alignment import AlignResult

__all__ = [
    "PairResult",
    "SplitResult",
    "Study",
    "barrier_study",
]

StateDict = Mapping[str, Tensor]
PAIRS = ("naive", "aligned")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SplitResult:
    """One path on one split: the curve, both barriers, the midpoint."""

    curve: Curve
    barriers: Mapping[str, Barrier]

    @property
    def midpoint(self) -> CurvePoint:
        """The point at α = 0.5."""
        return midpoint(self.curve)

    @property
    def endpoints(self) -> tuple[Metrics, Metrics]:
        """Metrics of the path's models at α = 0 and α = 1."""
        first = next(p for p in self.curve.points if p.alpha == 0.0)
        last = next(p for p in self.curve.points if p.alpha == 1.0)
        return (
            Metrics(first.loss, first.accuracy, first.perplexity),
            Metrics(last.loss, last.accuracy, last.perplexity),
        )

    def to_dict(self, definition: str) -> dict[str, Any]:
        mid = self.midpoint
        return {
            "barrier": self.barriers[definition].to_dict(),
            **{name: b.to_dict() for name, b in self.barriers.items()},
            "midpoint": {**mid.to_dict(), "error": mid.error},
            "curve": self.curve.to_dict(),
        }


@dataclass(frozen=True)
class PairResult:
    """The path from A to one B (naive or aligned) on every split.

    ``bootstrap`` (by definition) and ``layerwise`` are computed on the test split.
    """

    name: str
    splits: Mapping[str, SplitResult]
    bootstrap: Mapping[str, BootstrapBarrier] = field(default_factory=dict)
    layerwise: LayerwiseResult | None = None

    @property
    def test(self) -> SplitResult:
        return self.splits["test"]

    def to_dict(self, definition: str) -> dict[str, Any]:
        """``barrier``/``curve`` keys as in ``modeconnect align --json`` (test split), then more."""
        out = self.test.to_dict(definition)
        out["bootstrap"] = {d: b.to_dict() for d, b in self.bootstrap.items()} or None
        out["splits"] = {name: s.to_dict(definition) for name, s in self.splits.items()}
        return out


@dataclass(frozen=True)
class Study:
    """Everything :func:`barrier_study` measured; ``to_dict()`` is the JSON report."""

    definition: str
    alphas: tuple[float, ...]
    bn: str
    loss: str
    naive: PairResult
    aligned: PairResult | None
    alignment: AlignResult | None = None
    seconds: float = 0.0

    @property
    def pairs(self) -> dict[str, PairResult]:
        """``{"naive": ..., "aligned": ...}`` (aligned only when aligned)."""
        return {p.name: p for p in (self.naive, self.aligned) if p is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "definition": self.definition,
            "bn": self.bn,
            "loss": self.loss,
            "alphas": list(self.alphas),
            "splits": list(self.naive.splits),
        }
        if self.alignment is not None:
            out.update(self.alignment.to_dict())
        for name, pair in self.pairs.items():
            out[name] = pair.to_dict(self.definition)
        out["layerwise"] = [
            {"pair": name, **record}
            for name, pair in self.pairs.items()
            if pair.layerwise is not None
            for record in pair.layerwise.to_dict()
        ]
        out["seconds"] = self.seconds
        return out


# --------------------------------------------------------------------------- study


def barrier_study(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    *,
    test: Iterable[Batch],
    train: Iterable[Batch] | None = None,
    align: str | None = "weight",
    bn: str = "none",
    steps: int = 25,
    definition: str = "lerp",
    layerwise: bool = False,
    layer_groups: Sequence[str] | None = None,
    bootstrap: int = 0,
    confidence: float = 0.95,
    loss: LossChoice = "ce",
    seed: int = 0,
    align_options: Mapping[str, Any] | None = None,
    alpha_batch: int | None = 1,
    max_bn_batches: int | None = None,
    progress: ProgressFn | None = None,
    cluster: Cluster | None = None,
) -> Study:
    """Barriers between ``a`` and ``b`` (and aligned ``b``) on ``test`` (and ``train``).

    - Paths: ``θ(α) = (1-α)·θ_A + α·θ_B`` on ``steps`` evenly spaced α (both ends
      included) plus α = 0.5; for naive B and, unless ``align`` is ``None`` or
      ``"none"``, for B aligned to A with :func:`modeconnect.alignment.align`
      (method ``align``, seed ``seed``, ``align_options``; verified by the guard).
    - ``bn``: ``"reset"`` recomputes BatchNorm statistics on ``train`` at every α
      (endpoints included), ``"repair"`` applies REPAIR at every α, ``"none"``
      nothing (see :mod:`modeconnect.bn`).
    - Barriers under both definitions (``lerp``, ``mean``) on loss and error for
      every path and split; ``definition`` names the one reported first (the
      ``barrier`` key). ``loss``: a scoring of :data:`modeconnect.evaluation.LOSSES`
      (``"ce"``, ``"mse"``; ``"causal_lm"``, ``"masked_lm"`` for language models,
      whose results also report the perplexity), a
      :class:`~modeconnect.evaluation.Scoring`, or a callable returning per-example
      losses (the file layer resolves ``"module:callable"`` references).
    - ``bootstrap > 0``: that many resamples of the test examples give a
      ``confidence`` percentile interval for every barrier (no extra forward pass).
    - ``layerwise``: layer-wise barriers on the test split for each path, by
      module or by ``layer_groups`` prefixes (see :mod:`modeconnect.layerwise`).

    ``progress(task, done, total)`` is called as work completes. On a ``cluster`` the
    points of every path (the curves and the layer-wise paths) run as Ray tasks, with
    the local run's results (:mod:`modeconnect.distributed`).
    """
    start = time.perf_counter()
    check_pair(a, b)
    barrier_definition(definition)
    grid = tuple(sorted({*alpha_grid(steps, None), 0.5}))
    scoring = get_scoring(loss, model)
    check_mode(model, bn, train)
    _check_bootstrap(bootstrap, confidence)
    method = None if align in (None, "none") else align
    splits: dict[str, Iterable[Batch]] = {"test": test}
    if train is not None:
        splits["train"] = train
    targets: dict[str, StateDict] = {"naive": b}
    alignment = None
    if method is not None:
        from modeconnect.alignment import align as align_models

        options = {"seed": seed, **(align_options or {})}
        alignment = align_models(model, a, b, method=method, data=train or test, **options)
        targets["aligned"] = alignment.aligned
    starts = {"aligned": alignment.start(a)} if alignment is not None else {}  # A folded
    pairs = {}
    with on_cluster(cluster):
        for name, target in targets.items():
            pairs[name] = _study_pair(
                model, starts.get(name, a), target, name, grid, splits, train,
                bn=bn, definition=definition, loss=scoring, layerwise=layerwise,
                layer_groups=layer_groups, bootstrap=bootstrap, confidence=confidence,
                seed=seed, alpha_batch=alpha_batch, max_bn_batches=max_bn_batches,
                progress=prefixed(progress, f"{name} "), cluster=cluster,
            )  # fmt: skip
    return Study(
        definition=definition,
        alphas=grid,
        bn=bn,
        loss=loss_name(loss),
        naive=pairs["naive"],
        aligned=pairs.get("aligned"),
        alignment=alignment,
        seconds=time.perf_counter() - start,
    )


def _check_bootstrap(bootstrap: int, confidence: float) -> None:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ModeconnectError(
            f"barrier_study: bootstrap={bootstrap!r} must be an int >= 0 (0: no intervals); "
            "pass one"
        )
    if not 0.0 < confidence < 1.0:
        raise ModeconnectError(
            f"barrier_study: confidence={confidence!r} must lie strictly between 0 and 1; "
            "pass e.g. 0.95"
        )


def _study_pair(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    name: str,
    grid: tuple[float, ...],
    splits: Mapping[str, Iterable[Batch]],
    train: Iterable[Batch] | None,
    *,
    bn: str,
    definition: str,
    loss: Scoring,
    layerwise: bool,
    layer_groups: Sequence[str] | None,
    bootstrap: int,
    confidence: float,
    seed: int,
    alpha_batch: int | None,
    max_bn_batches: int | None,
    progress: ProgressFn | None,
    cluster: Cluster | None,
) -> PairResult:
    def factory(x0: StateDict, x1: StateDict) -> Any:
        return make_correction(model, x0, x1, train, mode=bn, max_batches=max_bn_batches)

    path = linear_path(a, b)
    point = corrected_path(path, factory(a, b)) if bn != "none" else path
    curves = example_curves(
        model, point, grid, splits, loss=loss, alpha_batch=alpha_batch,
        progress=progress, task="curve", cluster=cluster,
    )  # fmt: skip
    results = {split: _split_result(c) for split, c in curves.items()}
    intervals: dict[str, BootstrapBarrier] = {}
    if bootstrap > 0:
        for d in BARRIER_DEFINITIONS:
            intervals[d] = bootstrap_barrier(
                curves["test"], d, samples=bootstrap, confidence=confidence, seed=seed
            )
    layers = None
    if layerwise:
        layers = layerwise_barriers(
            model, a, b, splits["test"], groups=layer_groups, alphas=grid,
            definition=definition, loss=loss, correction=factory if bn != "none" else None,
            full=curves["test"], alpha_batch=alpha_batch, progress=progress, cluster=cluster,
        )  # fmt: skip
    return PairResult(name, results, intervals, layers)


def _split_result(curve: ExampleCurve) -> SplitResult:
    plain = curve.curve()
    return SplitResult(plain, {d: barrier(plain, d) for d in BARRIER_DEFINITIONS})
