"""Sharpness of the loss at a model: Hessian spectrum and trace, and adaptive sharpness.

All quantities are of the mean loss ``L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i)`` over the
batches given, in eval mode (BatchNorm uses its running statistics), as a
function of the model's floating parameters (buffers fixed):

* :func:`hessian_spectrum`: the largest eigenvalues of ``H = ∇²L(θ)`` by Lanczos
  with full reorthogonalisation (default) or by power iteration with deflation
  (PyHessian, Yao et al. 2020), on Hessian-vector products (double backward); the
  matrix is never formed.
* :func:`hessian_trace`: Hutchinson's estimator ``tr H ≈ (1/S) Σ_s zₛᵀ H zₛ`` with
  Rademacher probes ``zₛ`` (exact for a diagonal ``H``), with its standard error.
* :func:`adaptive_sharpness` (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023):
  ``max_{‖T_θ⁻¹ ε‖ ≤ ρ} L(θ + ε) − L(θ)`` with ``T_θ = |θ|`` elementwise, by a few
  steps of projected gradient ascent. Eigenvalues and trace change under the
  rescalings that leave a ReLU network's function unchanged (Dinh et al. 2017);
  adaptive sharpness does not: ``ε = |θ| ⊙ z`` moves every weight in proportion to
  itself, so the feasible ``z`` and ``L`` along it are the same after a rescaling.
  ``adaptive=False`` gives the plain worst-case sharpness (``T = I``, Keskar et al.
  2017; SAM's inner problem).

:func:`lanczos`, :func:`power_iteration` and :func:`hutchinson` work on any
symmetric linear operator ``v -> A v`` (a matrix, a :class:`HessianOperator`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from modeconnect.bn import bn_correction
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch, LossChoice, Scoring, get_scoring, interpolate, loss_name
from modeconnect.objective import (
    StateDict,
    Weights,
    batch_loss,
    check_entries,
    check_positive,
    limited,
    loss_and_gradient,
    module_mode,
    weights_of,
)
from modeconnect.progress import ProgressFn
from modeconnect.records import Record

__all__ = [
    "NORMS",
    "SPECTRUM_METHODS",
    "AdaptiveSharpness",
    "HessianOperator",
    "HessianSpectrum",
    "HessianTrace",
    "Sharpness",
    "SharpnessStudy",
    "adaptive_sharpness",
    "hessian_operator",
    "hessian_spectrum",
    "hessian_trace",
    "hutchinson",
    "lanczos",
    "power_iteration",
    "sharpness",
    "sharpness_study",
]

MatVec = Callable[[Tensor], Tensor]
SPECTRUM_METHODS = ("lanczos", "power")
NORMS = ("l2", "linf")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class HessianSpectrum(Record):
    """The ``k`` largest Hessian eigenvalues found, with their residuals ``‖Hv − λv‖``.

    ``lanczos`` gives the largest (algebraic) eigenvalues in descending order;
    ``power`` the ones of largest magnitude, in the order found (PyHessian).
    ``matvecs`` counts the Hessian-vector products spent.
    """

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    method: str
    matvecs: int
    dimension: int
    seed: int


@dataclass(frozen=True)
class HessianTrace(Record):
    """Hutchinson's ``tr H`` from ``samples`` Rademacher probes, with standard error."""

    trace: float
    std_error: float
    samples: int
    seed: int


@dataclass(frozen=True)
class AdaptiveSharpness(Record):
    """``L(θ + ε*) − L(θ)`` for the best ``ε*`` found with ``‖T⁻¹ε‖ ≤ rho``; ``T = |θ|`` or I."""

    sharpness: float
    loss: float
    rho: float
    norm: str
    adaptive: bool
    steps: int


@dataclass(frozen=True)
class Sharpness:
    """Every sharpness measure at one model: raw (eigenvalues, trace, plain) and scale-invariant."""

    loss: float
    spectrum: HessianSpectrum
    trace: HessianTrace
    adaptive: AdaptiveSharpness
    plain: AdaptiveSharpness

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "top_eigenvalue": self.spectrum.eigenvalues[0],
            "trace": self.trace.trace,
            "adaptive_sharpness": self.adaptive.sharpness,
            "plain_sharpness": self.plain.sharpness,
            "spectrum": self.spectrum.to_dict(),
            "hutchinson": self.trace.to_dict(),
            "adaptive": self.adaptive.to_dict(),
            "plain": self.plain.to_dict(),
        }


@dataclass(frozen=True)
class SharpnessStudy:
    """:class:`Sharpness` of several models by name (e.g. ``A``, ``B``, ``merged``)."""

    models: Mapping[str, Sharpness]
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": {name: s.to_dict() for name, s in self.models.items()},
            "params": dict(self.params),
        }


# --------------------------------------------------------------------------- operator


@dataclass(frozen=True, eq=False)
class HessianOperator:
    """``v -> H v`` for ``H = ∇²L(θ)`` over ``keys``, on flat vectors of length ``dimension``.

    Vectors are flattened in ``keys`` order. Each product is one pass over the data
    with a double backward per batch, summed and divided by the number of entries.
    """

    model: nn.Module
    state: StateDict
    batches: Iterable[Batch]
    keys: tuple[str, ...]
    loss: Scoring
    weights: Weights
    max_batches: int | None
    dimension: int
    dtype: torch.dtype

    def __call__(self, v: Tensor) -> Tensor:
        device = self.state[self.keys[0]].device
        parts = _unflatten(v.to(device=device, dtype=self.dtype), self.state, self.keys)
        out = [torch.zeros_like(self.state[k]) for k in self.keys]
        entries = 0
        # Fused attention kernels (flash, memory-efficient) have no double backward: the
        # math kernel computes the same attention and can be differentiated twice.
        with module_mode(self.model, False), sdpa_kernel(SDPBackend.MATH):
            for i, batch in enumerate(limited(self.batches, self.max_batches)):
                leaves = [self.state[k].detach().requires_grad_(True) for k in self.keys]
                bound = self.weights.bind({**self.state, **dict(zip(self.keys, leaves))})
                value, n = batch_loss(self.model, bound, batch, self.loss, i)
                entries += n
                grads = torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
                terms = [(g * p).sum() for g, p in zip(grads, parts) if g is not None]
                if not terms or not any(t.requires_grad for t in terms):
                    continue  # the loss is linear (or constant) in these weights here
                hv = torch.autograd.grad(torch.stack(terms).sum(), leaves, allow_unused=True)
                for acc, h in zip(out, hv):
                    if h is not None:
                        acc += h.detach()
        check_entries(entries, "hessian_operator")
        return torch.cat([t.flatten() for t in out]).to(v.device, v.dtype) / entries


def hessian_operator(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    keys: Sequence[str] | None = None,
    loss: LossChoice = None,
    max_batches: int | None = None,
) -> HessianOperator:
    """The Hessian of the mean loss over ``batches`` at ``state``, as an operator.

    ``keys`` default to the model's floating parameters (one name per tied tensor).
    ``max_batches`` bounds each pass (PyHessian uses one large batch).
    """
    weights = weights_of(model, state)
    chosen = tuple(keys) if keys is not None else weights.parameters
    bad = [k for k in chosen if k not in state or not state[k].is_floating_point()]
    if bad or not chosen:
        raise ModeconnectError(
            f"hessian_operator: keys {bad[:5]} are not floating tensors of the state dict; "
            "pass parameter names (default: all of them)"
        )
    if iter(batches) is batches:
        raise ModeconnectError(
            "hessian_operator: batches is a one-shot iterator but every Hessian-vector product "
            "needs a pass; pass a list of (x, y) batches or a DataLoader"
        )
    dimension = sum(state[k].numel() for k in chosen)
    dtype = torch.promote_types(state[chosen[0]].dtype, torch.float32)
    scoring = get_scoring(loss, model)
    return HessianOperator(
        model, state, batches, chosen, scoring, weights, max_batches, dimension, dtype
    )


def _unflatten(v: Tensor, state: StateDict, keys: Sequence[str]) -> list[Tensor]:
    sizes = [state[k].numel() for k in keys]
    return [p.view_as(state[k]) for p, k in zip(v.split(sizes), keys, strict=True)]


# --------------------------------------------------------------------------- linear algebra


def lanczos(
    matvec: MatVec,
    dimension: int,
    *,
    k: int = 1,
    iterations: int = 30,
    tol: float = 1e-6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> HessianSpectrum:
    """The ``k`` largest eigenvalues of the symmetric operator ``matvec`` by Lanczos.

    Builds the Krylov basis ``q_1 … q_m`` (``m ≤ iterations``, ``m ≤ dimension``)
    with full reorthogonalisation (twice, in ``dtype``), and returns the top Ritz
    values of the tridiagonal ``T_m``. Stops early when an invariant subspace is
    found (exact eigenvalues) or when every wanted Ritz pair has residual
    ``|β_m s_{m,i}| ≤ tol · max(|θ_i|, 1)``. The start vector is Gaussian, seeded.
    """
    check_positive("lanczos", "k", k)
    check_positive("lanczos", "iterations", iterations)
    m = min(iterations, dimension)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.zeros(m, dimension, dtype=dtype)
    q = torch.randn(dimension, generator=gen, dtype=torch.float64).to(dtype)
    basis[0] = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    ritz: tuple[Tensor, Tensor] = (torch.zeros(0), torch.zeros(0, 0))
    for j in range(m):
        w = matvec(basis[j]).to(dtype)
        alphas.append(float(torch.dot(w.double(), basis[j].double())))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        ritz = _ritz(alphas, betas)
        scale = max(abs(a) for a in alphas) or 1.0
        if j + 1 == m or beta <= 1e-10 * scale:
            beta = 0.0 if beta <= 1e-10 * scale else beta
            break
        top = min(k, j + 1)
        residual = beta * ritz[1][-1, -top:].abs()
        if j + 1 >= k and bool((residual <= tol * ritz[0][-top:].abs().clamp(min=1.0)).all()):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    values, vectors = ritz
    top = min(k, len(alphas))
    residuals = (beta * vectors[-1, -top:].abs()).flip(0)
    return HessianSpectrum(
        eigenvalues=tuple(values[-top:].flip(0).tolist()),
        residuals=tuple(residuals.tolist()),
        method="lanczos",
        matvecs=len(alphas),
        dimension=dimension,
        seed=seed,
    )


def _ritz(alphas: Sequence[float], betas: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the tridiagonal matrix ``(alphas, betas)``."""
    n = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    return values, vectors


def power_iteration(
    matvec: MatVec,
    dimension: int,
    *,
    k: int = 1,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> HessianSpectrum:
    """The ``k`` eigenvalues of largest magnitude by power iteration with deflation (PyHessian).

    Eigenvalue ``i`` iterates ``v ← Av/‖Av‖`` with ``v`` kept orthogonal to the
    eigenvectors found before, until the Rayleigh quotient ``λ = vᵀAv`` changes by
    less than ``tol · |λ|`` (at most ``iterations`` products each).
    """
    check_positive("power_iteration", "k", k)
    check_positive("power_iteration", "iterations", iterations)
    gen = torch.Generator().manual_seed(seed)
    found: list[Tensor] = []
    values: list[float] = []
    residuals: list[float] = []
    matvecs = 0
    for _ in range(min(k, dimension)):
        v = torch.randn(dimension, generator=gen, dtype=torch.float64).to(dtype)
        previous, value, residual = math.nan, 0.0, math.inf
        for _ in range(iterations):
            for u in found:
                v = v - torch.dot(u, v) * u
            v = v / v.norm()
            av = matvec(v).to(dtype)
            matvecs += 1
            value = float(torch.dot(av.double(), v.double()))
            residual = float((av - value * v).norm())
            if av.norm() == 0:
                break
            v = av / av.norm()
            if abs(value - previous) <= tol * max(abs(value), 1e-12):
                break
            previous = value
        found.append(v)
        values.append(value)
        residuals.append(residual)
    return HessianSpectrum(tuple(values), tuple(residuals), "power", matvecs, dimension, seed)


def hutchinson(
    matvec: MatVec,
    dimension: int,
    *,
    samples: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> HessianTrace:
    """Hutchinson's trace estimate ``(1/S) Σ_s zₛᵀ A zₛ`` with Rademacher ``zₛ ∈ {±1}ⁿ`` (seeded).

    Unbiased; its variance is ``2 Σ_{i≠j} A_ij²`` per probe, so a diagonal ``A``
    gives its exact trace from one probe. The standard error is the sample
    standard deviation over ``√S`` (0 for one probe).
    """
    check_positive("hutchinson", "samples", samples)
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (dimension,), generator=gen) * 2 - 1).to(dtype)
        values.append(float(torch.dot(matvec(z).to(dtype).double(), z.double())))
    est = torch.tensor(values, dtype=torch.float64)
    std_error = float(est.std() / math.sqrt(samples)) if samples > 1 else 0.0
    return HessianTrace(float(est.mean()), std_error, samples, seed)


# --------------------------------------------------------------------------- model level


def hessian_spectrum(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    k: int = 1,
    method: str = "lanczos",
    iterations: int | None = None,
    tol: float = 1e-6,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    loss: LossChoice = None,
    max_batches: int | None = None,
) -> HessianSpectrum:
    """The ``k`` largest eigenvalues of ``∇²L(θ)``: :func:`lanczos` (default 30 steps) or
    :func:`power_iteration` (default 100 products per eigenvalue) on Hessian-vector products.

    Examples
    --------
    The squared error of a linear model is quadratic in its weights, with Hessian
    ``(2/N) Σ_i z_i z_iᵀ`` for the inputs ``z_i`` extended by the bias's 1:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model = mlp(in_features=3, hidden=[], out_features=1)
    >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
    >>> spectrum = mc.hessian_spectrum(model, model.state_dict(), [(x, y)], loss="mse")
    >>> z = torch.cat([x, torch.ones(64, 1)], dim=1).double()
    >>> exact = torch.linalg.eigvalsh(2 * z.T @ z / 64).max().item()
    >>> abs(spectrum.eigenvalues[0] - exact) < 1e-6 * exact, spectrum.dimension
    (True, 4)
    """
    if method not in SPECTRUM_METHODS:
        raise ModeconnectError(
            f"hessian_spectrum: unknown method {method!r}; "
            f"valid names: {', '.join(SPECTRUM_METHODS)}"
        )
    op = hessian_operator(model, state, batches, keys=keys, loss=loss, max_batches=max_batches)
    if method == "lanczos":
        return lanczos(
            op, op.dimension, k=k, iterations=iterations or 30, tol=tol, seed=seed, dtype=op.dtype
        )
    return power_iteration(
        op, op.dimension, k=k, iterations=iterations or 100, tol=tol, seed=seed, dtype=op.dtype
    )


def hessian_trace(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    samples: int = 100,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    loss: LossChoice = None,
    max_batches: int | None = None,
) -> HessianTrace:
    """:func:`hutchinson` on the Hessian of the mean loss at ``state`` (PyHessian's trace)."""
    op = hessian_operator(model, state, batches, keys=keys, loss=loss, max_batches=max_batches)
    return hutchinson(op, op.dimension, samples=samples, seed=seed, dtype=op.dtype)


def adaptive_sharpness(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    rho: float = 0.5,
    norm: str = "l2",
    steps: int = 10,
    step_size: float | None = None,
    adaptive: bool = True,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    loss: LossChoice = None,
    max_batches: int | None = None,
) -> AdaptiveSharpness:
    """Worst-case sharpness ``max_{‖z‖ ≤ ρ} L(θ + T z) − L(θ)``, ``T = diag|θ|`` (or ``I``).

    Kwon et al. 2021 (ASAM) with ``η = 0``, as Andriushchenko et al. 2023 measure
    it. The first step is ASAM's closed form for the linearised loss,
    ``z = ρ ĝ`` with ``ĝ = T∇L/‖T∇L‖`` (``ρ·sign(T∇L)`` for ``norm="linf"``);
    ``steps − 1`` projected ascent steps of length ``step_size`` (default ``ρ/4``)
    along ``ĝ`` at the current point follow, and the largest loss seen is kept.
    Weights equal to 0 are not moved (``T = |θ|``). Deterministic: the start is
    the gradient; only where the gradient vanishes is a direction drawn (``seed``).
    """
    if norm not in NORMS:
        raise ModeconnectError(
            f"adaptive_sharpness: unknown norm {norm!r}; valid names: {', '.join(NORMS)}"
        )
    check_positive("adaptive_sharpness", "rho", rho, integer=False)
    check_positive("adaptive_sharpness", "steps", steps)
    weights = weights_of(model, state)
    chosen = tuple(keys) if keys is not None else weights.parameters
    scale = {k: state[k].detach().abs() if adaptive else torch.ones_like(state[k]) for k in chosen}
    size = step_size if step_size is not None else rho / 4

    def at(z: Mapping[str, Tensor]) -> tuple[float, dict[str, Tensor]]:
        moved = {k: state[k].detach() + scale[k] * z[k] for k in chosen}
        value, grad = loss_and_gradient(
            model, {**state, **moved}, chosen, batches, loss=loss, max_batches=max_batches,
            weights=weights,
        )  # fmt: skip
        return value, {k: scale[k] * g for k, g in grad.items()}

    base, g = at({k: torch.zeros_like(state[k]) for k in chosen})
    z = {k: torch.zeros_like(state[k]) for k in chosen}
    best = base
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        direction = _ascent_direction(g, norm, gen)
        z = _project({k: z[k] + (rho if step == 0 else size) * direction[k] for k in z}, rho, norm)
        value, g = at(z)
        best = max(best, value)
    return AdaptiveSharpness(best - base, base, float(rho), norm, adaptive, steps)


def _ascent_direction(
    g: Mapping[str, Tensor], norm: str, gen: torch.Generator
) -> dict[str, Tensor]:
    """The steepest ascent direction of unit ``norm``: ``g/‖g‖₂`` or ``sign(g)``.

    A zero gradient (a stationary point: every direction is first-order flat)
    gives a random direction, so the ascent can still leave the point.
    """
    length = math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values()))
    if length == 0.0:
        g = {
            k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device) for k, v in g.items()
        }
        length = math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values()))
    if norm == "linf":
        return {k: v.sign() for k, v in g.items()}
    return {k: v / length for k, v in g.items()}


def _project(z: Mapping[str, Tensor], rho: float, norm: str) -> dict[str, Tensor]:
    """The nearest point of the ball ``‖z‖ ≤ ρ`` (Euclidean ball or box)."""
    if norm == "linf":
        return {k: v.clamp(-rho, rho) for k, v in z.items()}
    length = math.sqrt(sum(float((v.double() ** 2).sum()) for v in z.values()))
    shrink = min(1.0, rho / length) if length > 0 else 1.0
    return {k: v * shrink for k, v in z.items()}


def sharpness(
    model: nn.Module,
    state: StateDict,
    batches: Iterable[Batch],
    *,
    k: int = 1,
    method: str = "lanczos",
    iterations: int | None = None,
    trace_samples: int = 50,
    rho: float = 0.5,
    plain_rho: float = 0.05,
    norm: str = "l2",
    ascent_steps: int = 10,
    seed: int = 0,
    loss: LossChoice = None,
    max_batches: int | None = None,
) -> Sharpness:
    """Every measure at one model: top-``k`` eigenvalues, trace, adaptive and plain sharpness.

    ``rho`` bounds the adaptive perturbation ``‖ε/|θ|‖`` (relative: ASAM's 0.5 by
    default), ``plain_rho`` the plain one ``‖ε‖`` (absolute: SAM's 0.05).
    """
    common: dict[str, Any] = {"loss": loss, "max_batches": max_batches}
    spectrum = hessian_spectrum(
        model, state, batches, k=k, method=method, iterations=iterations, seed=seed, **common
    )
    trace = hessian_trace(model, state, batches, samples=trace_samples, seed=seed, **common)
    ascent: dict[str, Any] = {"norm": norm, "steps": ascent_steps, "seed": seed, **common}
    adaptive = adaptive_sharpness(model, state, batches, rho=rho, **ascent)
    plain = adaptive_sharpness(model, state, batches, rho=plain_rho, adaptive=False, **ascent)
    return Sharpness(adaptive.loss, spectrum, trace, adaptive, plain)


def sharpness_study(
    model: nn.Module,
    states: Mapping[str, StateDict],
    batches: Iterable[Batch],
    *,
    merge: str | None = None,
    alpha: float = 0.5,
    progress: ProgressFn | None = None,
    **options: Any,
) -> SharpnessStudy:
    """:func:`sharpness` of each named state, and of their merge when asked.

    ``merge`` adds the model ``"merged" = (1-α)·first + α·second`` of the first
    two states: ``"naive"`` averages them as they are, a method name of
    :data:`modeconnect.METHODS` (``"weight"``, ...) first aligns the second to
    the first (:func:`modeconnect.align`, guard included). A merged model with
    BatchNorm gets statistics recomputed on ``batches``. ``options`` go to
    :func:`sharpness`. ``progress("sharpness", done, total)`` counts models.
    """
    models = dict(states)
    if merge is not None:
        models["merged"] = _merged(model, models, batches, merge, alpha)
    results: dict[str, Sharpness] = {}
    for i, (name, state) in enumerate(models.items()):
        results[name] = sharpness(model, state, batches, **options)
        if progress is not None:
            progress("sharpness", i + 1, len(models))
    params = {
        "merge": merge,
        "alpha": alpha,
        "loss": loss_name(options.get("loss")),
        **{k: v for k, v in options.items() if k != "loss"},
    }
    return SharpnessStudy(results, params)


def _merged(
    model: nn.Module,
    states: Mapping[str, StateDict],
    batches: Iterable[Batch],
    merge: str,
    alpha: float,
) -> dict[str, Tensor]:
    if len(states) < 2:
        raise ModeconnectError(
            f"sharpness_study: merge={merge!r} merges the first two models; pass at least two"
        )
    first, second = list(states.values())[:2]
    if merge != "naive":
        import modeconnect as mc

        second = mc.align(model, first, second, method=merge, data=batches).aligned
    merged = interpolate(first, second, alpha)
    reset = bn_correction(model, "auto", batches, where="sharpness_study")
    return merged if reset is None else reset(merged)
