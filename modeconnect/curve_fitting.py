"""Low-loss curves between two models with fixed endpoints (Garipov et al. 2018).

A curve is ``φ(t) = Σ_k c_k(t) · P_k`` over control points ``P_0 = θ_A``,
``P_1 … P_m`` (the trainable *bends*) and ``P_{m+1} = θ_B``, with coefficients
that sum to one:

* :class:`Bezier`: Bernstein polynomials, ``c_k(t) = C(m+1, k) t^k (1-t)^{m+1-k}``;
  one bend gives ``φ(t) = (1-t)²θ_A + 2t(1-t)θ + t²θ_B``;
* :class:`PolyChain`: straight segments through the bends at ``t = 1/(m+1), 2/(m+1), …``.

:func:`fit_curve` minimises ``E_{t~U[0,1]} L(φ(t))`` over the bends with SGD, one
``t`` drawn per step (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs", Eq. 2), starting from the straight line. Only the
bends' parameters are trained; their buffers stay on the line.
:func:`curve_study` aligns B if asked, fits the curve, and evaluates the straight
line and the curve on the same ``t`` grid with the barrier definitions of
:func:`modeconnect.barrier`, recomputing BatchNorm statistics at every evaluated
``t`` (:func:`modeconnect.reset_batchnorm`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from modeconnect.barrier_studies import SplitResult
from modeconnect.bn import bn_correction
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import (
    BARRIER_DEFINITIONS,
    Batch,
    LossChoice,
    PathFn,
    Scoring,
    barrier,
    corrected_path,
    example_curves,
    get_scoring,
    interpolate,
    linear_path,
    loss_name,
)
from modeconnect.objective import (
    StateDict,
    Weights,
    batch_loss,
    check_entries,
    check_positive,
    module_mode,
    weights_of,
)
from modeconnect.progress import ProgressFn

if TYPE_CHECKING:
    from modeconnect.alignment import AlignResult

__all__ = [
    "CURVE_KINDS",
    "Bezier",
    "CurveFit",
    "CurveStudy",
    "PolyChain",
    "curve_path",
    "curve_point",
    "curve_study",
    "evaluate_path",
    "fit_curve",
    "get_curve",
]


# --------------------------------------------------------------------------- parametrisations


@dataclass(frozen=True)
class _Bends:
    """A curve from ``θ_A`` to ``θ_B`` through ``bends`` trainable control points."""

    bends: int = 1

    def line_positions(self) -> tuple[float, ...]:
        """Bend positions ``k/n`` on the segment A→B (``n = bends + 1``), for which the
        curve is the line ``φ(t) = (1-t)A + tB``."""
        n = self.bends + 1
        return tuple(k / n for k in range(1, n))


@dataclass(frozen=True)
class Bezier(_Bends):
    """Bezier curve of degree ``bends + 1`` with control points ``θ_A, θ_1 … θ_bends, θ_B``."""

    name: ClassVar[str] = "bezier"

    def coefficients(self, t: float) -> tuple[float, ...]:
        """Bernstein weights ``C(n, k) t^k (1-t)^(n-k)``, ``n = bends + 1``, one per point."""
        n = self.bends + 1
        return tuple(math.comb(n, k) * t**k * (1.0 - t) ** (n - k) for k in range(n + 1))


@dataclass(frozen=True)
class PolyChain(_Bends):
    """Polygonal chain ``θ_A → θ_1 → … → θ_bends → θ_B``, node ``k`` at ``t = k/(bends + 1)``."""

    name: ClassVar[str] = "polychain"

    def coefficients(self, t: float) -> tuple[float, ...]:
        """Hat functions: the two control points around ``t`` share it linearly, the rest get 0."""
        n = self.bends + 1
        pos = min(max(t, 0.0), 1.0) * n
        seg = min(int(pos), n - 1)
        frac = pos - seg
        out = [0.0] * (n + 1)
        out[seg], out[seg + 1] = 1.0 - frac, frac
        return tuple(out)


Parametrisation = Bezier | PolyChain
CURVE_KINDS: dict[str, type[Bezier] | type[PolyChain]] = {"bezier": Bezier, "polychain": PolyChain}
"""Curve families by name (``--curve bezier|polychain``)."""


def get_curve(kind: str, bends: int = 1) -> Parametrisation:
    """The curve family ``kind`` with ``bends`` trainable control points."""
    if kind not in CURVE_KINDS:
        raise ModeconnectError(
            f"curve: unknown curve kind {kind!r}; valid names: {', '.join(sorted(CURVE_KINDS))}"
        )
    check_positive("curve", "bends", bends)
    return CURVE_KINDS[kind](bends)


# --------------------------------------------------------------------------- points


def curve_point(
    curve: Parametrisation, a: StateDict, bends: Sequence[StateDict], b: StateDict, t: float
) -> dict[str, Tensor]:
    """``φ(t) = Σ_k c_k(t) P_k`` for every floating tensor; others (counters) come from ``a``.

    ``t = 0`` returns ``a``'s tensors and ``t = 1`` ``b``'s (the very objects, bit
    for bit). Elsewhere the sum runs in each tensor's dtype over the control
    points with a non-zero coefficient, so it is differentiable in the bends.

    Examples
    --------
    A quadratic Bezier curve weighs A, the bend and B by ``¼, ½, ¼`` at ``t = ½``:

    >>> import torch
    >>> from modeconnect.curve_fitting import Bezier, curve_point
    >>> a, bend, b = ({"w": torch.tensor([v])} for v in (0.0, 4.0, 8.0))
    >>> Bezier(bends=1).coefficients(0.5)
    (0.25, 0.5, 0.25)
    >>> curve_point(Bezier(bends=1), a, [bend], b, 0.5)
    {'w': tensor([4.])}
    >>> curve_point(Bezier(bends=1), a, [bend], b, 1.0)["w"] is b["w"]
    True
    """
    t = float(t)
    if t == 0.0:
        return dict(a)
    if t == 1.0:
        return interpolate(a, b, 1.0)
    return {**a, **_curve_sum(curve, a, bends, b, t)}


def curve_path(
    curve: Parametrisation, a: StateDict, bends: Sequence[StateDict], b: StateDict
) -> PathFn:
    """``t -> φ(t)`` (:func:`curve_point`): a path for ``modeconnect.evaluation.example_curves``."""
    _check_bends(curve, a, b, bends)

    def at(t: float) -> dict[str, Tensor]:
        return curve_point(curve, a, bends, b, t)

    return at


def _check_bends(
    curve: Parametrisation, a: StateDict, b: StateDict, bends: Sequence[StateDict]
) -> None:
    for key, ta in a.items():
        if key not in b or b[key].shape != ta.shape or b[key].dtype != ta.dtype:
            got = tuple(b[key].shape) if key in b else "nothing"
            raise ModeconnectError(
                f"curve: tensor {key!r} of B is {got}, A has {tuple(ta.shape)} {ta.dtype}; "
                "both endpoints must come from the same architecture"
            )
    if len(bends) != curve.bends:
        raise ModeconnectError(
            f"curve: {curve.name} with {curve.bends} bends got {len(bends)} bend state dicts; "
            "pass one per bend"
        )
    for i, bend in enumerate(bends):
        for key, ta in a.items():
            if ta.is_floating_point() and (key not in bend or bend[key].shape != ta.shape):
                raise ModeconnectError(
                    f"curve: bend {i} lacks tensor {key!r} of shape {tuple(ta.shape)}; "
                    "pass bends trained for these endpoints (CurveFit.bends)"
                )


# --------------------------------------------------------------------------- training


@dataclass(frozen=True, eq=False)
class CurveFit:
    """A trained curve: its family, the endpoints, the bends, and how it was trained.

    ``bends`` are full state dicts (trained parameters; buffers on the line;
    counters from A) and can be written as checkpoints. ``history`` is the mean
    training loss of each epoch, over the ``t`` drawn in it.
    """

    curve: Parametrisation
    a: StateDict
    b: StateDict
    bends: tuple[dict[str, Tensor], ...]
    history: tuple[float, ...]
    params: Mapping[str, Any]
    seconds: float

    def point(self, t: float) -> dict[str, Tensor]:
        """The state dict at ``t`` on the curve (``a`` at 0, ``b`` at 1)."""
        return curve_point(self.curve, self.a, self.bends, self.b, t)

    def path(self) -> PathFn:
        """``t -> φ(t)``."""
        return curve_path(self.curve, self.a, self.bends, self.b)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.curve.name,
            "bends": self.curve.bends,
            "history": list(self.history),
            "params": dict(self.params),
            "seconds": self.seconds,
        }


def fit_curve(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    train: Iterable[Batch],
    *,
    kind: str = "bezier",
    bends: int = 1,
    epochs: int = 20,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int | None = 128,
    seed: int = 0,
    loss: LossChoice = None,
    progress: ProgressFn | None = None,
) -> CurveFit:
    """Train the bends of a curve from ``a`` to ``b``: ``min_θ E_{t~U[0,1]} L(φ_θ(t))``.

    Each SGD step (momentum, ``lr`` with a cosine decay to 0 over all steps) draws
    one ``t ~ U[0, 1]`` and one minibatch and descends ``L(φ(t))`` on it, with the
    model in training mode (BatchNorm normalises with batch statistics, dropout on),
    as Garipov et al. 2018 do. The bends start on the straight line, where the
    curve *is* the line (:meth:`Bezier.line_positions`). With ``batch_size`` the
    examples of ``train`` are pooled once and drawn in a new order every epoch;
    with ``None`` the batches are used as given (a shuffling DataLoader shuffles
    itself). ``t``, the order and dropout are seeded by ``seed``: one seed, one
    result. ``progress("curve", step, steps)`` reports the steps.
    """
    curve = get_curve(kind, bends)
    check_positive("fit_curve", "epochs", epochs)
    check_positive("fit_curve", "lr", lr, integer=False)
    if batch_size is not None:
        check_positive("fit_curve", "batch_size", batch_size)
    _check_bends(curve, a, b, [a] * curve.bends)
    weights = weights_of(model, a)
    if not weights.parameters:
        raise ModeconnectError(
            "fit_curve: the model has no floating parameters to train; pass a model with weights"
        )
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    data = _Epochs(train, batch_size, gen)
    steps = epochs * data.batches_per_epoch()
    run = _Training(model, weights, curve, a, b, get_scoring(loss, model), gen)
    opt = torch.optim.SGD(run.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[float] = []
    # Dropout draws from the global generator: seed a forked one, so that one seed
    # gives one curve and the caller's random state is left as it was.
    with torch.random.fork_rng(), module_mode(model, True):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            done = epoch * data.batches_per_epoch()
            history.append(run.epoch(data.epoch(), opt, sched, progress, done, steps))
    params = {
        "epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "batch_size": batch_size, "seed": seed, "steps": steps, "loss": loss_name(loss),
        "schedule": "cosine",
    }  # fmt: skip
    return CurveFit(curve, a, b, run.bends(), tuple(history), params, time.perf_counter() - start)


class _Training:
    """The trainable bends of one curve and one SGD pass over the data.

    ``line`` holds full state dicts on the segment A→B (buffers stay there);
    ``leaves`` their parameters as leaf tensors that the optimiser moves.
    BatchNorm in training mode updates the running statistics it is given in
    place, so counters are scratch copies and floating buffers fresh sums, never
    A's or B's tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: Weights,
        curve: Parametrisation,
        a: StateDict,
        b: StateDict,
        loss: Scoring,
        gen: torch.Generator,
    ) -> None:
        self.model, self.weights, self.curve, self.a, self.b = model, weights, curve, a, b
        self.loss, self.gen = loss, gen
        self.line = [interpolate(a, b, s) for s in curve.line_positions()]
        self.leaves = [
            {k: bend[k].detach().clone().requires_grad_(True) for k in weights.parameters}
            for bend in self.line
        ]
        self.scratch = {k: v.clone() for k, v in a.items() if not v.is_floating_point()}

    def parameters(self) -> list[Tensor]:
        return [p for leaf in self.leaves for p in leaf.values()]

    def epoch(
        self,
        batches: Iterable[Batch],
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        progress: ProgressFn | None,
        done: int,
        steps: int,
    ) -> float:
        """One pass: a fresh ``t`` per batch; returns the mean training loss of the pass."""
        total, count = 0.0, 0
        for i, batch in enumerate(batches):
            t = float(torch.rand((), generator=self.gen, dtype=torch.float64))
            bends = [{**bend, **leaf} for bend, leaf in zip(self.line, self.leaves, strict=True)]
            state = {**_curve_sum(self.curve, self.a, bends, self.b, t), **self.scratch}
            value, n = batch_loss(self.model, self.weights.bind(state), batch, self.loss, i)
            opt.zero_grad()
            (value / n).backward()
            opt.step()
            sched.step()
            total, count = total + float(value.detach()), count + n
            done += 1
            if progress is not None:
                progress("curve", done, steps)
        check_entries(count, "fit_curve")
        return total / count

    def bends(self) -> tuple[dict[str, Tensor], ...]:
        """The trained bends as full state dicts (every alias of a tied weight set)."""
        return tuple(
            {
                **bend,
                **{alias: p.detach() for k, p in leaf.items()
                   for alias in self.weights.aliases(k) if alias in self.a},
            }
            for bend, leaf in zip(self.line, self.leaves, strict=True)
        )  # fmt: skip


def _curve_sum(
    curve: Parametrisation, a: StateDict, bends: Sequence[StateDict], b: StateDict, t: float
) -> dict[str, Tensor]:
    """``Σ_k c_k(t) P_k`` for the floating tensors: fresh tensors, differentiable in the bends.

    Control points with coefficient 0 are skipped (a chain mixes only two).
    """
    coef = curve.coefficients(t)
    points = (a, *bends, b)
    out: dict[str, Tensor] = {}
    for key, value in a.items():
        if value.is_floating_point():
            terms = [c * p[key] for c, p in zip(coef, points, strict=True) if c != 0.0]
            out[key] = terms[0] if len(terms) == 1 else torch.stack(terms).sum(dim=0)
    return out


class _Epochs:
    """Training batches, reshuffled each epoch from a seeded generator (or as given)."""

    def __init__(self, train: Iterable[Batch], batch_size: int | None, gen: torch.Generator):
        self.batch_size = batch_size
        self.gen = gen
        if batch_size is None:
            if iter(train) is train:
                raise ModeconnectError(
                    "fit_curve: train is a one-shot iterator but training runs several epochs; "
                    "pass a list of (x, y) batches or a DataLoader, or set batch_size"
                )
            self.train: Iterable[Batch] = train
            return
        pairs = list(train)
        if not pairs:
            raise ModeconnectError("fit_curve: the training data is empty; pass (x, y) batches")
        self.x = torch.cat([x for x, _ in pairs])
        self.y = torch.cat([y for _, y in pairs])

    def batches_per_epoch(self) -> int:
        if self.batch_size is None:
            return sum(1 for _ in self.train)
        return -(-len(self.y) // self.batch_size)

    def epoch(self) -> Iterator[Batch]:
        if self.batch_size is None:
            yield from self.train
            return
        order = torch.randperm(len(self.y), generator=self.gen)
        for idx in order.split(self.batch_size):
            yield self.x[idx], self.y[idx]


# --------------------------------------------------------------------------- evaluation


def evaluate_path(
    model: nn.Module,
    path: PathFn,
    splits: Mapping[str, Iterable[Batch]],
    *,
    steps: int = 25,
    train: Iterable[Batch] | None = None,
    bn: str = "auto",
    loss: LossChoice = None,
    max_bn_batches: int | None = None,
    progress: ProgressFn | None = None,
    task: str = "path",
    points_per_pass: int | None = 1,
) -> dict[str, SplitResult]:
    """Loss and accuracy along ``path`` at ``steps`` evenly spaced ``t`` (0 and 1 included).

    The result per split holds the :class:`~modeconnect.Curve` (``alpha`` is ``t``)
    and the barriers under every definition of :func:`modeconnect.barrier`
    (``lerp``, ``mean``): the numbers and JSON keys of ``modeconnect barrier``.
    With BatchNorm (``bn="auto"``/``"reset"``) each state's statistics are
    recomputed on ``train`` before it is evaluated, ``points_per_pass`` points at a
    time (see :func:`~modeconnect.evaluation.example_curves`'s ``alpha_batch``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3 or steps % 2 == 0:
        raise ModeconnectError(
            f"evaluate_path: steps={steps!r} is not an odd int >= 3; pass one, so that the grid "
            "holds t = 0, 0.5 and 1"
        )
    reset = bn_correction(model, bn, train, where="curve", max_batches=max_bn_batches)
    grid = tuple(i / (steps - 1) for i in range(steps))

    point = path if reset is None else corrected_path(path, reset)
    curves = example_curves(
        model, point, grid, splits, loss=loss, progress=progress, task=task,
        alpha_batch=points_per_pass,
    )  # fmt: skip
    out: dict[str, SplitResult] = {}
    for name, examples in curves.items():
        curve = examples.curve()
        barriers = {d: barrier(curve, d) for d in BARRIER_DEFINITIONS}
        out[name] = SplitResult(curve, barriers)
    return out


@dataclass(frozen=True, eq=False)
class CurveStudy:
    """The straight line and the trained curve from A to (aligned) B, on every split."""

    fit: CurveFit
    line: Mapping[str, SplitResult]
    curve: Mapping[str, SplitResult]
    alphas: tuple[float, ...]
    definition: str
    bn: str
    loss: str
    alignment: AlignResult | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON: ``line`` and ``curve`` with the keys of ``modeconnect barrier`` per split."""
        out: dict[str, Any] = {
            "definition": self.definition,
            "bn": self.bn,
            "loss": self.loss,
            "alphas": list(self.alphas),
            "splits": list(self.curve),
            "fit": self.fit.to_dict(),
        }
        if self.alignment is not None:
            out.update(self.alignment.to_dict())
        for name, results in (("line", self.line), ("curve", self.curve)):
            first = next(iter(results.values()))
            out[name] = {
                **first.to_dict(self.definition),
                "splits": {s: r.to_dict(self.definition) for s, r in results.items()},
            }
        out["seconds"] = self.seconds
        return out


def curve_study(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    *,
    train: Iterable[Batch],
    test: Iterable[Batch],
    kind: str = "bezier",
    bends: int = 1,
    align: str | None = None,
    epochs: int = 20,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int | None = 128,
    seed: int = 0,
    steps: int = 25,
    definition: str = "lerp",
    bn: str = "auto",
    loss: LossChoice = "ce",
    evaluate_train: bool = True,
    max_bn_batches: int | None = None,
    align_options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    points_per_pass: int | None = 1,
) -> CurveStudy:
    """Everything ``modeconnect curve`` measures: align (optional), fit, evaluate line and curve.

    ``align`` names a method of :data:`modeconnect.METHODS` (B is first permuted
    into A's basis with :func:`modeconnect.align` on ``train``, guard included);
    ``None`` connects B as it is. The curve is fitted by :func:`fit_curve`; the
    line and the curve are evaluated by :func:`evaluate_path` on ``test`` (first)
    and, with ``evaluate_train``, on ``train``, with the same BatchNorm treatment.
    ``definition`` picks the barrier that ``to_dict()["curve"]["barrier"]`` leads
    with; both are always reported.
    """
    if definition not in BARRIER_DEFINITIONS:
        raise ModeconnectError(
            f"curve_study: unknown barrier definition {definition!r}; "
            f"valid names: {', '.join(sorted(BARRIER_DEFINITIONS))}"
        )
    start = time.perf_counter()
    alignment = None
    if align not in (None, "none"):
        import modeconnect as mc

        alignment = mc.align(model, a, b, method=str(align), data=train, **(align_options or {}))
        a, b = alignment.start(a), alignment.aligned  # A folded, under a larger symmetry
    fit = fit_curve(
        model, a, b, train, kind=kind, bends=bends, epochs=epochs, lr=lr, momentum=momentum,
        weight_decay=weight_decay, batch_size=batch_size, seed=seed, loss=loss,
        progress=progress,
    )  # fmt: skip
    splits = {"test": test, **({"train": train} if evaluate_train else {})}
    common: dict[str, Any] = {
        "steps": steps, "train": train, "bn": bn, "loss": loss,
        "max_bn_batches": max_bn_batches, "progress": progress,
        "points_per_pass": points_per_pass,
    }  # fmt: skip
    line = evaluate_path(model, linear_path(a, b), splits, task="line", **common)
    on_curve = evaluate_path(model, fit.path(), splits, task=kind, **common)
    return CurveStudy(
        fit=fit,
        line=line,
        curve=on_curve,
        alphas=next(iter(on_curve.values())).curve.alphas,
        definition=definition,
        bn=bn,
        loss=loss_name(loss),
        alignment=alignment,
        seconds=time.perf_counter() - start,
    )
